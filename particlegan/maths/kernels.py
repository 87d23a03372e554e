"""Kernel library: kernel specifications and the numpy reference formulas.

A kernel is described by an immutable, hashable :class:`KernelSpec` built with :func:`make_kernel`.
The numpy functions here are the *reference* (oracle) implementation; the fast backends in
:mod:`particlegan.backends` must agree with them.

Every kernel is written as a function of three scalars of a pair (a, b) of points in R^d,

    r2 = ||a - b||^2,   ab = <a, b>,   aa = ||a - x0||^2,  bb = ||b - x0||^2

(x0 an anchor, the origin unless the kernel has one), so that the gradient in the first argument is

    grad_1 k(a, b) = 2 dk/dr2 (a - b) + dk/dab b + 2 dk/daa (a - x0).            (G)

Kernels (losses-metrics-optim-spec P1.3 and P1.10; effective-gan-spec B2 and B6.1):

==================  ==========================================================================
gaussian            k = exp(-r2 / (2 sigma^2))
gaussian_mixture    k = sum_s w_s exp(-r2 / (2 sigma_s^2))
rq                  k = sum_a w_a (1 + r2 / (2 alpha))^(-alpha) + c_dot <a, b>
distance            k = ||a - x0||_e + ||b - x0||_e - ||a - b||_e,  ||v||_e = sqrt(||v||^2 + eps^2)
energy              the distance kernel with x0 = 0 (MMD^2 with it is the energy distance)
distance_induced    k = ||a - z||^(2 beta) + ||b - z||^(2 beta) - ||a - b||^(2 beta), 0 < beta <= 1
riesz               k = (r2 + eps^2)^(-s/2)   (elastic-interaction / EIEG kernel)
polynomial          k = (gamma <a, b> + coef0)^degree   (KID kernel; gamma = 1/d by default)
linear              k = <a, b>
imq                 k = (c^2 + r2)^(-beta)
==================  ==========================================================================

Where a norm is not differentiable (||a - b|| at a = b with eps = 0, or ||.||^(2 beta) at 0 with
beta < 1) its gradient is taken as 0.

Also here: the closed-form NTK and NNGP of a one-hidden-layer network on latent codes
(ecosystem-anchors section 3), used by the generator coupling.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from particlegan.errors import ConfigError, DataError
from particlegan.store import checks
from particlegan.store.checks import require

# ------------------------------------------------------------------------------ specs ------

# name -> (parameter defaults; REQUIRED marks parameters without a default)
REQUIRED = object()
_PARAM_DEFAULTS: dict[str, dict[str, Any]] = {
    "gaussian": {"sigma": REQUIRED},
    "gaussian_mixture": {"sigmas": REQUIRED, "weights": None},
    "rq": {"alphas": (0.2, 0.5, 1.0, 2.0, 5.0), "weights": None, "c_dot": 0.0},
    "distance": {"x0": None, "eps": 0.0},
    "energy": {"eps": 0.0},
    "distance_induced": {"beta": REQUIRED, "z": None},
    "riesz": {"s": REQUIRED, "eps": REQUIRED},
    "polynomial": {"degree": 3, "gamma": None, "coef0": 1.0},
    "linear": {},
    "imq": {"c": REQUIRED, "beta": 0.5},
}
KERNEL_NAMES = tuple(_PARAM_DEFAULTS)

# kernels that need the anchored squared norms aa, bb (anchor parameter name)
ANCHORED = {"distance": "x0", "energy": None, "distance_induced": "z"}


@dataclass(frozen=True)
class KernelSpec:
    """An immutable, hashable kernel description.

    Attributes
    ----------
    name : kernel name, one of :data:`KERNEL_NAMES`.
    params : tuple of (key, value) pairs, sorted by key; sequences are stored as tuples of float.

    Parameters are read with ``spec.get("sigma")`` or as attributes, ``spec.sigma``.
    """

    name: str
    params: tuple

    def get(self, key: str, default=None):
        """Value of parameter ``key`` (``default`` if the kernel has no such parameter)."""
        for k, v in self.params:
            if k == key:
                return v
        return default

    def as_dict(self) -> dict:
        """Parameters as a plain dict."""
        return dict(self.params)

    def __getattr__(self, key):
        # only reached for names that are not dataclass fields
        for k, v in object.__getattribute__(self, "params"):
            if k == key:
                return v
        raise AttributeError(f"kernel '{self.name}' has no parameter '{key}'")


def _param(name, key) -> str:
    return f"kernel '{name}' parameter {key}"


def _positive(name, key, value):
    return float(require(_param(name, key), value, checks.real, checks.finite, checks.positive))


def _finite(name, key, value, nonneg=False):
    return float(require(_param(name, key), value, checks.real, checks.finite, *([checks.nonneg] if nonneg else [])))


def _float_tuple(name, key, value, positive):
    if np.isscalar(value):
        value = (value,)
    try:
        vals = list(value)
    except TypeError:
        raise ConfigError(f"{_param(name, key)} must be a sequence of numbers, got {value!r}") from None
    one, what = (checks.all_of(checks.finite, checks.positive), "finite numbers > 0") if positive \
        else (checks.finite, "finite numbers")
    require(_param(name, key), vals, checks.each(one, what, nonempty=True))
    return tuple(float(v) for v in vals)


def _point(name, key, value):
    if value is None:
        return None
    vals = _float_tuple(name, key, value, positive=False)
    return vals


def make_kernel(name: str, **params) -> KernelSpec:
    """Build a validated :class:`KernelSpec`.

    Parameters
    ----------
    name : one of :data:`KERNEL_NAMES` (see the module docstring for formulas).
    **params : kernel parameters; missing ones take their defaults.

    Raises
    ------
    ConfigError
        Unknown kernel or parameter, missing required parameter, or invalid value (the message
        names the parameter).
    """
    if name not in _PARAM_DEFAULTS:
        raise ConfigError(f"unknown kernel '{name}'; choose one of {', '.join(KERNEL_NAMES)}")
    defaults = _PARAM_DEFAULTS[name]
    for key in params:
        if key not in defaults:
            known = ", ".join(defaults) or "none"
            raise ConfigError(f"kernel '{name}' has no parameter '{key}' (parameters: {known})")
    merged = {k: params.get(k, v) for k, v in defaults.items()}
    for key, value in merged.items():
        if value is REQUIRED:
            raise ConfigError(f"kernel '{name}' needs parameter {key}")

    out: dict[str, Any] = {}
    if name == "gaussian":
        out["sigma"] = _positive(name, "sigma", merged["sigma"])
    elif name in ("gaussian_mixture", "rq"):
        key = "sigmas" if name == "gaussian_mixture" else "alphas"
        scales = _float_tuple(name, key, merged[key], positive=True)
        weights = merged["weights"]
        weights = (1.0,) * len(scales) if weights is None else _float_tuple(name, "weights", weights, False)
        if len(weights) != len(scales):
            raise ConfigError(f"kernel '{name}' parameter weights has {len(weights)} entries "
                              f"but {key} has {len(scales)}")
        out[key] = scales
        out["weights"] = weights
        if name == "rq":
            out["c_dot"] = _finite(name, "c_dot", merged["c_dot"])
    elif name in ("distance", "energy"):
        out["eps"] = _finite(name, "eps", merged["eps"], nonneg=True)
        if name == "distance":
            out["x0"] = _point(name, "x0", merged["x0"])
    elif name == "distance_induced":
        beta = _positive(name, "beta", merged["beta"])
        if beta > 1:
            raise ConfigError(f"kernel 'distance_induced' parameter beta must be in (0, 1], got {beta!r}")
        out["beta"] = beta
        out["z"] = _point(name, "z", merged["z"])
    elif name == "riesz":
        out["s"] = _positive(name, "s", merged["s"])
        out["eps"] = _positive(name, "eps", merged["eps"])
    elif name == "polynomial":
        deg = merged["degree"]
        if isinstance(deg, bool) or not isinstance(deg, (int, np.integer)) or deg < 1:
            raise ConfigError(f"kernel 'polynomial' parameter degree must be an integer >= 1, got {deg!r}")
        out["degree"] = int(deg)
        out["gamma"] = None if merged["gamma"] is None else _positive(name, "gamma", merged["gamma"])
        out["coef0"] = _finite(name, "coef0", merged["coef0"])
    elif name == "imq":
        out["c"] = _positive(name, "c", merged["c"])
        out["beta"] = _positive(name, "beta", merged["beta"])
    return KernelSpec(name, tuple(sorted(out.items())))


def anchor(kernel: KernelSpec, d: int) -> np.ndarray | None:
    """Anchor point (d,) float64 of an anchored kernel (x0 or z; origin if None), else None.

    Raises ConfigError if the anchor's length is not d.
    """
    if kernel.name not in ANCHORED:
        return None
    key = ANCHORED[kernel.name]
    value = kernel.get(key) if key else None
    if value is None:
        return np.zeros(d)
    if len(value) != d:
        raise ConfigError(f"kernel '{kernel.name}' parameter {key} has {len(value)} coordinates "
                          f"but the points have d={d}")
    return np.asarray(value, dtype=np.float64)


def polynomial_gamma(kernel: KernelSpec, d: int) -> float:
    """gamma of a polynomial kernel, resolving None to 1/d."""
    g = kernel.get("gamma")
    return 1.0 / d if g is None else float(g)


# --------------------------------------------------------------- numpy reference maths ----
def _safe_pow(t: np.ndarray, p: float) -> np.ndarray:
    """t^p for t >= 0, with 0^p := 0 for p < 0 (only used where it is multiplied by 0 anyway)."""
    with np.errstate(divide="ignore", invalid="ignore"):
        out = np.power(t, p)
    return np.where(t > 0, out, 1.0 if p == 0 else 0.0)


def kernel_parts(kernel: KernelSpec, r2, ab, aa, bb, d: int):
    """Kernel value and its partial derivatives from the pair scalars (numpy reference, float64).

    Parameters
    ----------
    kernel : the kernel.
    r2, ab, aa, bb : broadcastable arrays of ||a-b||^2, <a,b>, ||a-x0||^2, ||b-x0||^2 (aa, bb only
        read by anchored kernels; pass 0 otherwise).
    d : dimension of the points (resolves defaults such as polynomial gamma = 1/d).

    Returns
    -------
    k, dk_dr2, dk_dab, dk_daa : arrays (broadcast shape, or scalars 0 where a term is absent), so
        that grad_1 k = 2 dk_dr2 (a - b) + dk_dab b + 2 dk_daa (a - x0)   (equation G).
    """
    r2 = np.maximum(np.asarray(r2, dtype=np.float64), 0.0)
    ab = np.asarray(ab, dtype=np.float64)
    name = kernel.name
    zero = np.zeros(())
    if name in ("gaussian", "gaussian_mixture"):
        sigmas = (kernel.sigma,) if name == "gaussian" else kernel.sigmas
        weights = (1.0,) if name == "gaussian" else kernel.weights
        k = np.zeros(np.shape(r2))
        dk = np.zeros(np.shape(r2))
        for s, w in zip(sigmas, weights):
            e = np.exp(-r2 / (2.0 * s * s))
            k += w * e
            dk -= w * e / (2.0 * s * s)
        return k, dk, zero, zero
    if name == "rq":
        k = np.zeros(np.shape(r2))
        dk = np.zeros(np.shape(r2))
        for a, w in zip(kernel.alphas, kernel.weights):
            base = 1.0 + r2 / (2.0 * a)
            k += w * base ** (-a)
            dk -= 0.5 * w * base ** (-a - 1.0)
        c = kernel.c_dot
        return k + c * ab, dk, np.full(np.shape(ab), c), zero
    if name in ("distance", "energy"):
        e2 = kernel.eps ** 2
        na = np.sqrt(np.asarray(aa, dtype=np.float64) + e2)
        nb = np.sqrt(np.asarray(bb, dtype=np.float64) + e2)
        nr = np.sqrt(r2 + e2)
        with np.errstate(divide="ignore"):
            dk_r2 = np.where(nr > 0, -0.5 / np.where(nr > 0, nr, 1.0), 0.0)
            dk_aa = np.where(na > 0, 0.5 / np.where(na > 0, na, 1.0), 0.0)
        return na + nb - nr, dk_r2, zero, dk_aa
    if name == "distance_induced":
        beta = kernel.beta
        aa = np.asarray(aa, dtype=np.float64)
        bb = np.asarray(bb, dtype=np.float64)
        k = _safe_pow(aa, beta) + _safe_pow(bb, beta) - _safe_pow(r2, beta)
        return k, -beta * _safe_pow(r2, beta - 1.0), zero, beta * _safe_pow(aa, beta - 1.0)
    if name == "riesz":
        t = r2 + kernel.eps ** 2
        h = -0.5 * kernel.s
        k = 1.0 / np.sqrt(t) if kernel.s == 1.0 else t ** h  # a square root is ~10x cheaper than pow
        return k, h * k / t, zero, zero  # t^(h-1) = t^h / t: one power per pair (t >= eps^2 > 0)
    if name == "polynomial":
        g = polynomial_gamma(kernel, d)
        deg = kernel.degree
        base = g * ab + kernel.coef0
        return base ** deg, zero, deg * g * base ** (deg - 1), zero
    if name == "linear":
        return ab, zero, np.ones(np.shape(ab)), zero
    if name == "imq":
        t = kernel.c ** 2 + r2
        return t ** (-kernel.beta), -kernel.beta * t ** (-kernel.beta - 1.0), zero, zero
    raise ConfigError(f"unknown kernel '{name}'")


def _as_points(X, what: str) -> np.ndarray:
    X = np.asarray(X)
    if X.ndim != 2:
        raise DataError(f"{what} must be a 2-d array (n, d), got shape {X.shape}")
    return X


def _pair_scalars(X: np.ndarray, Y: np.ndarray, kernel: KernelSpec):
    """r2, ab (n, m) by direct differences, and anchored norms aa (n, 1), bb (1, m); float64."""
    X = X.astype(np.float64, copy=False)
    Y = Y.astype(np.float64, copy=False)
    diff = X[:, None, :] - Y[None, :, :]
    r2 = np.einsum("ijk,ijk->ij", diff, diff)
    ab = X @ Y.T
    x0 = anchor(kernel, X.shape[1])
    if x0 is None:
        return r2, ab, 0.0, 0.0, diff, None
    aa = ((X - x0) ** 2).sum(axis=1)[:, None]
    bb = ((Y - x0) ** 2).sum(axis=1)[None, :]
    return r2, ab, aa, bb, diff, x0


def kernel_matrix(X, Y, kernel: KernelSpec) -> np.ndarray:
    """Reference Gram matrix K[i, j] = k(x_i, y_j).

    Parameters
    ----------
    X : (n, d) points.  Y : (m, d) points.  kernel : the kernel.

    Returns
    -------
    K : (n, m) float64.  Uses O(n m d) memory: for tests and small problems.
    """
    X, Y = _as_points(X, "X"), _as_points(Y, "Y")
    r2, ab, aa, bb, _, _ = _pair_scalars(X, Y, kernel)
    k = kernel_parts(kernel, r2, ab, aa, bb, X.shape[1])[0]
    return np.broadcast_to(k, r2.shape).copy()


def kernel_grad_matrix(X, Y, kernel: KernelSpec) -> np.ndarray:
    """Reference gradients G[i, j] = grad_1 k(x_i, y_j) (equation G).

    Returns
    -------
    G : (n, m, d) float64.  O(n m d) memory: for tests and small problems.
    """
    X, Y = _as_points(X, "X"), _as_points(Y, "Y")
    r2, ab, aa, bb, diff, x0 = _pair_scalars(X, Y, kernel)
    _, k_r2, k_ab, k_aa = kernel_parts(kernel, r2, ab, aa, bb, X.shape[1])
    shape = r2.shape
    k_r2, k_ab, k_aa = (np.broadcast_to(t, shape) for t in (k_r2, k_ab, k_aa))
    Y64 = Y.astype(np.float64, copy=False)
    g = 2.0 * k_r2[..., None] * diff + k_ab[..., None] * Y64[None, :, :]
    if x0 is not None:
        g = g + 2.0 * k_aa[..., None] * (X.astype(np.float64) - x0)[:, None, :]
    return g


def kernel_diag(X, kernel: KernelSpec) -> np.ndarray:
    """Diagonal k(x_i, x_i), shape (n,), in X's float dtype (float64 for non-float input)."""
    X = _as_points(X, "X")
    dtype = X.dtype if X.dtype in (np.float32, np.float64) else np.float64
    X64 = X.astype(np.float64, copy=False)
    n, d = X64.shape
    ab = (X64 * X64).sum(axis=1)
    x0 = anchor(kernel, d)
    aa = 0.0 if x0 is None else ((X64 - x0) ** 2).sum(axis=1)
    k = kernel_parts(kernel, np.zeros(n), ab, aa, aa, d)[0]
    return np.broadcast_to(k, (n,)).astype(dtype)


