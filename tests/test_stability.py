"""Tests of particlegan.maths.stability (effective-gan-spec B2, A2.4, A2.9) and the dispersion plot/CLI.

Fourier symbols are checked against direct numerical Fourier transforms of the radial kernel
(m = 1: 2 int K(r) cos(kr) dr; m = 3: (4 pi/k) int r K(r) sin(kr) dr, both with QUADPACK's
Fourier-integral routine; m = 2: 2 pi int r K(r) J0(kr) dr summed between the zeros of J0), and
the generalised symbols of the conditionally positive definite kernels through Parseval's
identity for zero-mass Gaussian perturbations, whose energy distance has a closed form.
"""
import math
import os

import numpy as np
import pytest
from click.testing import CliRunner
from scipy.integrate import quad
from scipy.special import gamma as G
from scipy.special import j0, jn_zeros

from particlegan.maths import stability as st
from particlegan.cli import main
from particlegan.errors import ConfigError, DataError

K_TEST = (0.5, 2.0)


# --------------------------------------------------------------- numerical transforms ------

def ft_radial(f, k, dim):
    """Direct numerical Fourier transform of a radial function f(r) in R^dim at |k| = k."""
    if dim == 1:
        return 2.0 * quad(f, 0, np.inf, weight="cos", wvar=k, limlst=200)[0]
    if dim == 3:
        return 4.0 * np.pi / k * quad(lambda r: r * f(r), 0, np.inf, weight="sin", wvar=k, limlst=200)[0]
    assert dim == 2
    zeros = np.concatenate([[0.0], jn_zeros(0, 400)]) / k
    parts = [quad(lambda r: r * f(r) * j0(k * r), zeros[i], zeros[i + 1])[0] for i in range(400)]
    partial = np.cumsum(parts)
    for _ in range(6):  # repeated averaging accelerates the alternating tail
        partial = 0.5 * (partial[1:] + partial[:-1])
    return 2.0 * np.pi * partial[-1]


@pytest.mark.parametrize("dim", [1, 2, 3])
@pytest.mark.parametrize("k", K_TEST)
def test_gaussian_symbol_matches_numerical_ft(dim, k):
    sigma = 0.7
    num = ft_radial(lambda r: math.exp(-r * r / (2 * sigma**2)), k, dim)
    assert st.fourier_symbol("gaussian", k, dim=dim, sigma=sigma) == pytest.approx(num, rel=1e-8)


def test_gaussian_symbol_matches_2d_grid_transform():
    """A brute-force 2-D Riemann sum of K(x) cos(k.x) (no radial reduction)."""
    sigma, h = 0.8, 0.02
    x = np.arange(-8, 8 + h / 2, h)
    XX, YY = np.meshgrid(x, x, indexing="ij")
    kernel = np.exp(-(XX**2 + YY**2) / (2 * sigma**2))
    for kvec in ([1.0, 0.0], [0.6, 0.8], [1.5, -2.0]):
        num = np.sum(kernel * np.cos(kvec[0] * XX + kvec[1] * YY)) * h * h
        got = st.fourier_symbol("gaussian", np.hypot(*kvec), dim=2, sigma=sigma)
        assert got == pytest.approx(num, rel=1e-9)


@pytest.mark.parametrize("dim, s, eps", [(1, 0.5, 0.3), (1, 2.0, 0.5), (2, 1.0, 0.5), (2, 3.0, 0.3),
                                         (3, 2.0, 0.2), (3, 4.0, 0.5), (3, 1.0, 0.5)])
@pytest.mark.parametrize("k", K_TEST)
def test_riesz_symbol_matches_numerical_ft(dim, s, eps, k):
    num = ft_radial(lambda r: (r * r + eps * eps) ** (-s / 2), k, dim)
    assert st.fourier_symbol("riesz", k, dim=dim, s=s, eps=eps) == pytest.approx(num, rel=1e-7)


