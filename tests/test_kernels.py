"""Kernel library: specs, numpy reference formulas, finite-difference gradients, closed-form NTK."""
import math

import numpy as np
import pytest

from particlegan.errors import ConfigError, DataError
from particlegan.maths.kernels import (KERNEL_NAMES, KernelSpec, kernel_diag, kernel_grad_matrix, kernel_matrix,
                                 make_kernel, nngp_matrix, ntk_matrix)

# one instance of every kernel (anchored ones with a non-trivial anchor set per test)
KERNELS = {
    "gaussian": dict(sigma=0.8),
    "gaussian_mixture": dict(sigmas=(0.5, 2.0), weights=(0.3, 1.5)),
    "rq": dict(alphas=(0.2, 1.0, 5.0), weights=(1.0, 0.5, 2.0), c_dot=0.3),
    "distance": dict(eps=0.05),
    "energy": dict(),
    "distance_induced": dict(beta=0.6),
    "riesz": dict(s=1.5, eps=0.2),
    "polynomial": dict(degree=3, coef0=0.5),
    "linear": dict(),
    "imq": dict(c=0.7, beta=0.8),
}


def anchored(name, d, rng):
    params = dict(KERNELS[name])
    if name == "distance":
        params["x0"] = tuple(rng.normal(size=d))
    if name == "distance_induced":
        params["z"] = tuple(rng.normal(size=d))
    return make_kernel(name, **params)


def direct_kernel(spec: KernelSpec, a, b):
    """Kernel value written straight from the formulas of the spec, one pair at a time."""
    p = spec.as_dict()
    d = len(a)
    r = math.sqrt(sum((ai - bi) ** 2 for ai, bi in zip(a, b)))
    dot = sum(ai * bi for ai, bi in zip(a, b))
    if spec.name == "gaussian":
        return math.exp(-r * r / (2 * p["sigma"] ** 2))
    if spec.name == "gaussian_mixture":
        return sum(w * math.exp(-r * r / (2 * s * s)) for s, w in zip(p["sigmas"], p["weights"]))
    if spec.name == "rq":
        return sum(w * (1 + r * r / (2 * al)) ** (-al) for al, w in zip(p["alphas"], p["weights"])) + p["c_dot"] * dot
    if spec.name in ("distance", "energy"):
        x0 = p.get("x0") or (0.0,) * d
        e2 = p["eps"] ** 2

        def nrm(u, v):
            return math.sqrt(sum((ui - vi) ** 2 for ui, vi in zip(u, v)) + e2)
        return nrm(a, x0) + nrm(b, x0) - nrm(a, b)
    if spec.name == "distance_induced":
        z = p["z"] or (0.0,) * d
        ra = math.dist(a, z)
        rb = math.dist(b, z)
        return ra ** (2 * p["beta"]) + rb ** (2 * p["beta"]) - r ** (2 * p["beta"])
    if spec.name == "riesz":
        return (r * r + p["eps"] ** 2) ** (-p["s"] / 2)
    if spec.name == "polynomial":
        g = p["gamma"] if p["gamma"] is not None else 1.0 / d
        return (g * dot + p["coef0"]) ** p["degree"]
    if spec.name == "linear":
        return dot
    if spec.name == "imq":
        return (p["c"] ** 2 + r * r) ** (-p["beta"])
    raise AssertionError(spec.name)


# ------------------------------------------------------------------------------ specs ------
def test_every_kernel_has_a_test_instance():
    assert set(KERNELS) == set(KERNEL_NAMES)


def test_spec_is_hashable_and_readable():
    a = make_kernel("gaussian_mixture", sigmas=[1, 2])
    b = make_kernel("gaussian_mixture", sigmas=(1.0, 2.0), weights=(1, 1))
    assert a == b and hash(a) == hash(b) and {a: 1}[b] == 1
    assert a.sigmas == (1.0, 2.0) and a.get("weights") == (1.0, 1.0) and a.get("nope", 7) == 7
    with pytest.raises(AttributeError):
        a.nope
    assert make_kernel("rq").alphas == (0.2, 0.5, 1.0, 2.0, 5.0)


