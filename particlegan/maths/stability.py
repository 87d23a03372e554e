"""Linear-stability helpers: dispersion relations of particle-based-distance flows and the
critical-damping theory of the effective GAN model.

Part 1 -- Fourier symbols and dispersion relations (effective-gan-spec B2, B4, B6) [derived].
    Convention: K_hat(k) = int_{R^m} K(r) exp(-i k.r) d^m r (angular wavenumber, no 2 pi in the
    exponent), so that (K * f)^ = K_hat f_hat. Linearising the Wasserstein gradient flow
    d_t rho = div(rho grad K*(rho - rho_d)) about a locally uniform density rho0 gives
        d_t drho_hat(k) = -rho0 |k|^2 K_hat(k) drho_hat(k),
    i.e. a generator decay rate r_G(k) = rho0 |k|^2 K_hat(k) (stable where K_hat >= 0). The
    critic (feature-map) ascent flow grows the same mode at +rho0 |k|^2 K_hat(k); with the
    derived self-interaction stabiliser of weight beta the growth rate becomes
    (1 - beta) rho0 |k|^2 K_hat(k), negative for beta > 1 [derived construction, not the
    Chen-Wu-Xiang term, which is unknown; B6.2].

    Symbols are only evaluated at k > 0: the k = 0 mode is the total mass, which the flow
    conserves (int drho = 0), and for conditionally positive definite kernels (energy,
    distance-induced) the symbol is a generalised function whose k = 0 part does not act on
    zero-mass perturbations.

Part 2 -- critical damping (effective-gan-spec A2.4, A2.9) [derived, checked numerically in
    tests]: kernel eigenvalues of the universal generator kernel, time-scale ratio, the damped
    oscillator e'' + gamma e' + omega^2 e = 0 with omega^2 = eta_D eta_G h kappa and
    gamma = 2 lambda eta_D h (penalty lambda E||grad f||^2) or lambda eta_D h (penalty
    (lambda/2) E||grad f||^2), and the discriminator curvature h of RBF / random-feature critics.
"""
from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np
from scipy.special import gammaln, gammasgn, kve

from particlegan.errors import ConfigError
from particlegan.store import checks as ck
from particlegan.maths.kernels import _finite, _positive  # one family of kernel-parameter checks

__all__ = [
    "SYMBOL_KERNELS", "fourier_symbol", "dispersion_relation", "kernel_eigenvalues", "timescale_ratio",
    "critical_penalty", "critical_penalty_ratio", "damping_ratio", "oscillator_eigenvalues",
    "linear_system_matrix", "mode_trajectory", "rbf_curvature", "rff_curvature", "relu_feature_curvature",
    "feature_curvature_matrix",
]

# kernels with a Fourier symbol (translation-invariant part) and their parameter defaults
# (None = required). Names and parameter meanings follow particlegan.maths.kernels.
_SYMBOL_DEFAULTS: dict[str, dict] = {
    "gaussian": {"sigma": 1.0},
    "gaussian_mixture": {"sigmas": None, "weights": None},
    "rq": {"alphas": (0.2, 0.5, 1.0, 2.0, 5.0), "weights": None, "c_dot": 0.0},
    "imq": {"c": None, "beta": 0.5},
    "riesz": {"s": None, "eps": 0.0},  # s None -> m - 1 (B6.1); eps 0 -> pure Riesz |r|^-s
    "energy": {"eps": 0.0},
    "distance": {"eps": 0.0, "x0": None},  # x0 only shifts the witness, not the symbol
    "distance_induced": {"beta": None, "z": None},
}
SYMBOL_KERNELS = tuple(_SYMBOL_DEFAULTS)


# --------------------------------------------------------------------------------------------
# Fourier symbols
# --------------------------------------------------------------------------------------------

def _check_k(k) -> np.ndarray:
    k = np.asarray(k, dtype=np.float64)
    if k.size == 0 or not np.all(np.isfinite(k)) or np.any(k <= 0):
        raise ConfigError("wavenumbers k must be finite and > 0 (the k = 0 mass mode is conserved)")
    return k


def _check_dim(dim) -> int:
    return int(ck.require("dimension dim", dim, ck.integer, ck.at_least(1)))


