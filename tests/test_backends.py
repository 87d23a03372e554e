"""numpy and cpu backends against the reference formulas; gradients against finite differences.

Tolerances are relative to the scale of each sum, sum_j |w_j| |k_ij| (or |grad k_ij|) plus its
mean over the rows, so that cancellation in signed sums cannot hide or fake an error:
float64 1e-10 (poly-exp, BLAS expansion), float32 2e-4 (float32 GEMM in the d >= 32 path).
The cuda backend is tested in test_backends_cuda.py (simulator subprocess).
"""
import zlib

import numpy as np
import pytest
from numba import njit

from particlegan.maths import pairmath as pm
from particlegan.backends import BACKENDS, cuda_available, get_backend
from particlegan.backends import cpu_backend
from particlegan.errors import ConfigError, DataError
from particlegan.maths.kernels import KERNEL_NAMES, kernel_grad_matrix, kernel_matrix, make_kernel, ntk_matrix

HOST_BACKENDS = ["numpy", "cpu"]
RTOL = {np.float64: 1e-10, np.float32: 2e-4}

KERNEL_PARAMS = {
    "gaussian": dict(sigma=0.9),
    "gaussian_mixture": dict(sigmas=(0.4, 1.5), weights=(2.0, 0.5)),
    "rq": dict(c_dot=0.2),
    "distance": dict(eps=0.1),
    "energy": dict(),
    "distance_induced": dict(beta=0.75),
    "riesz": dict(s=1.0, eps=0.3),
    "polynomial": dict(degree=2),
    "linear": dict(),
    "imq": dict(c=1.2),
}


def spec_for(name, d, rng):
    params = dict(KERNEL_PARAMS[name])
    if name == "distance":
        params["x0"] = tuple(rng.normal(size=d))
    if name == "distance_induced":
        params["z"] = tuple(0.3 * rng.normal(size=d))
    return make_kernel(name, **params)


def problem(d, dtype, rng, n=23, m=300):
    # high d: shrink the cloud so Gaussian values are not all ~0
    s = 1.0 if d < 8 else 3.0 / np.sqrt(d)
    X = (s * rng.normal(size=(n, d))).astype(dtype)
    Y = (s * rng.normal(size=(m, d)) + 0.2).astype(dtype)
    w = rng.normal(size=m).astype(dtype)
    return X, Y, w


def assert_close_to_scale(got, expect, scale, rtol):
    # floor at the mean scale: per-pair terms that cancel exactly (e.g. the energy kernel's
    # gradient beyond all centres in d = 1) have a near-zero scale of their own
    err = np.abs(np.asarray(got, dtype=np.float64) - expect)
    scale = scale + scale.mean()
    bad = err > rtol * scale
    assert not bad.any(), f"max rel err {np.max(err / np.maximum(scale, 1e-300)):.3e} > {rtol}"


def test_backend_names_and_unknown():
    assert BACKENDS == ("numpy", "cpu", "cuda")
    with pytest.raises(ConfigError, match="gpu9"):
        get_backend("gpu9")


@pytest.mark.skipif(cuda_available(), reason="a CUDA device (or the simulator) is present")
def test_cuda_backend_without_gpu_is_a_config_error():
    with pytest.raises(ConfigError, match="backend 'cuda' needs a CUDA GPU"):
        get_backend("cuda")