# ------------------------------------------------------------------------------ NTK --------
NTK_KINDS = ("relu", "erf")
RELU_COS_SNAP = 16  # ulps (of the compute dtype) below 1 within which a relu NTK cosine is set to 1


def _check_ntk_args(Z1, Z2, kind, sigma_w, sigma_b):
    if kind not in NTK_KINDS:
        raise ConfigError(f"unknown NTK kind '{kind}'; choose relu or erf")
    if not (math.isfinite(sigma_w) and sigma_w > 0):
        raise ConfigError(f"NTK sigma_w must be > 0, got {sigma_w!r}")
    if not (math.isfinite(sigma_b) and sigma_b >= 0):
        raise ConfigError(f"NTK sigma_b must be >= 0, got {sigma_b!r}")
    Z1, Z2 = _as_points(Z1, "Z1"), _as_points(Z2, "Z2")
    if Z1.shape[1] != Z2.shape[1]:
        raise DataError(f"latent codes have different dimensions: {Z1.shape[1]} and {Z2.shape[1]}")
    return Z1.astype(np.float64, copy=False), Z2.astype(np.float64, copy=False)


def _ntk_parts(Z1, Z2, kind, sigma_w, sigma_b):
    """Sigma1 (n, m) and the activation expectations Sigma_hat, Sigma_dot (n, m)."""
    dz = Z1.shape[1]
    sw2, sb2 = sigma_w ** 2, sigma_b ** 2
    s1 = sw2 * (Z1 @ Z2.T) / dz + sb2
    q1 = sw2 * (Z1 * Z1).sum(axis=1) / dz + sb2
    q2 = sw2 * (Z2 * Z2).sum(axis=1) / dz + sb2
    if kind == "relu":
        qq = np.sqrt(q1[:, None] * q2[None, :])
        with np.errstate(divide="ignore", invalid="ignore"):
            cos = np.where(qq > 0, s1 / np.where(qq > 0, qq, 1.0), 0.0)
        # Theta is not smooth at theta = 0 (Sigma_dot ~ pi - theta, theta ~ sqrt(2(1 - cos))): a cosine
        # a few ulps below 1, as rounding leaves it for z = z', would move Theta by ~1e-8. Within
        # RELU_COS_SNAP of 1 the codes are taken as parallel (same snap as pairmath.ntk_entry).
        cos = np.where(cos > 1.0 - RELU_COS_SNAP * np.finfo(np.float64).eps, 1.0, cos)
        theta = np.arccos(np.clip(cos, -1.0, 1.0))
        s_hat = qq / (2 * np.pi) * (np.sin(theta) + (np.pi - theta) * np.cos(theta))
        s_dot = (np.pi - theta) / (2 * np.pi)
    else:
        den = (1.0 + 2.0 * q1)[:, None] * (1.0 + 2.0 * q2)[None, :]
        s_hat = (2 / np.pi) * np.arcsin(np.clip(2.0 * s1 / np.sqrt(den), -1.0, 1.0))
        # den - 4 s1^2 >= 1 by Cauchy-Schwarz; the floor only guards rounding
        s_dot = (4 / np.pi) / np.sqrt(np.maximum(den - 4.0 * s1 * s1, 1.0))
    return s1, s_hat, s_dot