def gaussian_symbol(k, sigma: float, dim: int) -> np.ndarray:
    """K_hat of K(r) = exp(-|r|^2/(2 sigma^2)) in R^dim: (2 pi sigma^2)^(dim/2) exp(-sigma^2 |k|^2/2).

    Parameters
    ----------
    k : (...) wavenumber magnitudes |k| > 0.  sigma : width > 0.  dim : m.

    Returns
    -------
    (...) array.
    """
    k = np.asarray(k, dtype=np.float64)
    return (2.0 * np.pi * sigma**2) ** (dim / 2.0) * np.exp(-0.5 * sigma**2 * k**2)


def bessel_potential_symbol(k, a: float, eps: float, dim: int, log_scale: float = 0.0) -> np.ndarray:
    """K_hat of K(r) = exp(log_scale) (|r|^2 + eps^2)^(-a) in R^dim, for |k| > 0 [derived; standard transform].

    eps > 0:  K_hat(k) = (2 pi)^(m/2) 2^(1-a) / Gamma(a) (|k|/eps)^(a - m/2) K_{m/2-a}(eps |k|)
    eps = 0:  K_hat(k) = pi^(m/2) 2^(m-2a) Gamma(m/2 - a) / Gamma(a) |k|^(2a - m)   (needs a < m/2)

    K_nu is the modified Bessel function of the second kind. For a <= m/2 (slowly decaying K)
    and for a < 0 (growing K, e.g. a = -1/2: -K is the energy kernel) these are the generalised
    transforms, valid for k != 0. 1/Gamma(a) vanishes at a = 0, -1, -2, ... (polynomial kernels
    have symbols supported at k = 0 only). Evaluated in log space (``log_scale`` is a constant
    prefactor folded in there, e.g. (2 alpha)^alpha of the RQ kernel).

    Parameters
    ----------
    k : (...) |k| > 0.  a : exponent.  eps : regularisation length >= 0.  dim : m.
    log_scale : log of a constant factor multiplying the kernel.

    Returns
    -------
    (...) array.
    """
    k = np.asarray(k, dtype=np.float64)
    m = float(dim)
    if a <= 0 and a == int(a):
        return np.zeros_like(k)  # 1/Gamma(a) = 0: a polynomial in r^2, no symbol away from k = 0
    sign = gammasgn(a)
    log_coef = log_scale - gammaln(a)
    if eps > 0:
        nu = m / 2.0 - a
        # K_nu(z) = kve(nu, z) e^{-z}; combine in log space so that neither factor overflows
        with np.errstate(divide="ignore", over="ignore"):
            log_mag = (log_coef + (m / 2.0) * np.log(2.0 * np.pi) + (1.0 - a) * np.log(2.0)
                       + (a - m / 2.0) * np.log(k / eps) + np.log(kve(nu, eps * k)) - eps * k)
    else:
        if a >= m / 2.0:
            raise ConfigError(f"(|r|^2)^(-{a:g}) is not locally integrable in dimension {dim}: "
                              f"need exponent 2a < dim (or eps > 0)")
        log_mag = (log_coef + (m / 2.0) * np.log(np.pi) + (m - 2.0 * a) * np.log(2.0)
                   + gammaln(m / 2.0 - a) + (2.0 * a - m) * np.log(k))
    with np.errstate(over="ignore"):
        out = sign * np.exp(log_mag)
    if not np.all(np.isfinite(out)):
        raise ConfigError(f"Fourier symbol overflows for exponent {a:g}, eps {eps:g} at these k "
                          f"(use a Gaussian for very large RQ alphas)")
    return out


def _params(name: str, dim: int, given: Mapping) -> dict:
    if name not in _SYMBOL_DEFAULTS:
        raise ConfigError(f"kernel '{name}' has no Fourier symbol here; choose one of {', '.join(SYMBOL_KERNELS)} "
                          f"(polynomial and linear kernels are not translation invariant)")
    defaults = _SYMBOL_DEFAULTS[name]
    unknown = set(given) - set(defaults)
    if unknown:
        raise ConfigError(f"kernel '{name}' has no parameter(s) {', '.join(sorted(unknown))} "
                          f"(parameters: {', '.join(defaults)})")
    p = {**defaults, **{k: v for k, v in given.items()}}
    if name == "riesz" and p["s"] is None:
        p["s"] = dim - 1.0  # B6.1 default s = m - 1
    for key, value in p.items():
        if value is None and key not in ("weights", "x0", "z"):
            raise ConfigError(f"kernel '{name}' needs parameter {key}")
    return p


