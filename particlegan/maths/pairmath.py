"""Per-pair maths written once, as small lazily compiled ``@njit`` functions with no signature.

The same functions are called by the CPU drivers (``@njit(parallel=True)`` loops in
:mod:`particlegan.backends.cpu_backend`) and by the ``numba.cuda`` kernels in
:mod:`particlegan.backends.cuda_backend` (numba-cuda compiles CPU dispatchers for the device;
ecosystem-anchors section 2, "Recommended single-source pattern").

Dtype rule: the functions used on the GPU contain **no floating-point literals**. In numba a
float32 value times a Python float (or int) literal is promoted to float64, which would make a
float32 GPU kernel run at float64 speed. Constants therefore come from the parameter array ``p``
(built by :func:`encode_kernel` / :func:`encode_ntk` in the compute dtype), whose first slots hold
0, 1, 1/2, 2 and pi. :func:`poly_exp` is the exception: it is float64-only (CPU).

Kernel encoding (``code``, ``p``, ``mix``); r2 = ||a-b||^2, ab = <a,b>, aa/bb = ||a-x0||^2, ||b-x0||^2:

=============  ==========================================  =====================================
code           p[P_K:]                                     mix (3, S) rows
=============  ==========================================  =====================================
GAUSS_MIX      --                                          1/(2 sigma_s^2), unused, w_s
RQ             c_dot                                       alpha_a, 1/(2 alpha_a), w_a
DISTANCE       eps^2                                       --
DIST_INDUCED   beta                                        --
RIESZ          eps^2, -s/2                                 --
POLYNOMIAL     gamma, coef0, degree                        --
LINEAR         --                                          --
IMQ            c^2, -beta                                  --
=============  ==========================================  =====================================
"""
from __future__ import annotations

import math

import numpy as np

from particlegan.numba_setup import configure as _configure_numba

_configure_numba()  # this module imports numba first: apply the vector width and thread wait before
from numba import njit  # noqa: E402
from numba import types as _nbtypes  # noqa: E402
from numba.extending import overload as _overload  # noqa: E402

from particlegan.errors import ConfigError  # noqa: E402
from particlegan.maths.kernels import RELU_COS_SNAP, KernelSpec, polynomial_gamma  # noqa: E402

# slots of the parameter array p
P_ZERO, P_ONE, P_HALF, P_TWO, P_PI, P_K = 0, 1, 2, 3, 4, 5
P_SIZE = P_K + 4

# kernel codes
GAUSS_MIX, RQ, DISTANCE, DIST_INDUCED, RIESZ, POLYNOMIAL, LINEAR, IMQ = range(8)
_CODES = {"gaussian": GAUSS_MIX, "gaussian_mixture": GAUSS_MIX, "rq": RQ, "distance": DISTANCE,
          "energy": DISTANCE, "distance_induced": DIST_INDUCED, "riesz": RIESZ, "polynomial": POLYNOMIAL,
          "linear": LINEAR, "imq": IMQ}

# NTK kinds and their p slots (after the common constants)
NTK_RELU, NTK_ERF = 0, 1
N_SW2, N_SB2, N_INV_DZ, N_COS_SNAP = P_K, P_K + 1, P_K + 2, P_K + 3


