import numpy as np
import pytest

from particlegan.model import critics as cr
from particlegan.model.from_config import target_feature_needs
from particlegan.backends import get_backend
from particlegan.model.losses import make_objective

NP = get_backend("numpy")
OBJECTIVES = [("ipm", 1, 1, True), ("minimax", 1, 1, True), ("alpha", 0.3, 1.0, True),
              ("alpha", 0.5, 1.2, False)]


def _setup(kind, dim=2, K=40, seed=0):
    rng = np.random.default_rng(seed)
    fm = cr.make_feature_map(kind, 0.3, K, dim, rng)
    y = rng.normal(size=(30, dim)) * 0.5
    x = rng.normal(size=(20, dim)) * 0.2
    w = rng.normal(size=K)
    return fm, x, y, w, rng


@pytest.mark.parametrize("kind", cr.FEATURE_CRITICS)
def test_feature_values_and_grads_match_direct_formula_and_fd(kind):
    fm, x, _, w, _ = _setup(kind)
    fb = cr.feature_batch(fm, x, NP)
    f, g = cr.feature_values_and_grads(fm, fb, w)
    act = np.cos if kind == "rff" else (lambda z: np.maximum(z, 0))
    direct = lambda pts: fm.scale * act(pts @ fm.A.T + fm.b) @ w  # noqa: E731
    np.testing.assert_allclose(f, direct(x), rtol=1e-12)
    h = 1e-6
    for k in range(x.shape[1]):
        e = np.zeros_like(x)
        e[:, k] = h
        np.testing.assert_allclose(g[:, k], (direct(x + e) - direct(x - e)) / (2 * h), rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("backend", ["numpy", "cpu"])
@pytest.mark.parametrize("kind", cr.FEATURE_CRITICS)
@pytest.mark.parametrize("penalty", ["none", "fake", "real", "interpolates"])
@pytest.mark.parametrize("obj", OBJECTIVES)
def test_critic_objective_gradient_finite_difference(kind, penalty, obj, backend):
    be = get_backend(backend)
    fm, x, y, w, rng = _setup(kind)
    objective = make_objective(*obj)
    real, fake = cr.feature_batch(fm, y, be), cr.feature_batch(fm, x, be)
    xhat = cr.interpolates(x, y, rng)
    pen = cr.feature_batch(fm, xhat, be)

    def J(wv):
        return cr.feature_critic_objective(fm, wv, real, fake, objective, penalty, 0.7, pen, 0.05, be)[0]

    _, grad = cr.feature_critic_objective(fm, w, real, fake, objective, penalty, 0.7, pen, 0.05, be)
    h = 1e-6
    fd = np.array([(J(w + h * e) - J(w - h * e)) / (2 * h) for e in np.eye(len(w))])
    np.testing.assert_allclose(grad, fd, rtol=1e-5, atol=1e-8)


@pytest.mark.parametrize("backend", ["numpy", "cpu"])
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("keep", [(False, False), (True, False), (False, True)])
def test_streamed_target_features_equal_the_whole_batch(backend, dtype, keep):
    import dataclasses

    be = get_backend(backend)
    rng = np.random.default_rng(3)
    fm = cr.make_feature_map("rff", 0.7, 48, 3, rng)
    fm = dataclasses.replace(fm, A=fm.A.astype(dtype), b=fm.b.astype(dtype))
    y = rng.normal(size=(1001, 3)).astype(dtype)
    whole = cr.feature_batch(fm, y, be)
    tol = 1e-5 if dtype == np.float32 else 1e-13
    for chunk, bitwise in ((48 * 7, False), (48 * 1000, False), (48 * 1001, True)):
        fb = cr.target_feature_batch(fm, y, be, *keep, chunk_elems=chunk)
        assert fb.mean_psi.dtype == whole.mean_psi.dtype and fb.mean_psi.shape == (48,)
        if bitwise:  # fits one chunk: built exactly as the whole batch
            np.testing.assert_array_equal(fb.mean_psi, whole.mean_psi)
        np.testing.assert_allclose(fb.mean_psi, whole.mean_psi, rtol=tol, atol=tol * 1e-2)
        for kept, got, want in zip(keep, (fb.psi, fb.dpsi), (whole.psi, whole.dpsi)):
            if kept:
                np.testing.assert_allclose(got, want, rtol=tol, atol=tol)
            else:
                assert got is None


@pytest.mark.parametrize("loss, want", [
    ({"kind": "ipm", "penalty": "fake"}, (False, False)),
    ({"kind": "ipm", "penalty": "real"}, (False, True)),
    ({"kind": "ipm", "penalty": "real", "penalty_weight": 0.0}, (False, False)),
    ({"kind": "minimax", "penalty": "interpolates"}, (True, False)),
    ({"kind": "alpha", "penalty": "real"}, (True, True)),
])
def test_target_features_kept_are_those_the_objective_reads(loss, want):
    from particlegan.store.config import resolve_config
    from particlegan.engine.dynamics import build_model

    items = [f"loss.{k}={v!r}" if isinstance(v, str) else f"loss.{k}={v}" for k, v in loss.items()]
    items = [i.replace("'", '"') for i in items]
    cfg = resolve_config(overrides=items + ["particles.n=16", "target.n_samples=64", "critic.features=16",
                                            "dynamics.critic_steps_startup=1", "observables.mmd_samples=16"])
    assert target_feature_needs(cfg["loss"]) == want
    model, _ = build_model(cfg)
    real = model.critic.real
    assert (real.psi is not None, real.dpsi is not None) == want


def test_streaming_the_targets_features_bounds_the_memory():
    import tracemalloc

    rng = np.random.default_rng(0)
    fm = cr.make_feature_map("rff", 1.0, 256, 2, rng)
    y = rng.normal(size=(40_000, 2))  # psi + dpsi: 164 MB
    peaks = {}
    for keep in ((True, True), (False, False)):
        tracemalloc.start()
        cr.target_feature_batch(fm, y, NP, *keep, chunk_elems=1 << 20)
        peaks[keep] = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    assert peaks[(True, True)] > 2 * 40_000 * 256 * 8
    assert peaks[(False, False)] < 0.2 * peaks[(True, True)]


def test_penalty_values_match_direct_gradient_norms():
    fm, x, y, w, rng = _setup("rff")
    fake = cr.feature_batch(fm, x, NP)
    real = cr.feature_batch(fm, y, NP)
    obj = make_objective("ipm")
    base = cr.feature_critic_objective(fm, w, real, fake, obj, "none", 0.0, None)[0]
    with_pen = cr.feature_critic_objective(fm, w, real, fake, obj, "fake", 0.5, None)[0]
    _, g = cr.feature_values_and_grads(fm, fake, w)
    np.testing.assert_allclose(base - with_pen, 0.5 * np.mean(np.sum(g ** 2, axis=1)), rtol=1e-12)
    # IPM without penalty is mean f(real) - mean f(fake)
    np.testing.assert_allclose(base, np.mean(real.psi @ w) - np.mean(fake.psi @ w), rtol=1e-12)


def test_rff_approximates_rbf_kernel():
    rng = np.random.default_rng(3)
    sigma = 0.4
    fm = cr.make_feature_map("rff", sigma, 200_000, 2, rng)
    pts = np.array([[0.0, 0.0], [0.3, -0.1], [0.5, 0.4]])
    fb = cr.feature_batch(fm, pts, NP)
    approx = fb.psi @ fb.psi.T
    d2 = np.sum((pts[:, None] - pts[None]) ** 2, axis=-1)
    # Monte-Carlo error of the K-feature estimate is about sqrt(2/K) ~ 3e-3
    np.testing.assert_allclose(approx, np.exp(-d2 / (2 * sigma ** 2)), atol=1.5e-2)


def test_kernel_critic_memory_is_geometric_gradient_ascent():
    rng = np.random.default_rng(1)
    xs = [rng.normal(size=(5, 2)) for _ in range(4)]
    eta, ridge, n_c = 0.2, 0.5, 3
    st = None
    for x in xs:
        st = cr.kernel_critic_update(st, x, n_c, eta, ridge, memory=10)
    # independent recursion: f <- rho f + eta w[x] applied n_c times per snapshot
    rho = 1 - eta * ridge
    coef = np.zeros(len(xs))
    for t in range(len(xs)):
        for _ in range(n_c):
            coef *= rho
            coef[t] += eta
    np.testing.assert_allclose(st.coefs, coef, rtol=1e-12)
    short = None
    for x in xs:
        short = cr.kernel_critic_update(short, x, n_c, eta, ridge, memory=2)
    np.testing.assert_allclose(short.coefs, coef[-2:], rtol=1e-12)
    assert short.snapshots.shape == (2, 5, 2)


def test_kernel_critic_witness_matches_direct_sum():
    from particlegan.maths.kernels import make_kernel

    rng = np.random.default_rng(2)
    y, x, q = rng.normal(size=(7, 2)), rng.normal(size=(5, 2)), rng.normal(size=(4, 2))
    st = cr.kernel_critic_update(None, x, 1, 0.1, 0.0, memory=0)
    kern = make_kernel("gaussian", sigma=0.7)
    f, g = cr.kernel_critic_eval(st, y, q, kern, NP)
    k = lambda a, b: np.exp(-np.sum((a[:, None] - b[None]) ** 2, -1) / (2 * 0.49))  # noqa: E731
    np.testing.assert_allclose(f, k(q, y).mean(1) - k(q, x).mean(1), rtol=1e-12)
    gd = (np.einsum("ij,ijd->id", k(q, y), y[None] - q[:, None]) / 7
          - np.einsum("ij,ijd->id", k(q, x), x[None] - q[:, None]) / 5) / 0.49
    np.testing.assert_allclose(g, gd, rtol=1e-10)


# step sizes measured on this setting (seeds 0-3 all end at 8/8 modes, MMD^2 ~ -1/N): mmd
# converges for eta_G in [1, 8] (64 overshoots: hq ~ 0.5), energy for [8, 64], riesz only with
# a softened kernel: riesz_eps = 0.05 (~ 2/3 target.sigma), eta_G in [0.2, 1]; with the default
# riesz_eps = 1e-3 the 500 target samples act as near-point charges that trap particles
# (300 steps: 4 modes at eta_G = 1, MMD^2 still 0.15 at eta_G = 0.01).
FLOWS = {"mmd": ["critic.mmd_sigmas=[0.2]", "dynamics.eta_g=8"],
         "energy": ["dynamics.eta_g=64"],
         "riesz": ["critic.riesz_eps=0.05", "dynamics.eta_g=1"]}


@pytest.mark.trajectory
@pytest.mark.parametrize("ctype", ["mmd", "energy", "riesz"])
def test_distance_flow_converges_on_the_ring(ctype):
    """Wasserstein gradient flow of each particle-based distance, N = 64 particles started at the
    origin, 8-mode ring (500 target samples), 200 steps: the recorded Gaussian MMD^2 falls from
    ~0.78 to below 1/30 of its start (it ends near -1/N, the unbiased estimate of a particle set
    more regular than an iid sample), every mode is covered from step 100 on, and >= 90% of the
    particles are within 3 sigma of a mode."""
    from particlegan.store.config import resolve_config
    from particlegan.engine.simulate import simulate

    cfg = resolve_config(overrides=["particles.n=64", "target.n_samples=500", "observables.mmd_samples=500",
                                    "loss.penalty=none", "run.record_every=10", "run.steps=200",
                                    f"critic.type={ctype}", *FLOWS[ctype]])
    res = simulate(cfg)
    s = res.series
    assert res.status == "ok"
    assert s["mmd2"][0] > 0.5
    assert s["mmd2"][-1] < s["mmd2"][0] / 30 and abs(s["mmd2"][-1]) < 0.03
    assert np.all(s["modes_covered"][s["step"] >= 100] == 8)
    assert s["hq_fraction"][-1] >= 0.9 and s["collapse"][-1] < 0.02