def _nonneg(name, key, v):
    return _finite(name, key, v, nonneg=True)


def _scales_weights(name, key, p):
    scales = np.atleast_1d(np.asarray(p[key], dtype=np.float64))
    if scales.ndim != 1 or scales.size == 0 or not np.all(np.isfinite(scales)) or np.any(scales <= 0):
        raise ConfigError(f"kernel '{name}' parameter {key} must be a non-empty list of numbers > 0")
    w = np.ones_like(scales) if p["weights"] is None else np.atleast_1d(np.asarray(p["weights"], dtype=np.float64))
    if w.shape != scales.shape or not np.all(np.isfinite(w)):
        raise ConfigError(f"kernel '{name}' parameter weights must be {scales.size} finite numbers")
    return scales, w


def fourier_symbol(kernel, k, dim: int = 2, **params) -> np.ndarray:
    """Fourier symbol K_hat(|k|) of a translation-invariant kernel in R^dim (B2) [derived].

    Convention K_hat(k) = int K(r) exp(-i k.r) d^m r. Kernels (r = u - v, m = dim):

    ================  ==============================================  ===========================
    gaussian          exp(-r^2/(2 sigma^2))                           (2 pi sigma^2)^(m/2) e^{-sigma^2 k^2/2}
    gaussian_mixture  sum_s w_s exp(-r^2/(2 sigma_s^2))               sum of the above
    rq                sum_a w_a (1 + r^2/(2 alpha))^(-alpha)          sum_a w_a (2 alpha)^alpha B(alpha, sqrt(2 alpha))
    imq               (c^2 + r^2)^(-beta)                             B(beta, c)
    riesz             (r^2 + eps^2)^(-s/2), s default m-1 (B6.1)      B(s/2, eps); eps = 0: prop. |k|^(s-m) (0 < s < m)
    energy/distance   -(r^2 + eps^2)^(1/2) (translation-invariant     -B(-1/2, eps); eps = 0:
                      part of ||a-x0|| + ||b-x0|| - ||a-b||)          2^m pi^((m-1)/2) Gamma((m+1)/2) |k|^-(m+1)
    distance_induced  -|r|^(2 beta), 0 < beta <= 1                   -B(-beta, 0) prop. |k|^-(m+2 beta) (0 at beta = 1)
    ================  ==============================================  ===========================

    B(a, eps) is :func:`bessel_potential_symbol`. Sign convention: the energy and
    distance-induced kernels are only conditionally positive definite; their generalised symbols
    (valid on zero-mass perturbations, k != 0) are positive with the minus signs above, i.e. the
    anchor terms ||a-x0|| + ||b-x0|| (symbol supported at k = 0) are dropped. The RQ linear term
    c_dot <a, b> has no symbol (c_dot must be 0).

    Parameters
    ----------
    kernel : kernel name (see ``SYMBOL_KERNELS``) or a :class:`particlegan.maths.kernels.KernelSpec`.
    k : (...) wavenumber magnitudes > 0.
    dim : feature-space dimension m.
    **params : kernel parameters (names as in :func:`particlegan.maths.kernels.make_kernel`).

    Returns
    -------
    (...) float64 array.
    """
    if hasattr(kernel, "name") and hasattr(kernel, "as_dict"):  # a KernelSpec
        if params:
            raise ConfigError("pass kernel parameters either in the KernelSpec or as keywords, not both")
        name, params = kernel.name, kernel.as_dict()
    else:
        name = str(kernel)
    dim = _check_dim(dim)
    k = _check_k(k)
    p = _params(name, dim, params)
    if name == "gaussian":
        return gaussian_symbol(k, _positive(name, "sigma", p["sigma"]), dim)
    if name == "gaussian_mixture":
        sigmas, w = _scales_weights(name, "sigmas", p)
        return sum(wi * gaussian_symbol(k, s, dim) for s, wi in zip(sigmas, w))
    if name == "rq":
        if float(p["c_dot"]) != 0.0:
            raise ConfigError("kernel 'rq' parameter c_dot must be 0 here: the linear term <a, b> has no Fourier symbol")
        alphas, w = _scales_weights(name, "alphas", p)
        # (1 + r^2/(2 alpha))^(-alpha) = (2 alpha)^alpha (r^2 + 2 alpha)^(-alpha)
        return sum(wi * bessel_potential_symbol(k, al, math.sqrt(2.0 * al), dim,
                                                log_scale=al * math.log(2.0 * al))
                   for al, wi in zip(alphas, w))
    if name == "imq":
        return bessel_potential_symbol(k, _positive(name, "beta", p["beta"]), _positive(name, "c", p["c"]), dim)
    if name == "riesz":
        s = _positive(name, "s", p["s"])
        eps = _nonneg(name, "eps", p["eps"])
        if eps == 0 and s >= dim:
            raise ConfigError(f"kernel 'riesz' with eps = 0 needs 0 < s < dim = {dim}, got s = {s:g}")
        return bessel_potential_symbol(k, 0.5 * s, eps, dim)
    if name in ("energy", "distance"):
        return -bessel_potential_symbol(k, -0.5, _nonneg(name, "eps", p["eps"]), dim)
    # distance_induced
    beta = float(ck.require("kernel 'distance_induced' parameter beta", p["beta"], ck.real, ck.unit_open_closed))
    return -bessel_potential_symbol(k, -beta, 0.0, dim) + 0.0  # + 0.0 turns -0 (beta = 1) into 0