@pytest.mark.parametrize("name, params, bad", [
    ("gaussian", dict(sigma=0.0), "sigma"),
    ("gaussian", dict(sigma=-1), "sigma"),
    ("gaussian", dict(), "sigma"),
    ("gaussian", dict(sigma=1, width=2), "width"),
    ("gaussian_mixture", dict(sigmas=(1, -2)), "sigmas"),
    ("gaussian_mixture", dict(sigmas=()), "sigmas"),
    ("gaussian_mixture", dict(sigmas=(1, 2), weights=(1,)), "weights"),
    ("rq", dict(alphas=(0.0,)), "alphas"),
    ("rq", dict(c_dot=float("nan")), "c_dot"),
    ("distance", dict(eps=-1), "eps"),
    ("distance", dict(x0="ab"), "x0"),
    ("distance_induced", dict(beta=1.5), "beta"),
    ("distance_induced", dict(beta=0), "beta"),
    ("riesz", dict(s=1), "eps"),
    ("riesz", dict(s=0, eps=1), "s"),
    ("polynomial", dict(degree=2.5), "degree"),
    ("polynomial", dict(degree=0), "degree"),
    ("polynomial", dict(gamma=-1), "gamma"),
    ("imq", dict(c=1, beta=0), "beta"),
])
def test_bad_parameters_raise_config_error_naming_them(name, params, bad):
    with pytest.raises(ConfigError, match=bad):
        make_kernel(name, **params)


def test_unknown_kernel_is_a_config_error():
    with pytest.raises(ConfigError, match="gausian"):
        make_kernel("gausian", sigma=1)


def test_anchor_of_wrong_length_is_a_config_error():
    k = make_kernel("distance", x0=(0.0, 1.0))
    with pytest.raises(ConfigError, match="x0"):
        kernel_matrix(np.zeros((2, 3)), np.zeros((2, 3)), k)


def test_non_2d_points_are_a_data_error():
    with pytest.raises(DataError, match="X"):
        kernel_matrix(np.zeros(3), np.zeros((2, 3)), make_kernel("linear"))