def encode_kernel(kernel: KernelSpec, d: int, dtype=np.float64):
    """Kernel code, parameter array p (P_SIZE,) and mixture table mix (3, S) in ``dtype``.

    The anchor (x0 / z) is not encoded: drivers pass the anchored squared norms aa, bb.
    """
    if kernel.name not in _CODES:
        raise ConfigError(f"unknown kernel '{kernel.name}'")
    code = _CODES[kernel.name]
    p = np.zeros(P_SIZE)
    p[P_ONE], p[P_HALF], p[P_TWO], p[P_PI] = 1.0, 0.5, 2.0, math.pi
    mix = np.zeros((3, 1))
    if code == GAUSS_MIX:
        sigmas = (kernel.sigma,) if kernel.name == "gaussian" else kernel.sigmas
        weights = (1.0,) if kernel.name == "gaussian" else kernel.weights
        s = np.asarray(sigmas, dtype=np.float64)
        mix = np.stack([1.0 / (2.0 * s * s), np.zeros_like(s), np.asarray(weights, dtype=np.float64)])
    elif code == RQ:
        a = np.asarray(kernel.alphas, dtype=np.float64)
        mix = np.stack([a, 1.0 / (2.0 * a), np.asarray(kernel.weights, dtype=np.float64)])
        p[P_K] = kernel.c_dot
    elif code == DISTANCE:
        p[P_K] = kernel.eps ** 2
    elif code == DIST_INDUCED:
        p[P_K] = kernel.beta
    elif code == RIESZ:
        p[P_K], p[P_K + 1] = kernel.eps ** 2, -0.5 * kernel.s
    elif code == POLYNOMIAL:
        p[P_K], p[P_K + 1], p[P_K + 2] = polynomial_gamma(kernel, d), kernel.coef0, kernel.degree
    elif code == IMQ:
        p[P_K], p[P_K + 1] = kernel.c ** 2, -kernel.beta
    return code, p.astype(dtype), np.ascontiguousarray(mix, dtype=dtype)


def encode_ntk(kind: str, sigma_w: float, sigma_b: float, dz: int, dtype=np.float64):
    """NTK kind code and parameter array p in ``dtype``: constants, sigma_w^2, sigma_b^2, 1/dz and
    the relu cosine snap threshold 1 - RELU_COS_SNAP eps(dtype) (see :func:`ntk_entry`)."""
    if kind not in ("relu", "erf"):
        raise ConfigError(f"unknown NTK kind '{kind}'; choose relu or erf")
    p = np.zeros(P_SIZE)
    p[P_ONE], p[P_HALF], p[P_TWO], p[P_PI] = 1.0, 0.5, 2.0, math.pi
    p[N_SW2], p[N_SB2], p[N_INV_DZ] = sigma_w ** 2, sigma_b ** 2, 1.0 / dz
    p[N_COS_SNAP] = 1.0 - RELU_COS_SNAP * float(np.finfo(dtype).eps)
    return (NTK_RELU if kind == "relu" else NTK_ERF), p.astype(dtype)


# ------------------------------------------------------------------------ per-pair maths ----
@njit
def gauss_mix_terms(r2, mix, zero):
    """Gaussian mixture k = sum_s w_s exp(-r2 a_s), a_s = 1/(2 sigma_s^2), and dk/dr2.

    ``mix`` rows: a_s, unused, w_s.  Returns (k, dk/dr2) in r2's dtype.
    """
    k = zero
    k_r2 = zero
    for s in range(mix.shape[1]):
        e = mix[2, s] * math.exp(-r2 * mix[0, s])
        k += e
        k_r2 -= mix[0, s] * e
    return k, k_r2


@njit
def _pos_pow_and_slope(t, expo, p):
    """t^expo and expo t^(expo-1) for t >= 0, with the slope := 0 at t = 0 when expo < 1 (kink)."""
    zero = p[P_ZERO]
    one = p[P_ONE]
    if t > zero:
        val = t ** expo
        return val, expo * val / t
    if expo == one:
        return zero, one
    return zero, zero