def dispersion_relation(kernel_name, k, rho0: float = 1.0, dim: int = 2, beta: float = 0.0,
                        kernel_params: Mapping | None = None, **params) -> dict:
    """Linear growth/decay rates of density perturbations for a particle-based-distance GAN (B2) [derived].

    generator decay rate   r_G(k) = rho0 |k|^2 K_hat(k)                 (stable where K_hat >= 0)
    critic growth rate     r_D(k) = (1 - beta) rho0 |k|^2 K_hat(k)      (> 0: discriminator unstable)

    beta is the weight of the derived self-interaction stabiliser -beta * 1/2 iint K rho_d rho_d
    added to the critic objective [derived construction, not the paper's term]; the critic
    growth becomes negative for beta > 1.

    Parameters
    ----------
    kernel_name : name or KernelSpec (see :func:`fourier_symbol`).
    k : (n,) wavenumbers > 0.
    rho0 : background density > 0.
    dim : feature-space dimension m.
    beta : stabiliser weight >= 0.
    kernel_params : kernel parameters as a dict; needed for parameters whose name clashes with
        the arguments above (``beta`` of distance_induced and imq). Merged with ``**params``.
    **params : kernel parameters.

    Returns
    -------
    dict with "k" (n,), "symbol" K_hat (n,), "generator_decay_rate" (n,),
    "critic_growth_rate" (n,), and "kernel", "dim", "rho0", "beta".
    """
    ck.require("rho0", rho0, ck.finite, ck.positive)
    ck.require("stabiliser beta", beta, ck.finite, ck.nonneg)
    k = _check_k(k)
    all_params = {**(kernel_params or {}), **params}
    symbol = fourier_symbol(kernel_name, k, dim, **all_params)
    r_g = rho0 * k**2 * symbol
    name = kernel_name.name if hasattr(kernel_name, "name") else str(kernel_name)
    return {"k": k, "symbol": symbol, "generator_decay_rate": r_g, "critic_growth_rate": (1.0 - beta) * r_g,
            "kernel": name, "dim": int(dim), "rho0": float(rho0), "beta": float(beta)}


# --------------------------------------------------------------------------------------------
# critical damping of the effective model (A2.4, A2.9) [derived]
# --------------------------------------------------------------------------------------------

_CONVENTIONS = {"lambda": 2.0, "half_lambda": 1.0}  # gamma = c * lambda * eta_D * h


def _damping_factor(convention: str) -> float:
    try:
        return _CONVENTIONS[convention]
    except KeyError:
        raise ConfigError(f"penalty convention must be 'lambda' (lambda E||grad f||^2) or 'half_lambda' "
                          f"((lambda/2) E||grad f||^2), got {convention!r}") from None