def test_pure_riesz_symbol_matches_numerical_ft_and_default_exponent():
    # m = 3, s = 2: (4 pi / k) int_0^inf sin(kr)/r dr; m = 1, s = 1/2 split at r = 1 (singular at 0)
    k = 1.7
    num3 = ft_radial(lambda r: 1.0 / (r * r) if r > 0 else 0.0, k, 3)  # r K(r) = 1/r; sin(kr)/r finite at 0
    assert st.fourier_symbol("riesz", k, dim=3, s=2.0) == pytest.approx(num3, rel=1e-8)
    num1 = 2 * (quad(lambda r: r**-0.5 * math.cos(k * r), 0, 1)[0]
                + quad(lambda r: r**-0.5, 1, np.inf, weight="cos", wvar=k)[0])
    assert st.fourier_symbol("riesz", k, dim=1, s=0.5) == pytest.approx(num1, rel=1e-7)
    # default s = m - 1 (B6.1): symbol prop. 1/|k|, so r_G prop. |k| (B2 table)
    ks = np.array([0.5, 1.0, 4.0])
    r = st.dispersion_relation("riesz", ks, dim=3)["generator_decay_rate"]
    assert np.allclose(np.diff(np.log(r)) / np.diff(np.log(ks)), 1.0, rtol=1e-12)


@pytest.mark.parametrize("alpha", [0.5, 2.0])
def test_rq_symbol_matches_numerical_ft(alpha):
    f = lambda r: (1 + r * r / (2 * alpha)) ** (-alpha)  # noqa: E731
    for dim in (1, 3):
        for k in K_TEST:
            got = st.fourier_symbol("rq", k, dim=dim, alphas=[alpha])
            assert got == pytest.approx(ft_radial(f, k, dim), rel=1e-7)
    # mixtures add, and alpha -> infinity recovers the unit Gaussian
    both = st.fourier_symbol("rq", 1.0, dim=2, alphas=[0.5, 2.0], weights=[2.0, 3.0])
    assert both == pytest.approx(2 * st.fourier_symbol("rq", 1.0, dim=2, alphas=[0.5])
                                 + 3 * st.fourier_symbol("rq", 1.0, dim=2, alphas=[2.0]), rel=1e-12)
    assert st.fourier_symbol("rq", 1.0, dim=2, alphas=[200.0]) == pytest.approx(
        2 * np.pi * math.exp(-0.5), rel=5e-3)


def test_imq_symbol_matches_numerical_ft():
    for k in K_TEST:
        num = ft_radial(lambda r: (0.8**2 + r * r) ** -0.5, k, 3)
        assert st.fourier_symbol("imq", k, dim=3, c=0.8, beta=0.5) == pytest.approx(num, rel=1e-7)


# ------------------------------------------- generalised symbols via Parseval identity ------

def _gauss_moment(s, p, m):
    """E|Z|^p for Z ~ N(0, s^2 I_m)."""
    return (2 * s * s) ** (p / 2) * G((m + p) / 2) / G(m / 2)


def _chi_expect(g, s, m):
    """E g(|Z|) for Z ~ N(0, s^2 I_m), by quadrature over the chi density."""
    norm = 2 ** (m / 2 - 1) * s**m * G(m / 2)
    return quad(lambda r: g(r) * r ** (m - 1) * math.exp(-r * r / (2 * s * s)) / norm, 0, np.inf)[0]


def _parseval_rhs(symbol_fn, a, b, m):
    """(2 pi)^-m int K_hat(k) |phi_hat(k)|^2 d^m k for phi = N(0, a^2) - N(0, b^2) densities."""
    area = 2 * np.pi ** (m / 2) / G(m / 2)
    def f(k):
        phi_hat = math.exp(-a * a * k * k / 2) - math.exp(-b * b * k * k / 2)
        return symbol_fn(k) * phi_hat**2 * k ** (m - 1)

    return area / (2 * np.pi) ** m * (quad(f, 0, 1)[0] + quad(f, 1, np.inf)[0])


@pytest.mark.parametrize("m", [1, 2, 3])
def test_energy_symbol_reproduces_energy_distance_of_gaussians(m):
    """iint -|x-y| phi phi = 2E|X-Y| - E|X-X'| - E|Y-Y'| (closed form) = Parseval integral."""
    a, b = 0.6, 1.3
    lhs = (2 * _gauss_moment(math.hypot(a, b), 1, m) - _gauss_moment(math.sqrt(2) * a, 1, m)
           - _gauss_moment(math.sqrt(2) * b, 1, m))
    rhs = _parseval_rhs(lambda k: float(st.fourier_symbol("energy", k, dim=m)), a, b, m)
    assert rhs == pytest.approx(lhs, rel=1e-7)
    # the closed form of the B2 table: 2^m pi^((m-1)/2) Gamma((m+1)/2) |k|^-(m+1)
    assert st.fourier_symbol("distance", 2.0, dim=m) == pytest.approx(
        2**m * np.pi ** ((m - 1) / 2) * G((m + 1) / 2) * 2.0 ** (-(m + 1)), rel=1e-12)