def ntk_matrix(Z1, Z2, kind: str, sigma_w: float = 1.0, sigma_b: float = 0.0) -> np.ndarray:
    """Closed-form NTK of a 1-hidden-layer network f(z) = s_w/sqrt(m) v.phi(s_w W z/sqrt(dz) + s_b b) + s_b b2.

    With Sigma1(z,z') = s_w^2 z.z'/dz + s_b^2, q = Sigma1(z,z), q' = Sigma1(z',z')
    (ecosystem-anchors section 3):

        relu: theta = arccos(Sigma1/sqrt(q q')),  Sigma_hat = sqrt(q q')/(2 pi) [sin theta + (pi - theta) cos theta],
              Sigma_dot = (pi - theta)/(2 pi)
        erf:  Sigma_hat = (2/pi) arcsin(2 Sigma1 / sqrt((1+2q)(1+2q'))),
              Sigma_dot = (4/pi) / sqrt((1+2q)(1+2q') - 4 Sigma1^2)
        Theta = s_w^2 Sigma_hat + s_b^2 + s_w^2 Sigma_dot Sigma1

    Parameters
    ----------
    Z1 : (n, dz) latent codes.  Z2 : (m, dz).  kind : "relu" or "erf".
    sigma_w : weight std s_w > 0.  sigma_b : bias std s_b >= 0.

    Returns
    -------
    Theta : (n, m) float64.
    """
    Z1, Z2 = _check_ntk_args(Z1, Z2, kind, sigma_w, sigma_b)
    s1, s_hat, s_dot = _ntk_parts(Z1, Z2, kind, sigma_w, sigma_b)
    return sigma_w ** 2 * s_hat + sigma_b ** 2 + sigma_w ** 2 * s_dot * s1


def nngp_matrix(Z1, Z2, kind: str, sigma_w: float = 1.0, sigma_b: float = 0.0) -> np.ndarray:
    """Closed-form NNGP kernel K = s_w^2 Sigma_hat + s_b^2 of the network of :func:`ntk_matrix`.

    Returns (n, m) float64.
    """
    Z1, Z2 = _check_ntk_args(Z1, Z2, kind, sigma_w, sigma_b)
    _, s_hat, _ = _ntk_parts(Z1, Z2, kind, sigma_w, sigma_b)
    return sigma_w ** 2 * s_hat + sigma_b ** 2