def _check_rates(**values):
    for key, v in values.items():
        ck.require(key, v, ck.finite, ck.positive)


def _check_n(n) -> int:
    return int(ck.require("number of particles n", n, ck.integer, ck.at_least(1)))


def kernel_eigenvalues(g1: float, g2: float, n: int) -> tuple[float, float]:
    """Eigenvalues of the universal generator kernel K = (g1 - g2) I + g2 1 1^T (A2.4).

    Parameters
    ----------
    g1, g2 : same-particle and cross-particle kernel values.  n : number of particles N.

    Returns
    -------
    (centre_of_mass, relative) = (g1 + (N-1) g2, g1 - g2); the relative one has multiplicity
    N - 1. The per-mode rates of A2.9 are kappa_a = eigenvalue / N (NTK normalisation).
    """
    n = _check_n(n)
    return float(g1 + (n - 1) * g2), float(g1 - g2)


def timescale_ratio(phi, n: int):
    """Relative-to-collective time-scale ratio (1 - phi) / (1 + (N-1) phi), phi = g2/g1 (A2.4, A6.1)."""
    n = _check_n(n)
    phi = np.asarray(phi, dtype=np.float64)
    out = (1.0 - phi) / (1.0 + (n - 1) * phi)
    return float(out) if out.ndim == 0 else out


def critical_penalty(eta_g: float, eta_d: float, kappa: float, h: float, convention: str = "lambda") -> float:
    """Critical gradient-penalty strength lambda_c (A2.9) [derived].

    lambda_c = sqrt(eta_G kappa / (eta_D h)) for the penalty lambda E||grad f||^2 ("lambda");
    twice that for (lambda/2) E||grad f||^2 ("half_lambda").

    Parameters
    ----------
    eta_g, eta_d : generator and critic learning rates.  kappa : mode rate kappa_a (kernel
    eigenvalue / N).  h : discriminator curvature.  convention : "lambda" or "half_lambda".
    """
    c = _damping_factor(convention)
    _check_rates(eta_g=eta_g, eta_d=eta_d, kappa=kappa, h=h)
    return float((2.0 / c) * math.sqrt(eta_g * kappa / (eta_d * h)))


def critical_penalty_ratio(phi: float, n: int) -> float:
    """lambda_c,cm / lambda_c,rel = sqrt((1 + (N-1) phi) / (1 - phi)) (A2.9 prediction, inferred)."""
    r = timescale_ratio(phi, n)
    if not r > 0:
        raise ConfigError(f"phi must be < 1 for a finite ratio, got {phi!r}")
    return float(1.0 / math.sqrt(r))


def damping_ratio(lam, eta_g: float, eta_d: float, kappa: float, h: float, convention: str = "lambda"):
    """Damping ratio zeta = gamma / (2 omega) = lam / lambda_c (A2.9) [derived].

    omega^2 = eta_D eta_G h kappa; gamma = 2 lam eta_D h ("lambda") or lam eta_D h ("half_lambda");
    zeta = 1 is critical damping.
    """
    c = _damping_factor(convention)
    _check_rates(eta_g=eta_g, eta_d=eta_d, kappa=kappa, h=h)
    lam = np.asarray(lam, dtype=np.float64)
    out = c * lam * eta_d * h / (2.0 * np.sqrt(eta_d * eta_g * h * kappa))
    return float(out) if out.ndim == 0 else out


def oscillator_eigenvalues(lam: float, eta_g: float, eta_d: float, kappa: float, h: float,
                           convention: str = "lambda") -> np.ndarray:
    """Roots s_+, s_- of s^2 + gamma s + omega^2 = 0 (A2.9, equation A-4) [derived].

    gamma = 2 lam eta_D h ("lambda") or lam eta_D h ("half_lambda"); omega^2 = eta_D eta_G h kappa.
    s_pm = -gamma/2 +- sqrt(gamma^2/4 - omega^2).

    Returns
    -------
    (2,) complex array (s_+, s_-); the slowest decay rate is -max Re s.
    """
    c = _damping_factor(convention)
    _check_rates(eta_g=eta_g, eta_d=eta_d, kappa=kappa, h=h)
    half_gamma = 0.5 * c * lam * eta_d * h
    root = np.sqrt(complex(half_gamma**2 - eta_d * eta_g * h * kappa))
    return np.array([-half_gamma + root, -half_gamma - root])