@njit
def pair_terms(code, r2, ab, aa, bb, p, mix):
    """Kernel value and partial derivatives of one pair.

    Parameters
    ----------
    code : kernel code (module docstring).  r2 : ||a-b||^2.  ab : <a,b>.
    aa, bb : ||a-x0||^2, ||b-x0||^2 (read by anchored kernels only).
    p : (P_SIZE,) parameters and constants.  mix : (3, S) mixture table.

    Returns
    -------
    (k, dk/dr2, dk/dab, dk/daa), all in the dtype of p, so that
    grad_1 k = 2 dk/dr2 (a - b) + dk/dab b + 2 dk/daa (a - x0).
    """
    zero = p[P_ZERO]
    one = p[P_ONE]
    half = p[P_HALF]
    if r2 < zero:  # rounding of an expanded ||a||^2 - 2<a,b> + ||b||^2
        r2 = zero
    if code == GAUSS_MIX:
        k, k_r2 = gauss_mix_terms(r2, mix, zero)
        return k, k_r2, zero, zero
    if code == RQ:
        k = zero
        k_r2 = zero
        for s in range(mix.shape[1]):
            alpha = mix[0, s]
            base = one + r2 * mix[1, s]
            t = mix[2, s] * base ** (-alpha - one)
            k += t * base
            k_r2 -= half * t
        c_dot = p[P_K]
        return k + c_dot * ab, k_r2, c_dot, zero
    if code == DISTANCE:
        e2 = p[P_K]
        na = math.sqrt(aa + e2)
        nb = math.sqrt(bb + e2)
        nr = math.sqrt(r2 + e2)
        k_r2 = -half / nr if nr > zero else zero
        k_aa = half / na if na > zero else zero
        return na + nb - nr, k_r2, zero, k_aa
    if code == DIST_INDUCED:
        beta = p[P_K]
        va, sa = _pos_pow_and_slope(aa, beta, p)
        vb, _ = _pos_pow_and_slope(bb, beta, p)
        vr, sr = _pos_pow_and_slope(r2, beta, p)
        return va + vb - vr, -sr, zero, sa
    if code == RIESZ:
        t = r2 + p[P_K]
        h = p[P_K + 1]
        k = t ** h
        return k, h * k / t, zero, zero
    if code == POLYNOMIAL:
        gamma = p[P_K]
        base = gamma * ab + p[P_K + 1]
        degree = int(p[P_K + 2])
        pw = one  # base^(degree - 1) by repeated products: exact sign for negative base
        for _ in range(degree - 1):
            pw *= base
        return pw * base, zero, p[P_K + 2] * gamma * pw, zero
    if code == LINEAR:
        return ab, zero, one, zero
    # IMQ
    t = p[P_K] + r2
    h = p[P_K + 1]
    k = t ** h
    return k, h * k / t, zero, zero


@njit
def ntk_sigma1(dot, p):
    """Pre-activation covariance Sigma1 = sigma_w^2 dot/dz + sigma_b^2 of codes with z.z' = dot."""
    return p[N_SW2] * dot * p[N_INV_DZ] + p[N_SB2]


@njit
def ntk_entry(kind, s1, q1, q2, p):
    """Closed-form NTK entry Theta(z, z') of a 1-hidden-layer relu/erf network.

    Parameters
    ----------
    kind : NTK_RELU or NTK_ERF.  s1 : Sigma1(z, z').  q1, q2 : Sigma1(z, z), Sigma1(z', z').
    p : NTK parameter array from :func:`encode_ntk`.

    Returns
    -------
    Theta = sw2 Sigma_hat + sb2 + sw2 Sigma_dot Sigma1 (formulas in :func:`particlegan.maths.kernels.ntk_matrix`).
    relu: Theta is not smooth at theta = 0 (theta ~ sqrt(2 (1 - cos))), so a cosine within
    RELU_COS_SNAP ulps of 1 is set to 1; otherwise z = z' would come out ~sqrt(eps) off.
    """
    zero = p[P_ZERO]
    one = p[P_ONE]
    two = p[P_TWO]
    pi = p[P_PI]
    if kind == NTK_RELU:
        qq = math.sqrt(q1 * q2)
        c = s1 / qq if qq > zero else zero
        if c > p[N_COS_SNAP]:  # rounding of z.z' for z = z': take the codes as parallel (theta = 0)
            c = one
        if c < -one:
            c = -one
        theta = math.acos(c)
        sin_theta = math.sqrt(max(one - c * c, zero))
        s_hat = qq / (two * pi) * (sin_theta + (pi - theta) * c)
        s_dot = (pi - theta) / (two * pi)
    else:
        den = (one + two * q1) * (one + two * q2)
        a = two * s1 / math.sqrt(den)
        if a > one:
            a = one
        if a < -one:
            a = -one
        s_hat = two / pi * math.asin(a)
        # den - 4 s1^2 >= 1 by Cauchy-Schwarz; the floor only guards rounding
        s_dot = two * two / pi / math.sqrt(max(den - two * two * s1 * s1, one))
    return p[N_SW2] * s_hat + p[N_SB2] + p[N_SW2] * s_dot * s1