@pytest.mark.parametrize("backend", HOST_BACKENDS)
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("d", [1, 3, 40])
@pytest.mark.parametrize("name", KERNEL_NAMES)
def test_kernel_sums_match_reference(backend, dtype, d, name):
    rng = np.random.default_rng([d, zlib.crc32(name.encode())])
    B = get_backend(backend)
    spec = spec_for(name, d, rng)
    X, Y, w = problem(d, dtype, rng)
    X64, Y64, w64 = (a.astype(np.float64) for a in (X, Y, w))
    K = kernel_matrix(X64, Y64, spec)
    G = kernel_grad_matrix(X64, Y64, spec)

    vals = B.kernel_sum(X, Y, w, spec)
    grads = B.kernel_grad_sum(X, Y, w, spec)
    assert vals.dtype == dtype and vals.shape == (len(X),)
    assert grads.dtype == dtype and grads.shape == X.shape
    assert_close_to_scale(vals, K @ w64, np.abs(K) @ np.abs(w64), RTOL[dtype])
    g_scale = np.einsum("ijk,j->ik", np.abs(G), np.abs(w64)) + (np.linalg.norm(G, axis=2) @ np.abs(w64))[:, None]
    assert_close_to_scale(grads, np.einsum("ijk,j->ik", G, w64), g_scale, RTOL[dtype])

    v2, g2 = B.kernel_value_and_grad_sum(X, Y, w, spec)
    np.testing.assert_allclose(v2, vals, rtol=1e-6 if dtype == np.float32 else 1e-12, atol=1e-30)
    np.testing.assert_allclose(g2, grads, rtol=1e-6 if dtype == np.float32 else 1e-12, atol=1e-30)