def linear_system_matrix(lam: float, eta_g: float, eta_d: float, kappa: float, h: float,
                         convention: str = "lambda") -> np.ndarray:
    """(2, 2) matrix A of d(e, v)/dt = A (e, v) for one mode (A2.9) [derived].

    de/dt = eta_G kappa v,  dv/dt = -eta_D h (e + c lam v) with c = 2 ("lambda") or 1 ("half_lambda").
    """
    c = _damping_factor(convention)
    _check_rates(eta_g=eta_g, eta_d=eta_d, kappa=kappa, h=h)
    return np.array([[0.0, eta_g * kappa], [-eta_d * h, -c * lam * eta_d * h]])


def mode_trajectory(lam: float, eta_g: float, eta_d: float, kappa: float, h: float, steps: int,
                    critic_steps: int = 1, convention: str = "lambda",
                    update: str = "alternating") -> np.ndarray:
    """Error e_t / e_0 of one mode under the *discrete* linearised simulator (A2.9) [derived].

    The exact linearisation of :func:`particlegan.engine.dynamics.outer_step` with an SGD critic:
    every outer step first runs ``critic_steps`` critic updates
    ``v <- v - eta_D h (e + c lam v)`` (particles frozen), then moves the particles
    ``e <- e + eta_G kappa v`` with the updated critic ("alternating"; "simultaneous" moves the
    particles with the critic of the start of the step). Starts from (e, v) = (1, 0).  Its
    continuous-time limit is :func:`linear_system_matrix` with eta_D -> critic_steps * eta_D.

    Parameters
    ----------
    lam, eta_g, eta_d, kappa, h, convention : as in :func:`linear_system_matrix`.
    steps : number of outer steps.  critic_steps : critic updates n_c per outer step.

    Returns
    -------
    (steps + 1,) array of e_t for t = 0 .. steps.
    """
    c = _damping_factor(convention)
    _check_rates(eta_g=eta_g, eta_d=eta_d, kappa=kappa, h=h)
    ck.require("update", update, ck.one_of(("alternating", "simultaneous")))
    # one outer step is linear in (e, v): build its 2x2 matrix once
    critic = np.array([[1.0, 0.0], [-eta_d * h, 1.0 - c * lam * eta_d * h]])
    critic_n = np.linalg.matrix_power(critic, int(critic_steps))
    move = np.array([[1.0, eta_g * kappa], [0.0, 1.0]])
    if update == "alternating":
        step = move @ critic_n
    else:  # particles use v of the start of the step, critic trains at the old e
        step = np.array([[1.0, eta_g * kappa], [0.0, 0.0]]) + np.array([[0.0, 0.0], [0.0, 1.0]]) @ critic_n
    out = np.empty(int(steps) + 1)
    state = np.array([1.0, 0.0])
    out[0] = 1.0
    with np.errstate(over="ignore", invalid="ignore"):  # an unstable critic step grows to inf
        for t in range(1, int(steps) + 1):
            state = step @ state
            out[t] = state[0]
    return out


def rbf_curvature(sigma: float) -> float:
    """Discriminator curvature of an RBF critic of width sigma: h = 1/sigma^2 (A2.9).

    H = d_x d_x' k(x, x')|_{x=x'} = I / sigma^2 for k = exp(-|x - x'|^2 / (2 sigma^2)).
    """
    _check_rates(sigma=sigma)
    return 1.0 / sigma**2


def rff_curvature(sigma: float) -> float:
    """Expected curvature of random-Fourier-feature critics: h = 1/sigma^2 [derived].

    psi_k(x) = sqrt(2/K) cos(a_k.x + b_k), a_k ~ N(0, sigma^-2 I), b_k ~ U(-pi, pi):
    H = J_psi^T J_psi = (2/K) sum_k sin^2(a_k.y + b_k) a_k a_k^T and E_b sin^2 = 1/2, so
    E H = E[a a^T] = I / sigma^2 for every y (the RBF value). A finite draw fluctuates around
    it; see :func:`feature_curvature_matrix`.
    """
    return rbf_curvature(sigma)