@pytest.mark.parametrize("m", [1, 2])
def test_regularised_energy_symbol_reproduces_its_energy_distance(m):
    a, b, eps = 0.6, 1.3, 0.4
    g = lambda r: -math.sqrt(r * r + eps * eps)  # noqa: E731
    lhs = -(2 * _chi_expect(g, math.hypot(a, b), m) - _chi_expect(g, math.sqrt(2) * a, m)
            - _chi_expect(g, math.sqrt(2) * b, m))
    rhs = _parseval_rhs(lambda k: float(st.fourier_symbol("energy", k, dim=m, eps=eps)), a, b, m)
    assert rhs == pytest.approx(lhs, rel=1e-6)


@pytest.mark.parametrize("beta", [0.3, 0.5, 0.8])
def test_distance_induced_symbol_reproduces_its_energy_distance(beta):
    m, a, b = 2, 0.5, 1.1
    p = 2 * beta
    lhs = (2 * _gauss_moment(math.hypot(a, b), p, m) - _gauss_moment(math.sqrt(2) * a, p, m)
           - _gauss_moment(math.sqrt(2) * b, p, m))
    rhs = _parseval_rhs(lambda k: float(st.fourier_symbol("distance_induced", k, dim=m, beta=beta)), a, b, m)
    assert rhs == pytest.approx(lhs, rel=1e-6)
    assert st.fourier_symbol("distance_induced", 1.0, dim=2, beta=1.0) == 0.0  # -|r|^2: mean only


# --------------------------------------------------------------- dispersion relations ------

KERNELS = [("gaussian", {"sigma": 0.5}), ("gaussian_mixture", {"sigmas": [0.5, 1.0, 2.0]}),
           ("rq", {"alphas": [0.2, 1.0, 5.0]}), ("riesz", {"s": 1.0, "eps": 0.01}), ("energy", {}),
           ("distance_induced", {"beta": 0.7}), ("imq", {"c": 1.0})]


@pytest.mark.parametrize("name, params", KERNELS)
def test_dispersion_signs_and_stabiliser(name, params):
    k = np.logspace(-1.5, 1, 40)
    base = st.dispersion_relation(name, k, rho0=2.0, dim=2, kernel_params=params)
    symbol = base["symbol"]
    assert np.all(symbol > 0)
    assert np.allclose(base["generator_decay_rate"], 2.0 * k**2 * symbol, rtol=1e-14)
    assert np.all(base["generator_decay_rate"][symbol >= 0] >= 0)
    assert np.all(base["critic_growth_rate"] > 0)                           # beta = 0: unstable
    assert np.all(st.dispersion_relation(name, k, dim=2, beta=1.5, kernel_params=params)["critic_growth_rate"] < 0)
    assert np.all(st.dispersion_relation(name, k, dim=2, beta=1.0, kernel_params=params)["critic_growth_rate"] == 0)


def test_dispersion_power_laws_of_spec_table():
    k = np.array([0.5, 1.0, 2.0, 8.0])
    for m in (1, 2, 3):
        r = st.dispersion_relation("energy", k, dim=m)["generator_decay_rate"]
        assert np.allclose(np.diff(np.log(r)) / np.diff(np.log(k)), 1 - m, rtol=1e-12, atol=1e-12)
    g = st.dispersion_relation("gaussian", k, dim=2, rho0=1.0, sigma=1.0)["generator_decay_rate"]
    assert np.allclose(g, k**2 * 2 * np.pi * np.exp(-k**2 / 2), rtol=1e-14)


def test_symbol_accepts_kernel_spec():
    kernels = pytest.importorskip("particlegan.maths.kernels")
    spec = kernels.make_kernel("riesz", s=1.5, eps=0.2)
    assert st.fourier_symbol(spec, 1.3, dim=3) == st.fourier_symbol("riesz", 1.3, dim=3, s=1.5, eps=0.2)
    with pytest.raises(ConfigError):
        st.fourier_symbol(kernels.make_kernel("polynomial"), 1.0)