# ----------------------------------------------------------------- values and gradients ----
@pytest.mark.parametrize("name", KERNEL_NAMES)
@pytest.mark.parametrize("d", [1, 2, 5])
def test_kernel_matrix_matches_direct_formula(name, d):
    rng = np.random.default_rng(d)
    spec = anchored(name, d, rng)
    X, Y = rng.normal(size=(6, d)), rng.normal(size=(5, d))
    K = kernel_matrix(X, Y, spec)
    expect = np.array([[direct_kernel(spec, x, y) for y in Y] for x in X])
    np.testing.assert_allclose(K, expect, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(kernel_diag(X, spec), [direct_kernel(spec, x, x) for x in X], rtol=1e-12,
                               atol=1e-12)


def assert_gradient_matches_finite_differences(X, Y, spec):
    """kernel_grad_matrix against central differences of kernel_matrix in each coordinate."""
    d = X.shape[1]
    G = kernel_grad_matrix(X, Y, spec)
    h = 1e-6
    for a in range(d):
        e = np.zeros(d)
        e[a] = h
        fd = (kernel_matrix(X + e, Y, spec) - kernel_matrix(X - e, Y, spec)) / (2 * h)
        np.testing.assert_allclose(G[:, :, a], fd, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("name", KERNEL_NAMES)
@pytest.mark.parametrize("d", [1, 3])
def test_kernel_gradient_matches_finite_differences(name, d):
    rng = np.random.default_rng(10 + d)
    spec = anchored(name, d, rng)
    X, Y = rng.normal(size=(5, d)), rng.normal(size=(4, d))
    assert_gradient_matches_finite_differences(X, Y, spec)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_kernel_diag_keeps_dtype(dtype):
    X = np.ones((3, 2), dtype=dtype)
    assert kernel_diag(X, make_kernel("gaussian", sigma=1.0)).dtype == dtype


def test_nondifferentiable_points_get_zero_gradient():
    # energy kernel with eps = 0: a = b and a = x0 are kinks; the convention is gradient 0 there
    X = np.array([[0.0, 0.0], [1.0, 2.0]])
    G = kernel_grad_matrix(X, X, make_kernel("energy"))
    assert np.all(np.isfinite(G))
    np.testing.assert_allclose(G[0, 0], 0.0)
    np.testing.assert_allclose(G[1, 1], X[1] / np.linalg.norm(X[1]))  # only the anchor term is left


def test_mixture_of_one_is_the_gaussian_and_rq_tends_to_it():
    rng = np.random.default_rng(1)
    X, Y = rng.normal(size=(4, 2)), rng.normal(size=(3, 2))
    g = kernel_matrix(X, Y, make_kernel("gaussian", sigma=1.0))
    np.testing.assert_allclose(kernel_matrix(X, Y, make_kernel("gaussian_mixture", sigmas=[1.0])), g, rtol=1e-14)
    rq = kernel_matrix(X, Y, make_kernel("rq", alphas=[1e6]))
    np.testing.assert_allclose(rq, g, rtol=1e-4)


def test_polynomial_gamma_defaults_to_one_over_d():
    rng = np.random.default_rng(2)
    X, Y = rng.normal(size=(3, 4)), rng.normal(size=(3, 4))
    np.testing.assert_allclose(kernel_matrix(X, Y, make_kernel("polynomial")),
                               kernel_matrix(X, Y, make_kernel("polynomial", gamma=0.25)), rtol=1e-14)


@pytest.mark.parametrize("x0", [None, (3.0, -1.0)])
def test_energy_mmd_is_the_energy_distance_for_any_anchor(x0):
    rng = np.random.default_rng(3)
    X, Y = rng.normal(size=(30, 2)), rng.normal(loc=0.5, size=(20, 2))
    k = make_kernel("distance", x0=x0)
    mmd2 = kernel_matrix(X, X, k).mean() + kernel_matrix(Y, Y, k).mean() - 2 * kernel_matrix(X, Y, k).mean()

    def mean_dist(A, B):
        return np.linalg.norm(A[:, None] - B[None], axis=-1).mean()
    energy = 2 * mean_dist(X, Y) - mean_dist(X, X) - mean_dist(Y, Y)
    np.testing.assert_allclose(mmd2, energy, rtol=1e-12)


# ------------------------------------------------------------------------------ NTK --------
def sphere(n, dz, rng):
    z = rng.normal(size=(n, dz))
    return z * (np.sqrt(dz) / np.linalg.norm(z, axis=1, keepdims=True))


def test_relu_ntk_constants_on_the_sphere():
    z = np.zeros((3, 4))
    z[0, 0] = z[1, 1] = 2.0  # radius sqrt(dz) = 2, orthogonal
    z[2, 0] = -2.0  # antipodal to z[0]
    T = ntk_matrix(z, z, "relu")
    np.testing.assert_allclose(np.diag(T), 1.0, rtol=1e-14)
    np.testing.assert_allclose(T[0, 1], 1 / (2 * np.pi), rtol=1e-14)
    np.testing.assert_allclose(T[0, 2], 0.0, atol=1e-14)  # theta = pi: Sigma_hat = Sigma_dot = 0


@pytest.mark.parametrize("kind", ["relu", "erf"])
def test_ntk_is_symmetric_psd_and_rejects_bad_args(kind):
    rng = np.random.default_rng(4)
    Z = sphere(30, 5, rng)
    T = ntk_matrix(Z, Z, kind, 1.3, 0.2)
    np.testing.assert_allclose(T, T.T, rtol=1e-13)
    assert np.linalg.eigvalsh(T)[0] > -1e-10
    with pytest.raises(ConfigError, match="sigma_w"):
        ntk_matrix(Z, Z, kind, 0.0)
    with pytest.raises(ConfigError, match="tanh"):
        ntk_matrix(Z, Z, "tanh")


def wide_network_terms(Z, kind, sigma_w, sigma_b, width, rng):
    """Per-neuron terms of the empirical NTK and NNGP of a random wide 1-hidden-layer network.

    f(z) = s_w/sqrt(m) sum_k v_k phi(h_k(z)) + s_b b2,  h_k = s_w W_k.z/sqrt(dz) + s_b b_k.
    Returns the parameter Jacobian pieces so that empirical NTK = s_b^2 + mean_k t_k(z, z').
    """
    n, dz = Z.shape
    W, b, v = rng.normal(size=(width, dz)), rng.normal(size=width), rng.normal(size=width)
    H = sigma_w * Z @ W.T / np.sqrt(dz) + sigma_b * b  # (n, m)
    if kind == "relu":
        phi, dphi = np.maximum(H, 0), (H > 0).astype(float)
    else:
        from scipy.special import erf
        phi, dphi = erf(H), 2 / np.sqrt(np.pi) * np.exp(-H * H)
    return W, b, v, phi, dphi


def empirical_jacobian(Z, W, b, v, phi, dphi, sigma_w, sigma_b):
    """Jacobian of f over (v, W, b, b2), shape (n, P), written from the chain rule."""
    n, dz = Z.shape
    m = len(v)
    c = sigma_w / np.sqrt(m)
    J_v = c * phi
    J_b = c * v * dphi * sigma_b
    J_W = (c * v * dphi * sigma_w / np.sqrt(dz))[:, :, None] * Z[:, None, :]
    J_b2 = np.full((n, 1), sigma_b)
    return np.concatenate([J_v, J_W.reshape(n, -1), J_b, J_b2], axis=1)


@pytest.mark.parametrize("kind", ["relu", "erf"])
@pytest.mark.parametrize("sigma_w, sigma_b", [(1.0, 0.0), (1.3, 0.4)])
def test_ntk_matches_empirical_ntk_of_a_wide_network(kind, sigma_w, sigma_b):
    rng = np.random.default_rng(5)
    dz, width = 3, 20000
    Z = np.concatenate([sphere(4, dz, rng), 0.5 * sphere(1, dz, rng)])  # one code off the sphere
    W, b, v, phi, dphi = wide_network_terms(Z, kind, sigma_w, sigma_b, width, rng)
    J = empirical_jacobian(Z, W, b, v, phi, dphi, sigma_w, sigma_b)

    # the hand-written Jacobian is itself checked by a directional finite difference of f
    def f(Wp, bp, vp, b2):
        H = sigma_w * Z @ Wp.T / np.sqrt(dz) + sigma_b * bp
        if kind == "relu":
            act = np.maximum(H, 0)
        else:
            from scipy.special import erf
            act = erf(H)
        return sigma_w / np.sqrt(width) * act @ vp + sigma_b * b2
    dW, db, dv, db2 = rng.normal(size=W.shape), rng.normal(size=b.shape), rng.normal(size=v.shape), 0.7
    h = 1e-6
    fd = (f(W + h * dW, b + h * db, v + h * dv, h * db2) - f(W - h * dW, b - h * db, v - h * dv, -h * db2)) / (2 * h)
    direction = np.concatenate([dv, dW.ravel(), db, [db2]])
    np.testing.assert_allclose(J @ direction, fd, rtol=1e-5, atol=1e-6)

    emp = J @ J.T
    # per-neuron terms t_k(z, z') whose mean is emp - s_b^2: their spread gives the Monte-Carlo error
    coef = sigma_w ** 2 * (Z @ Z.T / dz * sigma_w ** 2 + sigma_b ** 2)
    terms = sigma_w ** 2 * phi[:, None, :] * phi[None, :, :] + coef[:, :, None] * (
        v ** 2 * dphi)[:, None, :] * dphi[None, :, :]
    np.testing.assert_allclose(terms.mean(axis=2) + sigma_b ** 2, emp, rtol=1e-10)
    stderr = terms.std(axis=2) / np.sqrt(width)
    closed = ntk_matrix(Z, Z, kind, sigma_w, sigma_b)
    assert np.all(np.abs(emp - closed) <= 5 * stderr + 1e-12), np.max(np.abs(emp - closed) / stderr)

    nngp_terms = sigma_w ** 2 * phi[:, None, :] * phi[None, :, :]
    nngp_err = np.abs(nngp_terms.mean(axis=2) + sigma_b ** 2 - nngp_matrix(Z, Z, kind, sigma_w, sigma_b))
    assert np.all(nngp_err <= 5 * nngp_terms.std(axis=2) / np.sqrt(width) + 1e-12)


@pytest.mark.parametrize("kind", ["relu", "erf"])
@pytest.mark.parametrize("sigma_w, sigma_b", [(1.0, 0.0), (1.3, 0.4)])
def test_ntk_components_match_wide_network_averages(kind, sigma_w, sigma_b):
    """Sharper Monte-Carlo check of the two activation expectations separately (no v_k^2 noise):
    NNGP = s_w^2 E[phi(h) phi(h~)] + s_b^2 and (Theta - NNGP) / (s_w^2 Sigma1) = E[phi'(h) phi'(h~)],
    h, h~ the pre-activations at z, z~."""
    rng = np.random.default_rng(6)
    dz, width = 3, 200_000
    Z = np.concatenate([sphere(3, dz, rng), 0.6 * sphere(1, dz, rng)])
    _, _, _, phi, dphi = wide_network_terms(Z, kind, sigma_w, sigma_b, width, rng)
    s1 = sigma_w ** 2 * Z @ Z.T / dz + sigma_b ** 2
    nngp = nngp_matrix(Z, Z, kind, sigma_w, sigma_b)
    s_dot = (ntk_matrix(Z, Z, kind, sigma_w, sigma_b) - nngp) / (sigma_w ** 2 * s1)
    for closed, samples in (((nngp - sigma_b ** 2) / sigma_w ** 2, phi), (s_dot, dphi)):
        prod = samples[:, None, :] * samples[None, :, :]
        err = np.abs(prod.mean(axis=2) - closed)
        assert np.all(err <= 5 * prod.std(axis=2) / np.sqrt(width) + 1e-12), np.max(err)


@pytest.mark.parametrize("d", [1, 3])
def test_riesz_s1_branch_matches_the_closed_form_and_finite_differences(d):
    """The reference takes 1/sqrt(t) for s = 1 (t = r^2 + eps^2) instead of a general power:
    values against (r^2 + eps^2)^(-1/2) written out here, gradient against finite differences."""
    rng = np.random.default_rng(7)
    spec = make_kernel("riesz", s=1.0, eps=0.2)
    X, Y = rng.normal(size=(5, d)), rng.normal(size=(4, d))
    r2 = ((X[:, None, :] - Y[None, :, :]) ** 2).sum(-1)
    np.testing.assert_allclose(kernel_matrix(X, Y, spec), (r2 + 0.04) ** -0.5, rtol=1e-13)
    assert_gradient_matches_finite_differences(X, Y, spec)