@njit
def feature_act(h, is_cos, scale, zero):
    """Random-feature activation: (scale act(h), scale act'(h)), act = cos or relu (act'(0) := 0).

    ``zero`` is 0 in h's dtype (no literals, see module docstring).
    """
    if is_cos:
        return scale * math.cos(h), -scale * math.sin(h)
    if h > zero:
        return scale * h, scale
    return zero, zero


# ------------------------------------------------------- vectorisable exp (CPU, float64) ----
@njit(fastmath={"contract", "reassoc", "arcp", "nsz", "afn"})
def poly_exp(x):
    """exp(x) for x <= 0 with mul/add only, so that LLVM can vectorise loops calling it.

    exp(x) = (T8(x / 1024))^(2^10), T8 the degree-8 Taylor polynomial, with x clamped at -700
    (exp(-700) ~ 1e-304). Relative error (measured) <= 1.1e-13 for x >= -30, 3e-12 for x >= -100,
    6e-8 for x >= -300 (there exp(x) < 4e-44, so the absolute error is below 1e-50). float64 only.
    """
    if x < -700.0:
        x = -700.0
    y = x * (1.0 / 1024.0)
    t = 1.0 + y * (1.0 + y * (0.5 + y * (1.0 / 6.0 + y * (1.0 / 24.0 + y * (
        1.0 / 120.0 + y * (1.0 / 720.0 + y * (1.0 / 5040.0 + y * (1.0 / 40320.0))))))))
    for _ in range(10):
        t = t * t
    return t


# --------------------------------------------------- vectorisable sin/cos (CPU, float64) ----
SINCOS_MAX = 1.0e5  # |x| up to which poly_sincos is accurate to 2.2e-16 (measured); beyond: math.*
_TWO_OVER_PI = 0.636619772367581382433
# pi/2 in three parts of 33 bits each (fdlibm's pio2_1, pio2_2, pio2_3): k * part is exact for
# |k| < 2^20, so r = x - k pi/2 loses nothing to cancellation in the range of SINCOS_MAX
_PIO2_1 = 1.57079632673412561417e+00
_PIO2_2 = 6.07710050630396597660e-11
_PIO2_3 = 2.02226624871116645580e-21


# Both sin/cos polynomials carry their own flags (FMA contraction only, never reassociation,
# which would undo the Cody-Waite reduction): without them the code numba generated for them
# depended on the fast-math flags of the first kernel compiled in the process (first caller
# wins), so the feature pass ran 1.6x slower or faster, and rounded differently, depending on
# compile order. With them every caller gets the same, FMA-contracted polynomial.
@njit(fastmath={"contract"})
def poly_sincos(x):
    """(sin x, cos x) in float64 with mul/add/floor only, so that loops calling it vectorise.

    x = k pi/2 + r with |r| <= pi/4 (Cody-Waite reduction), then the Taylor polynomials of
    sin r (to r^15) and cos r (to r^16), whose truncation errors are below 5e-17, and the
    quadrant k mod 4 picks and signs them. Max error (measured against numpy) 1.1e-16 for
    |x| <= 200, 2.2e-16 for |x| <= SINCOS_MAX; finite x only: callers use math.sin /
    math.cos beyond SINCOS_MAX and for NaN / inf.
    k stays a float (np.floor, not math.floor, which returns an int64): AVX2 has no vector
    int64 <-> float64 conversion, and with it the loop ran at half speed.
    Compiled without fast-math: the reduction must not be re-associated.
    """
    k = np.floor(x * _TWO_OVER_PI + 0.5)
    r = x - k * _PIO2_1
    r = r - k * _PIO2_2
    r = r - k * _PIO2_3
    z = r * r
    s = r + r * z * (-1.0 / 6.0 + z * (1.0 / 120.0 + z * (-1.0 / 5040.0 + z * (1.0 / 362880.0 + z * (
        -1.0 / 39916800.0 + z * (1.0 / 6227020800.0 + z * (-1.0 / 1307674368000.0)))))))
    c = 1.0 + z * (-0.5 + z * (1.0 / 24.0 + z * (-1.0 / 720.0 + z * (1.0 / 40320.0 + z * (
        -1.0 / 3628800.0 + z * (1.0 / 479001600.0 + z * (-1.0 / 87178291200.0 + z * (
            1.0 / 20922789888000.0))))))))
    q = k - 4.0 * np.floor(k * 0.25)  # quadrant in {0, 1, 2, 3}
    return _quadrant(s, c, q, 1.0, 2.0, 3.0)