@pytest.mark.parametrize("call, message", [
    (lambda: st.fourier_symbol("gaussian", [0.0, 1.0]), "k must be"),
    (lambda: st.fourier_symbol("polynomial", 1.0), "no Fourier symbol"),
    (lambda: st.fourier_symbol("riesz", 1.0, dim=2, s=2.0), "0 < s < dim"),
    (lambda: st.fourier_symbol("rq", 1.0, c_dot=1.0), "c_dot"),
    (lambda: st.fourier_symbol("gaussian", 1.0, width=1.0), "no parameter"),
    (lambda: st.fourier_symbol("gaussian_mixture", 1.0), "needs parameter sigmas"),
    (lambda: st.dispersion_relation("gaussian", [1.0], beta=-1.0), "beta"),
    (lambda: st.parse_kernel_argument("gaussian:sigma"), "key=value"),
    (lambda: st.parse_kernel_argument("gaussian:sigma=abc"), "number"),
])
def test_stability_user_errors(call, message):
    with pytest.raises(ConfigError, match=message):
        call()


def test_parse_kernel_argument():
    assert st.parse_kernel_argument("gaussian_mixture:sigmas=0.5/1/2,weights=1/1/2") == (
        "gaussian_mixture", {"sigmas": (0.5, 1.0, 2.0), "weights": (1.0, 1.0, 2.0)})
    assert st.parse_kernel_argument("energy") == ("energy", {})


# --------------------------------------------------------------- damping theory (A2.9) ------

def test_kernel_eigenvalues_and_timescale_ratio_match_numerical_eigensystem():
    g1, g2, n = 1.3, 0.4, 7
    K = (g1 - g2) * np.eye(n) + g2 * np.ones((n, n))
    evals = np.sort(np.linalg.eigvalsh(K))
    cm, rel = st.kernel_eigenvalues(g1, g2, n)
    assert evals[-1] == pytest.approx(cm, rel=1e-12)
    assert np.allclose(evals[:-1], rel, rtol=1e-12)
    assert st.timescale_ratio(g2 / g1, n) == pytest.approx(evals[0] / evals[-1], rel=1e-12)
    assert st.critical_penalty_ratio(g2 / g1, n) == pytest.approx(
        st.critical_penalty(0.01, 0.1, cm / n, 2.0) / st.critical_penalty(0.01, 0.1, rel / n, 2.0), rel=1e-12)


def _spectral_abscissa(lam, eta_g, eta_d, kappa, h, c):
    """max Re eig of de/dt = eta_G kappa v, dv/dt = -eta_D h (e + c lam v), built here from A-4."""
    A = np.array([[0.0, eta_g * kappa], [-eta_d * h, -c * lam * eta_d * h]])
    return np.max(np.linalg.eigvals(A).real)


def test_critical_penalty_matches_spectral_abscissa_scan():
    """Spec check (A2.9): eta_G = 0.01, eta_D = 0.1, kappa = 1, h = 2 -> lambda_c = 0.2236.

    Scan lambda on a grid of spacing 1e-4; the fastest decay (most negative abscissa) must sit
    within one grid step of the formula. The spec's quoted scan value 0.2218 (max rate 0.04435)
    is a coarse-grid artefact: the abscissa there is -lambda eta_D h = -0.04436 on the
    underdamped branch; we reproduce that number to 4 digits and check 0.2218 is within 1%.
    """
    eta_g, eta_d, kappa, h = 0.01, 0.1, 1.0, 2.0
    lam_c = st.critical_penalty(eta_g, eta_d, kappa, h)
    assert lam_c == pytest.approx(0.2236, abs=1e-4)
    grid = np.arange(0.05, 0.6, 1e-4)
    abscissa = np.array([_spectral_abscissa(l, eta_g, eta_d, kappa, h, 2.0) for l in grid])
    lam_scan = grid[np.argmin(abscissa)]
    assert abs(lam_scan - lam_c) <= 1e-4
    assert -abscissa.min() == pytest.approx(math.sqrt(eta_d * eta_g * h * kappa), rel=1e-3)  # omega_0 = 0.04472
    assert -_spectral_abscissa(0.2218, eta_g, eta_d, kappa, h, 2.0) == pytest.approx(0.04435, abs=1e-4)
    assert abs(0.2218 / lam_c - 1) < 0.01
    # (lambda/2) E||grad f||^2 convention: critical strength doubles
    half = np.array([_spectral_abscissa(l, eta_g, eta_d, kappa, h, 1.0) for l in grid])
    assert abs(grid[np.argmin(half)] - st.critical_penalty(eta_g, eta_d, kappa, h, convention="half_lambda")) <= 1e-4
    assert st.critical_penalty(eta_g, eta_d, kappa, h, "half_lambda") == pytest.approx(2 * lam_c, rel=1e-14)