def relu_feature_curvature(sigma: float, scale_sq_times_k: float = 2.0) -> float:
    """Expected curvature of ReLU random-feature critics [derived].

    psi_k(x) = sqrt(c/K) relu(a_k.x + b_k) with a_k ~ N(0, sigma^-2 I) and b_k drawn independently
    of a_k from any distribution symmetric about 0 (the package's ``relu_features`` critic uses
    c = 2 and b ~ U(-1.5, 1.5)/sigma). Then H = J_psi^T J_psi = (c/K) sum_k 1[u_k > 0] a_k a_k^T
    with u = a.y + b, and
        E[1[u > 0] a a^T] = sigma^-2 I / 2   for every y,
    because (a, b) -> (-a, -b) maps {u > 0} onto {u < 0} and leaves a a^T and the distribution
    unchanged, so each event carries half of E[a a^T] = sigma^-2 I. Hence h = c / (2 sigma^2):
    1/sigma^2 for c = 2, the same as the RBF and RFF critics.

    Parameters
    ----------
    sigma : feature width (a ~ N(0, sigma^-2 I)).
    scale_sq_times_k : c, the squared feature scale times K (2 for sqrt(2/K)).
    """
    _check_rates(sigma=sigma, scale_sq_times_k=scale_sq_times_k)
    return scale_sq_times_k / (2.0 * sigma**2)


def feature_curvature_matrix(A, b, y, activation: str = "cos", scale: float | None = None) -> np.ndarray:
    """Empirical curvature H = J_psi(y)^T J_psi(y) of a random-feature map at a point y (A2.9).

    psi_k(x) = scale * act(a_k.x + b_k), so J_psi[k] = scale * act'(a_k.y + b_k) a_k and
    H = scale^2 sum_k act'(a_k.y + b_k)^2 a_k a_k^T, with act' = -sin for "cos" and
    1[u > 0] for "relu".

    Parameters
    ----------
    A : (K, d) frequencies/weights a_k.  b : (K,) phases/biases.  y : (d,) point.
    activation : "cos" or "relu".  scale : feature scale (default sqrt(2/K)).

    Returns
    -------
    (d, d) array; its eigenvalues are the curvatures h.
    """
    A = np.asarray(A, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    if A.ndim != 2 or b.shape != (A.shape[0],) or y.shape != (A.shape[1],):
        raise ConfigError(f"feature map shapes do not match: A {A.shape}, b {b.shape}, y {y.shape}")
    if scale is None:
        scale = math.sqrt(2.0 / A.shape[0])
    ck.require("activation", activation, ck.one_of(("cos", "relu")))
    u = A @ y + b
    deriv_sq = np.sin(u) ** 2 if activation == "cos" else (u > 0).astype(np.float64)
    return scale**2 * (A * deriv_sq[:, None]).T @ A


def parse_kernel_argument(text: str) -> tuple[str, dict]:
    """Parse ``NAME`` or ``NAME:key=value,key=value`` (lists as ``a/b/c``) into (name, params).

    Used by the ``particlegan dispersion`` command, e.g. ``gaussian:sigma=0.5``,
    ``riesz:s=1,eps=0.01``, ``gaussian_mixture:sigmas=0.5/1/2``.
    """
    name, _, rest = str(text).partition(":")
    name = name.strip()
    if name not in _SYMBOL_DEFAULTS:
        raise ConfigError(f"kernel '{name}' has no Fourier symbol here; choose one of {', '.join(SYMBOL_KERNELS)}")
    params: dict = {}
    for item in filter(None, (s.strip() for s in rest.split(","))):
        key, eq, value = item.partition("=")
        if not eq or not key.strip() or not value.strip():
            raise ConfigError(f"kernel argument '{text}': expected key=value, got '{item}'")
        try:
            parts = [float(v) for v in value.split("/")]
        except ValueError:
            raise ConfigError(f"kernel argument '{text}': value of {key.strip()} must be a number "
                              f"(or numbers separated by '/'), got '{value}'") from None
        params[key.strip()] = parts[0] if len(parts) == 1 else tuple(parts)
    return name, params