@pytest.mark.parametrize("backend", HOST_BACKENDS)
@pytest.mark.parametrize("d", [2, 40])
@pytest.mark.parametrize("name", ["gaussian", "gaussian_mixture", "rq", "distance", "riesz", "polynomial"])
def test_gradient_sum_matches_finite_differences_of_the_value_sum(backend, d, name):
    rng = np.random.default_rng(7 + d)
    B = get_backend(backend)
    spec = spec_for(name, d, rng)
    X, Y, w = problem(d, np.float64, rng, n=6, m=50)
    grads = B.kernel_grad_sum(X, Y, w, spec)
    h = 1e-5
    for a in range(0, d, max(1, d // 5)):
        e = np.zeros(d)
        e[a] = h
        fd = (B.kernel_sum(X + e, Y, w, spec) - B.kernel_sum(X - e, Y, w, spec)) / (2 * h)
        np.testing.assert_allclose(grads[:, a], fd, rtol=1e-5, atol=1e-6 * np.abs(w).sum())


def test_cpu_blocked_high_d_path_and_tiles(monkeypatch):
    """Several BLAS row blocks and partial tiles give the same sums as one block."""
    rng = np.random.default_rng(3)
    X, Y, w = problem(33, np.float64, rng, n=37, m=301)
    spec = make_kernel("gaussian_mixture", sigmas=(0.7, 2.0))
    one_block = cpu_backend.kernel_value_and_grad_sum(X, Y, w, spec)
    monkeypatch.setattr(cpu_backend, "GRAM_ELEMS", 5 * 301)
    monkeypatch.setattr(cpu_backend, "GRAM_MIN_ROWS", 1)
    assert cpu_backend.gram_block_rows(301) == 5
    many = cpu_backend.kernel_value_and_grad_sum(X, Y, w, spec)
    for a, b in zip(one_block, many):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-14)


def test_gram_block_rows_rule():
    """GRAM_ELEMS / m rows, raised to 256 while within 2^23 entries, at least one row."""
    rows = cpu_backend.gram_block_rows
    assert rows(1000) == (1 << 21) // 1000 and rows(30000) == 256 and rows(10000) == 256
    assert rows(100_000) == (1 << 23) // 100_000 and rows(10**8) == 1 and rows(0) == 1 << 21


def test_far_from_origin_points_keep_precision_in_high_d():
    """The d >= 32 path shifts points by the centres' mean before the ||x||^2 - 2xy + ||y||^2 expansion."""
    rng = np.random.default_rng(4)
    X, Y, w = problem(40, np.float64, rng, n=10, m=60)
    spec = make_kernel("gaussian", sigma=0.5)
    near = cpu_backend.kernel_grad_sum(X, Y, w, spec)
    far = cpu_backend.kernel_grad_sum(X + 1e4, Y + 1e4, w, spec)
    np.testing.assert_allclose(far, near, rtol=1e-7, atol=1e-9)


@pytest.mark.parametrize("backend", HOST_BACKENDS)
def test_empty_and_shape_errors(backend):
    B = get_backend(backend)
    spec = make_kernel("gaussian", sigma=1.0)
    X = np.ones((4, 2))
    np.testing.assert_array_equal(B.kernel_sum(X, np.ones((0, 2)), np.ones(0), spec), np.zeros(4))
    assert B.kernel_grad_sum(np.ones((0, 2)), X, np.ones(4), spec).shape == (0, 2)
    with pytest.raises(DataError, match="d=3"):
        B.kernel_sum(X, np.ones((4, 3)), np.ones(4), spec)
    with pytest.raises(DataError, match="weights"):
        B.kernel_grad_sum(X, X, np.ones(3), spec)


@pytest.mark.parametrize("backend", HOST_BACKENDS)
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_pair_sum(backend, dtype):
    rng = np.random.default_rng(5)
    X, Y, _ = problem(2, dtype, rng, n=30, m=20)
    spec = make_kernel("imq", c=1.0)
    expect = kernel_matrix(X.astype(np.float64), Y.astype(np.float64), spec).sum()
    assert isinstance(get_backend(backend).pair_sum(X, Y, spec), float)
    np.testing.assert_allclose(get_backend(backend).pair_sum(X, Y, spec), expect, rtol=RTOL[dtype])


# ------------------------------------------------------------------ random features --------
@pytest.mark.parametrize("backend", HOST_BACKENDS)
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("activation", ["cos", "relu"])
@pytest.mark.parametrize("d", [1, 3])
def test_random_features(backend, dtype, activation, d):
    rng = np.random.default_rng(6)
    X = rng.normal(size=(15, d)).astype(dtype)
    A, b = rng.normal(size=(40, d)).astype(dtype), rng.uniform(-3, 3, size=40).astype(dtype)
    scale = np.sqrt(2 / 40)
    psi, dpsi = get_backend(backend).random_features(X, A, b, activation, scale)
    assert psi.dtype == dtype and dpsi.dtype == dtype and psi.shape == (15, 40)
    H = X.astype(np.float64) @ A.astype(np.float64).T + b
    if activation == "cos":
        expect, dexpect = scale * np.cos(H), -scale * np.sin(H)
    else:
        expect, dexpect = scale * np.maximum(H, 0), scale * (H > 0)
    tol = 1e-12 if dtype == np.float64 else 2e-6
    np.testing.assert_allclose(psi, expect, atol=tol)
    near_kink = np.abs(H) < 1e-5  # float32 rounding may flip the relu step there
    np.testing.assert_allclose(np.where(near_kink, 0, dpsi), np.where(near_kink, 0, dexpect), atol=tol)


@pytest.mark.parametrize("backend", HOST_BACKENDS)
@pytest.mark.parametrize("activation", ["cos", "relu"])
def test_feature_critic_gradient_matches_finite_differences(backend, activation):
    rng = np.random.default_rng(8)
    B = get_backend(backend)
    d = 3
    X, A = rng.normal(size=(7, d)), rng.normal(size=(30, d))
    b, wts = rng.uniform(-3, 3, size=30), rng.normal(size=30)
    _, dpsi = B.random_features(X, A, b, activation, 0.5)
    grad = (dpsi * wts) @ A  # grad_x f for f = psi @ w
    h = 1e-6
    for a in range(d):
        e = np.zeros(d)
        e[a] = h
        fd = (B.random_features(X + e, A, b, activation, 0.5)[0] @ wts
              - B.random_features(X - e, A, b, activation, 0.5)[0] @ wts) / (2 * h)
        np.testing.assert_allclose(grad[:, a], fd, rtol=1e-6, atol=1e-7)


# ---------------------------------------------------------------------------- NTK ----------
@pytest.mark.parametrize("backend", HOST_BACKENDS)
@pytest.mark.parametrize("kind", ["relu", "erf"])
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("sigma_b", [0.0, 0.3])
def test_ntk_apply_matches_dense_matrix(backend, kind, dtype, sigma_b, monkeypatch):
    rng = np.random.default_rng(9)
    Z = rng.normal(size=(90, 5))
    F = rng.normal(size=(90, 2)).astype(dtype)
    monkeypatch.setattr(cpu_backend, "NTK_BLOCK_ELEMS", 20 * 90)  # several row blocks: matrix-free path
    out = get_backend(backend).ntk_apply(Z.astype(dtype), F, kind, 1.2, sigma_b)
    T = ntk_matrix(Z.astype(dtype).astype(np.float64), Z.astype(dtype).astype(np.float64), kind, 1.2, sigma_b)
    assert out.dtype == dtype and out.shape == F.shape
    scale = np.abs(T) @ np.abs(F.astype(np.float64))
    # float32: Theta is computed in float64 on the cpu backend; the bound covers float32 outputs
    rtol = 1e-12 if dtype == np.float64 else 1e-5
    assert_close_to_scale(out, T @ F.astype(np.float64), scale, rtol)


def test_ntk_apply_rejects_mismatched_rows():
    with pytest.raises(DataError, match="same N"):
        get_backend("cpu").ntk_apply(np.ones((3, 2)), np.ones((4, 2)), "relu")


# --------------------------------------------------------------------- pairmath ------------
def test_poly_exp_accuracy():
    for lo, hi, rtol in ((0, 30, 2e-13), (30, 100, 5e-12)):
        x = -np.concatenate([np.linspace(lo, hi, 301), np.geomspace(max(lo, 1e-8), hi, 300)])
        approx = np.array([pm.poly_exp(v) for v in x])
        np.testing.assert_allclose(approx, np.exp(x), rtol=rtol)
    far = -np.geomspace(100, 2000, 50)
    assert np.all(np.abs([pm.poly_exp(v) for v in far] - np.exp(far)) < 1e-40)


def test_poly_sincos_accuracy():
    # against numpy's sin/cos (an independent implementation), dense near 0 and the quadrant
    # boundaries, and over the whole range in which the cpu backend uses it
    quadrants = np.arange(-400, 401) * (np.pi / 4)
    near = np.concatenate([np.linspace(-200, 200, 40001), quadrants, np.nextafter(quadrants, 0),
                           np.geomspace(1e-300, 1, 50), -np.geomspace(1e-300, 1, 50), [0.0, -0.0]])
    far = np.random.default_rng(0).uniform(-pm.SINCOS_MAX, pm.SINCOS_MAX, 20000)
    for x, tol in ((near, 2.3e-16), (far, 4.5e-16)):
        got = np.array([pm.poly_sincos(v) for v in x])
        assert np.abs(got[:, 0] - np.sin(x)).max() <= tol
        assert np.abs(got[:, 1] - np.cos(x)).max() <= tol
    tiny = np.geomspace(1e-300, 1e-8, 20)  # sin x = x to the last bit there
    np.testing.assert_array_equal([pm.poly_sincos(v)[0] for v in tiny], tiny)


def test_poly_sincos32_accuracy_and_precision():
    # against float64 numpy at the float32 inputs, dense near 0 and the quadrant boundaries
    # (where the reduction is hardest), and over the whole range the cpu backend uses it in
    quadrants = (np.arange(-400, 401) * (np.pi / 4)).astype(np.float32)
    near = np.concatenate([np.linspace(-200, 200, 40001, dtype=np.float32), quadrants,
                           np.nextafter(quadrants, np.float32(0)),
                           np.geomspace(1e-30, 1, 50, dtype=np.float32), [np.float32(0)]])
    far = np.random.default_rng(0).uniform(-pm.SINCOS32_MAX, pm.SINCOS32_MAX, 20000).astype(np.float32)
    for x in (near, far):
        got = np.array([pm.poly_sincos32(v) for v in x], dtype=np.float64)
        x64 = x.astype(np.float64)
        assert np.abs(got[:, 0] - np.sin(x64)).max() <= 9e-8  # 1.5 ulp of 1 (numpy's float32: 7e-8)
        assert np.abs(got[:, 1] - np.cos(x64)).max() <= 9e-8

    @njit
    def in_dtype(x):
        return pm.sincos_in_dtype(x)

    assert in_dtype(np.float32(0.3)) == pm.poly_sincos32(np.float32(0.3))
    assert in_dtype(np.float64(0.3)) == pm.poly_sincos(0.3)
    returns = {str(sig.args[0]): str(sig.return_type) for sig in in_dtype.nopython_signatures}
    assert returns == {"float32": "UniTuple(float32 x 2)", "float64": "UniTuple(float64 x 2)"}  # no promotion
    assert pm.sincos_limit(np.float32) == pm.SINCOS32_MAX and pm.sincos_limit(np.float64) == pm.SINCOS_MAX


@pytest.mark.parametrize("backend", HOST_BACKENDS)
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("activation", ["cos", "relu"])
@pytest.mark.parametrize("d", [2, 40])
def test_feature_mean_and_dpsi_match_the_exact_features(backend, dtype, activation, d, monkeypatch):
    # 3 row groups of 50 rows: the partial sums are flushed (every 16 rows) and added across groups
    monkeypatch.setattr(cpu_backend, "FEATURE_ITEMS", 3)
    monkeypatch.setattr(cpu_backend, "ITEM_ROWS_MIN", 1)
    rng = np.random.default_rng(d)
    X = rng.normal(size=(150, d)).astype(dtype)
    A, b = (rng.normal(size=(24, d)) / np.sqrt(d)).astype(dtype), rng.uniform(-3, 3, size=24).astype(dtype)
    mean, dpsi = get_backend(backend).feature_mean_and_dpsi(X, A, b, activation, 0.3)
    assert mean.dtype == dtype and dpsi.dtype == dtype and mean.shape == (24,) and dpsi.shape == (150, 24)
    H = X.astype(np.float64) @ A.astype(np.float64).T + b.astype(np.float64)
    if activation == "cos":
        psi, dexpect = 0.3 * np.cos(H), -0.3 * np.sin(H)
    else:
        psi, dexpect = 0.3 * np.maximum(H, 0), 0.3 * (H > 0)
    tol = 1e-13 if dtype == np.float64 else 2e-6
    np.testing.assert_allclose(mean, psi.mean(axis=0), rtol=0, atol=tol)
    near_kink = np.abs(H) < 1e-5
    np.testing.assert_allclose(np.where(near_kink, 0, dpsi), np.where(near_kink, 0, dexpect), rtol=0, atol=tol)


@pytest.mark.parametrize("backend", HOST_BACKENDS)
@pytest.mark.parametrize("activation", ["cos", "relu"])
def test_feature_mean_of_a_diverged_particle_is_nan(backend, activation):
    rng = np.random.default_rng(3)
    X, A, b = rng.normal(size=(40, 2)), rng.normal(size=(8, 2)), rng.uniform(-3, 3, 8)
    X[5, 0] = np.nan
    mean, dpsi = get_backend(backend).feature_mean_and_dpsi(X, A, b, activation, 0.5)
    assert np.isnan(mean).all() and np.isfinite(np.delete(dpsi, 5, axis=0)).all()


@pytest.mark.parametrize("backend", HOST_BACKENDS)
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("d", [1, 2, 5])
def test_feature_input_grads_match_a_direct_loop(backend, dtype, d):
    rng = np.random.default_rng(10 + d)
    n, K = 33, 70
    dpsi, A, w = rng.normal(size=(n, K)).astype(dtype), rng.normal(size=(K, d)), rng.normal(size=K)
    got = get_backend(backend).feature_input_grads(dpsi, A.astype(dtype), w.astype(dtype))
    assert got.dtype == dtype and got.shape == (n, d)
    want = np.array([A.astype(dtype).astype(np.float64).T @ (row * w.astype(dtype))
                     for row in dpsi.astype(np.float64)])
    scale = np.abs(dpsi.astype(np.float64)) @ np.abs(w[:, None] * A)
    assert_close_to_scale(got, want, scale, 1e-13 if dtype == np.float64 else 1e-6)


@pytest.mark.parametrize("backend", HOST_BACKENDS)
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("form", ["sq", "gp"])
@pytest.mark.parametrize("d", [1, 2, 5])
def test_feature_penalty_matches_a_direct_loop(backend, dtype, form, d):
    rng = np.random.default_rng(d)
    n, K = 37, 19
    dpsi, A, w = rng.normal(size=(n, K)).astype(dtype), rng.normal(size=(K, d)), rng.normal(size=K)
    sq, back = get_backend(backend).feature_penalty(dpsi, A.astype(dtype), w.astype(dtype), form)
    assert sq.dtype == dtype and back.dtype == dtype and sq.shape == (n,) and back.shape == (K,)
    want_sq, want_back = np.empty(n), np.zeros(K)
    D = dpsi.astype(np.float64)
    for i in range(n):  # G_i = A^T (dpsi_i * w); back += c_i dpsi_i * (A G_i)
        G = A.T @ (D[i] * w)
        want_sq[i] = G @ G
        norm = np.sqrt(want_sq[i] + 1e-12)
        c = 1.0 if form == "sq" else 2.0 * (norm - 1.0) / norm
        want_back += c * D[i] * (A @ G)
    tol = 1e-12 if dtype == np.float64 else 2e-5
    np.testing.assert_allclose(sq, want_sq, rtol=tol, atol=tol)
    np.testing.assert_allclose(back, want_back, rtol=tol, atol=tol * np.abs(want_back).max())


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_random_features_with_phases_beyond_the_polynomial_range(dtype):
    rng = np.random.default_rng(5)
    X = rng.normal(size=(50, 3)).astype(dtype)
    X[7] = [3e5, -2e5, 1e5]  # phases up to ~1e6: the cpu backend falls back to math.cos/sin
    X[8] = [1.5e4, -1e4, 5e3]  # beyond the float32 polynomial's range (the float64 one's within)
    A, b = rng.normal(size=(20, 3)).astype(dtype), rng.uniform(-3, 3, 20).astype(dtype)
    got = get_backend("cpu").random_features(X, A, b, "cos", 0.5)
    want = get_backend("numpy").random_features(X, A, b, "cos", 0.5)
    tol = 1e-12 if dtype == np.float64 else 2e-7
    for g, w in zip(got, want):
        np.testing.assert_allclose(g, w, rtol=0, atol=tol)
    mean, dpsi = get_backend("cpu").feature_mean_and_dpsi(X, A, b, "cos", 0.5)
    np.testing.assert_allclose(dpsi, want[1], rtol=0, atol=tol)
    np.testing.assert_allclose(mean, want[0].mean(axis=0), rtol=0, atol=tol)
    X[3, 0] = np.inf  # a diverged particle: NaN features, as on the reference
    for g in get_backend("cpu").random_features(X, A, b, "cos", 0.5):
        assert np.isnan(g[3]).all() and np.isfinite(g[:3]).all()


@pytest.mark.parametrize("name", KERNEL_NAMES)
def test_pairmath_keeps_float32(name):
    """No literal may promote float32 per-pair maths to float64 (it would run at float64 speed on a GPU)."""
    rng = np.random.default_rng(0)
    code, p, mix = pm.encode_kernel(spec_for(name, 2, rng), 2, np.float32)
    f = np.float32(0.7)
    out = pm.pair_terms(code, f, f, f, f, p, mix)
    sig = [s for s in pm.pair_terms.nopython_signatures if s.args[1].name == "float32"]
    assert sig and str(sig[0].return_type) == "UniTuple(float32 x 4)"
    ref = pm.pair_terms(code, 0.7, 0.7, 0.7, 0.7, p.astype(np.float64), mix.astype(np.float64))
    np.testing.assert_allclose(out, ref, rtol=1e-5, atol=1e-6)
    nk, q = pm.encode_ntk("erf", 1.0, 0.1, 3, np.float32)
    assert isinstance(pm.ntk_entry(nk, f, f, f, q), float)
    assert str(pm.ntk_entry.nopython_signatures[-1].return_type) == "float32"


def test_every_backend_exposes_the_same_functions():
    from particlegan.backends import cuda_backend, numpy_backend
    api = ("kernel_sum", "kernel_grad_sum", "kernel_value_and_grad_sum", "pair_sum", "random_features", "ntk_apply",
           "feature_penalty")
    for module in (numpy_backend, cpu_backend, cuda_backend):
        missing = [f for f in api if not callable(getattr(module, f, None))]
        assert not missing, (module.NAME, missing)


@pytest.mark.parametrize("backend", HOST_BACKENDS)
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("act", ["cos", "relu"])
@pytest.mark.parametrize("n,d", [(70, 2), (33, 3), (20, 40)])  # 40: the BLAS (high-d) path
def test_member_ops_are_each_members_own_call(backend, dtype, act, n, d):
    """backends.members: the ensemble form of the feature ops, member m bitwise its own call
    (the cpu backend's one program over (member, row group); numpy's loop); a member with a
    NaN particle sends the group to the looped form without changing the others."""
    from particlegan.backends import members

    be, mb = get_backend(backend), members(get_backend(backend))
    rng = np.random.default_rng(n + d)
    B, K = 4, 40
    X = rng.standard_normal((B, n, d)).astype(dtype)
    A = (rng.standard_normal((B, K, d)) / 0.3).astype(dtype)
    b = rng.uniform(-3, 3, (B, K)).astype(dtype)
    w = rng.standard_normal((B, K)).astype(dtype)
    scale = float(np.sqrt(2 / K))
    for nan_member in (False, True):
        if nan_member:
            X[2, 5, 0] = np.nan
        mean, dpsi = mb.feature_mean_and_dpsi(X, A, b, act, scale)
        psi_all, dpsi_all = mb.random_features(X, A, b, act, scale)
        grads = mb.feature_input_grads(dpsi, A, w)
        pens = {form: mb.feature_penalty(dpsi, A, w, form) for form in ("sq", "gp")}
        for m in range(B):
            own_mean, own_dpsi = be.feature_mean_and_dpsi(X[m], A[m], b[m], act, scale)
            np.testing.assert_array_equal(mean[m], own_mean)
            np.testing.assert_array_equal(dpsi[m], own_dpsi)
            np.testing.assert_array_equal(psi_all[m], be.random_features(X[m], A[m], b[m], act, scale)[0])
            np.testing.assert_array_equal(grads[m], be.feature_input_grads(own_dpsi, A[m], w[m]))
            for form, (sq, back) in pens.items():
                own_sq, own_back = be.feature_penalty(own_dpsi, A[m], w[m], form)
                np.testing.assert_array_equal(sq[m], own_sq)
                np.testing.assert_array_equal(back[m], own_back)
        assert mean.dtype == dpsi.dtype == grads.dtype == pens["sq"][1].dtype == dtype
    # and the member forms agree with the numpy reference (to the dtype's rounding)
    ref = members(get_backend("numpy")).feature_mean_and_dpsi(X[:2], A[:2], b[:2], act, scale)
    np.testing.assert_allclose(mean[:2], ref[0], rtol=RTOL[dtype] * 10, atol=RTOL[dtype])


def test_member_ops_check_their_shapes():
    from particlegan.backends import members

    mb = members(get_backend("cpu"))
    with pytest.raises(DataError, match="agree in B"):
        mb.feature_mean_and_dpsi(np.zeros((2, 5, 2)), np.zeros((3, 4, 2)), np.zeros((3, 4)), "cos", 1.0)
    with pytest.raises(DataError, match="b must have shape"):
        mb.feature_mean_and_dpsi(np.zeros((2, 5, 2)), np.zeros((2, 4, 2)), np.zeros((2, 3)), "cos", 1.0)