@pytest.mark.parametrize("convention, c", [("lambda", 2.0), ("half_lambda", 1.0)])
def test_oscillator_eigenvalues_and_damping_ratio(convention, c):
    eta_g, eta_d, kappa, h = 0.02, 0.3, 0.5, 1.5
    lam_c = st.critical_penalty(eta_g, eta_d, kappa, h, convention)
    for lam in (0.3 * lam_c, lam_c, 2.5 * lam_c):
        A = np.array([[0.0, eta_g * kappa], [-eta_d * h, -c * lam * eta_d * h]])
        ref = np.sort_complex(np.linalg.eigvals(A))
        got = np.sort_complex(st.oscillator_eigenvalues(lam, eta_g, eta_d, kappa, h, convention))
        assert np.allclose(got, ref, rtol=1e-6, atol=1e-9)
        assert np.allclose(st.linear_system_matrix(lam, eta_g, eta_d, kappa, h, convention), A)
        zeta = st.damping_ratio(lam, eta_g, eta_d, kappa, h, convention)
        assert zeta == pytest.approx(lam / lam_c, rel=1e-12)
        assert (np.abs(ref.imag).max() > 0) == (zeta < 1 - 1e-9)  # underdamped iff complex roots
    with pytest.raises(ConfigError, match="convention"):
        st.critical_penalty(1, 1, 1, 1, convention="quarter")


@pytest.mark.parametrize("update", ["alternating", "simultaneous"])
def test_mode_trajectory_iterates_the_scalar_recurrence(update):
    """The 2x2 step matrix equals n_c critic updates then one particle move, written out here
    as scalar loops."""
    lam, eta_g, eta_d, kappa, h, n_c, steps = 0.3, 0.2, 0.05, 0.4, 3.0, 4, 60
    e, v, ref = 1.0, 0.0, [1.0]
    for _ in range(steps):
        e_old, v_old = e, v
        for _ in range(n_c):
            v = v - eta_d * h * ((e_old if update == "simultaneous" else e) + 2 * lam * v)
        e = e_old + eta_g * kappa * (v_old if update == "simultaneous" else v)
        ref.append(e)
    got = st.mode_trajectory(lam, eta_g, eta_d, kappa, h, steps, critic_steps=n_c, update=update)
    assert np.allclose(got, ref, rtol=1e-12, atol=1e-14)