@njit
def _quadrant(s, c, q, one, two, three):
    """(sin x, cos x) from s = sin r, c = cos r and the quadrant q = k mod 4 of x = k pi/2 + r
    (one, two, three: the constants in the dtype of s)."""
    odd = (q == one) | (q == three)
    sin_x = c if odd else s
    cos_x = s if odd else c
    if q >= two:
        sin_x = -sin_x
    if (q == one) | (q == two):
        cos_x = -cos_x
    return sin_x, cos_x


# ---------------------------------------------------------------- float32 twin (CPU) ----
SINCOS32_MAX = 8192.0  # |x| up to which poly_sincos32 is within 8.4e-8 (1.4 ulp of 1, measured)
_F32 = np.float32
# every constant a float32 scalar: a Python float would promote the whole polynomial to float64
_TWO_OVER_PI_32 = _F32(0.636619772367581382433)
# pi/2 in three float32 parts (Cephes' sinf DP1..DP3, doubled): k * part is exact for |k| < 2^13
_PIO2_1_32 = _F32(1.5703125)
_PIO2_2_32 = _F32(4.837512969970703125e-4)
_PIO2_3_32 = _F32(7.54978995489188216e-8)
_S32 = tuple(_F32(v) for v in (-1.0 / 6.0, 1.0 / 120.0, -1.0 / 5040.0, 1.0 / 362880.0))
_C32 = tuple(_F32(v) for v in (-0.5, 1.0 / 24.0, -1.0 / 720.0, 1.0 / 40320.0, -1.0 / 3628800.0))
_ONE32, _TWO32, _THREE32, _FOUR32 = _F32(1.0), _F32(2.0), _F32(3.0), _F32(4.0)
_HALF32, _QUARTER32 = _F32(0.5), _F32(0.25)


@njit(fastmath={"contract"})
def poly_sincos32(x):
    """(sin x, cos x) of a float32 x in float32 arithmetic (8 lanes per AVX2 vector, twice
    poly_sincos's 4): the same reduction and quadrant rule, Taylor polynomials to r^9 and r^10
    (truncation below 3e-9). Max error (measured against float64 numpy) 8.4e-8 for
    |x| <= SINCOS32_MAX, against 6.9e-8 for numpy's own float32 sin/cos; the float32 phase
    itself is rounded to 6e-8 |x|, so this adds nothing visible. Finite x only.
    """
    k = np.floor(x * _TWO_OVER_PI_32 + _HALF32)
    r = x - k * _PIO2_1_32
    r = r - k * _PIO2_2_32
    r = r - k * _PIO2_3_32
    z = r * r
    s = r + r * z * (_S32[0] + z * (_S32[1] + z * (_S32[2] + z * _S32[3])))
    c = _ONE32 + z * (_C32[0] + z * (_C32[1] + z * (_C32[2] + z * (_C32[3] + z * _C32[4]))))
    q = k - _FOUR32 * np.floor(k * _QUARTER32)
    return _quadrant(s, c, q, _ONE32, _TWO32, _THREE32)


def sincos_in_dtype(x):
    """(sin x, cos x) by the polynomial of x's precision: poly_sincos32 for float32 x,
    poly_sincos otherwise (chosen at compile time inside numba code; see the overload below)."""
    if isinstance(x, np.float32):
        return poly_sincos32(x)
    return poly_sincos(np.float64(x))


def sincos_limit(dtype) -> float:
    """|phase| up to which :func:`sincos_in_dtype` is accurate for arrays of ``dtype``."""
    return SINCOS32_MAX if np.dtype(dtype) == np.float32 else SINCOS_MAX


@_overload(sincos_in_dtype)
def _sincos_in_dtype_numba(x):
    if x == _nbtypes.float32:
        return lambda x: poly_sincos32(x)
    return lambda x: poly_sincos(x)