def test_mode_trajectory_tends_to_the_continuous_oscillator():
    """Small steps: the discrete map approaches exp(A t) of linear_system_matrix with
    eta_D -> n_c eta_D (error O(step size))."""
    from scipy.linalg import expm

    lam, kappa, h, n_c = 0.5, 1.0, 2.0, 5
    for scale, tol in ((1e-2, 2e-2), (1e-3, 2e-3)):
        eta_g, eta_d = scale, 0.5 * scale
        steps = int(round(40 / scale))
        e = st.mode_trajectory(lam, eta_g, eta_d, kappa, h, steps, critic_steps=n_c)
        A = st.linear_system_matrix(lam, eta_g, n_c * eta_d, kappa, h)
        t = np.arange(0, steps + 1, steps // 20)
        exact = np.array([expm(A * k)[0, 0] for k in t])
        assert np.max(np.abs(e[t] - exact)) < tol


def test_rbf_curvature_is_mixed_second_derivative_of_kernel():
    sigma, d, step = 0.7, 2, 1e-4
    y = np.array([0.3, -0.2])
    k = lambda x, xp: math.exp(-np.sum((x - xp) ** 2) / (2 * sigma**2))  # noqa: E731
    H = np.zeros((d, d))
    E = np.eye(d) * step
    for i in range(d):
        for j in range(d):
            H[i, j] = (k(y + E[i], y + E[j]) - k(y + E[i], y - E[j]) - k(y - E[i], y + E[j])
                       + k(y - E[i], y - E[j])) / (4 * step * step)
    assert np.allclose(H, st.rbf_curvature(sigma) * np.eye(d), rtol=1e-6, atol=1e-6)


def test_feature_curvature_matrix_equals_jacobian_gram():
    rng = np.random.default_rng(0)
    A, b, y = rng.normal(size=(30, 3)), rng.uniform(-1, 1, 30), rng.normal(size=3) * 0.3
    step = 1e-6
    for act, fn in (("cos", np.cos), ("relu", lambda u: np.maximum(u, 0))):
        psi = lambda x: math.sqrt(2 / 30) * fn(A @ x + b)  # noqa: E731
        J = np.stack([(psi(y + step * e) - psi(y - step * e)) / (2 * step) for e in np.eye(3)], axis=1)
        assert np.allclose(st.feature_curvature_matrix(A, b, y, act), J.T @ J, rtol=1e-5, atol=1e-8)


@pytest.mark.parametrize("activation, bias", [("cos", "uniform_pi"), ("relu", "uniform"), ("relu", "normal")])
def test_random_feature_curvature_monte_carlo(activation, bias):
    """E[J^T J] over feature draws equals h I (h = 1/sigma^2 for RFF and for sqrt(2/K) ReLU features).

    200k features; each entry of the average must lie within 5 Monte-Carlo standard errors
    (estimated from the per-feature terms) of h I.
    """
    rng = np.random.default_rng(42)
    n, d, sigma = 200_000, 3, 0.8
    A = rng.normal(size=(n, d)) / sigma
    b = {"uniform_pi": rng.uniform(-np.pi, np.pi, n), "uniform": rng.uniform(-1.5, 1.5, n) / sigma,
         "normal": rng.normal(size=n)}[bias]
    y = np.array([0.4, -0.7, 1.1])
    H = st.feature_curvature_matrix(A, b, y, activation)
    u = A @ y + b
    w = np.sin(u) ** 2 if activation == "cos" else (u > 0).astype(float)
    terms = 2.0 * w[:, None, None] * A[:, :, None] * A[:, None, :]   # per-feature contributions, times K
    se = terms.std(axis=0) / math.sqrt(n)
    h = st.rff_curvature(sigma) if activation == "cos" else st.relu_feature_curvature(sigma)
    assert h == pytest.approx(1 / sigma**2, rel=1e-14)
    assert np.all(np.abs(H - h * np.eye(d)) < 5 * se)


# --------------------------------------------------------------- plot and CLI ----------------

def test_plot_dispersion_writes_png_atomically(tmp_path):
    from particlegan.plots.plotting_stability import plot_dispersion

    out = tmp_path / "disp.png"
    plot_dispersion(["gaussian:sigma=0.5", ("riesz", {"s": 1.0, "eps": 0.01}), "energy",
                     "distance_induced:beta=1"], np.logspace(-1, 1, 30), out, dim=2, beta=1.5)
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert os.listdir(tmp_path) == ["disp.png"]  # no temporary file left behind
    with pytest.raises(DataError, match="does not exist"):
        plot_dispersion(["gaussian"], [1.0, 2.0], tmp_path / "missing" / "x.png")


def test_dispersion_cli(tmp_path):
    runner = CliRunner()
    out = tmp_path / "d.png"
    res = runner.invoke(main, ["dispersion", "--kernel", "gaussian:sigma=0.3", "--kernel", "riesz",
                               "--dim", "3", "--beta", "2", "--out", str(out)])
    assert res.exit_code == 0, res.output
    assert out.exists() and out.stat().st_size > 0
    bad = runner.invoke(main, ["dispersion", "--kernel", "polynomial", "--out", str(tmp_path / "e.png")])
    assert bad.exit_code == 2
    lines = bad.stderr.strip().splitlines()
    assert len(lines) == 1 and "polynomial" in lines[0] and "Traceback" not in bad.output
