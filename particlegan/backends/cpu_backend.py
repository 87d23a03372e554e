"""CPU backend: numba ``@njit(parallel=True)`` drivers over the per-pair maths of :mod:`particlegan.maths.pairmath`.

Design (ecosystem-anchors 1.2):

* Pair sums run ``prange`` over blocks of target points i and write ``out[i]`` per i (no scatter
  into j, which would race).
* Gaussian kernels (single or mixture), d < ``HIGH_D``: tiles of ``TILE`` centres y_j; r2 for a
  tile is computed into a small buffer from the transposed centres (a loop over j that
  vectorises), then reduced with :func:`~particlegan.maths.pairmath.poly_exp`, an exp made of mul/add
  only, because numba's ``math.exp`` no longer vectorises (no SVML since numba 0.62).
* d >= ``HIGH_D`` (every kernel): the cross products x.y come from BLAS over row blocks, with both
  point sets shifted by the centres' mean first so that r2 = |x'|^2 + |y'|^2 - 2 x'.y' loses
  little precision; gradients are a second BLAS product with the coefficient block. Gaussians
  there take one fused parallel pass per Gram block (r2, poly-exp, weighted sums, coefficients)
  in float64, also when the Gram block itself is float32.
* Other kernels in low d: a direct loop calling :func:`~particlegan.maths.pairmath.pair_terms`.
* NTK apply: row blocks of Theta (BLAS Gram, per-entry closed form in numba, BLAS product), so
  memory is O(block N) and the N x N matrix is never held when N is large.

Everything is computed in float64 (inputs are up-cast; cheap next to the O(n m) pair work), except
the BLAS products of the high-d path, which run in the input dtype (float32 GEMM is ~2x faster).
Results are returned in the input's float dtype.
"""
from __future__ import annotations

import math

import numpy as np
from numba import njit, prange

from particlegan.maths import pairmath as pm
from particlegan.backends import jit_cache
from particlegan.maths.kernels import KernelSpec, anchor
from particlegan.backends.numpy_backend import (check_features, check_members, check_ntk, check_points,
                                                loop_members, out_dtype)

NAME = "cpu"
HIGH_D = 32          # from this dimension on, pair products come from BLAS
TILE = 256           # centres per tile in the low-d Gaussian loops
ROWS = 16            # target points per parallel work item (they share each centre tile)
GRAM_ELEMS = 1 << 21  # entries of one BLAS Gram block (16 MB in float64) ...
GRAM_MIN_ROWS = 256   # ... but at least this many rows (a skinnier GEMM runs slower: sims/bench/results.md) ...
GRAM_MAX_ELEMS = 1 << 23  # ... as long as the block stays within this many entries (64 MB in float64)

# fast-math without nnan/ninf, so that NaN/inf still propagate to the divergence checks
_FM = {"contract", "reassoc", "arcp", "nsz", "afn"}


def _driver(**options):
    """``njit(parallel=True, **options)`` with the package's disk cache (:mod:`.jit_cache`:
    compiled once per package version and CPU, reused by every later process)."""
    def wrap(fn):
        dispatcher = njit(parallel=True, **options)(fn)
        jit_cache.attach(dispatcher)
        return dispatcher
    return wrap


# ------------------------------------------------------------------ Gaussian, low d --------
# Indices into tiles go through slices (yk = Yt[k, j0:j1], then yk[jj] with jj from range): numba
# knows such indices are non-negative, skips the negative-index wrap-around, and LLVM vectorises.
@njit(fastmath=_FM)
def _tile_r2(xi, Yt, j0, j1, r2):
    """r2[jj] = |x_i - y_(j0+jj)|^2 for the tile j0 <= j < j1 (Yt is (d, m))."""
    length = j1 - j0
    y0 = Yt[0, j0:j1]
    x0 = xi[0]
    for jj in range(length):
        t = x0 - y0[jj]
        r2[jj] = t * t
    for k in range(1, xi.shape[0]):
        yk = Yt[k, j0:j1]
        xk = xi[k]
        for jj in range(length):
            t = xk - yk[jj]
            r2[jj] += t * t


@_driver(fastmath=_FM)
def _gauss_sum_lowd(X, Yt, w, mix, out):
    """out_i = sum_j w_j sum_s ws_s exp(-a_s |x_i - y_j|^2); Yt is (d, m), mix rows (a_s, -, ws_s).

    Each work item holds ROWS target points and walks the centres tile by tile, so a tile (4 KB
    at d = 2) is read from L1 by every row instead of all of Y streaming from L2/L3 per row.
    """
    n = X.shape[0]
    m = Yt.shape[1]
    n_s = mix.shape[1]
    neg_a0, ws0 = -mix[0, 0], mix[2, 0]  # first component hoisted: the common single Gaussian
    n_items = (n + ROWS - 1) // ROWS
    for item in prange(n_items):
        r2 = np.empty(TILE)
        i0 = item * ROWS
        i1 = min(n, i0 + ROWS)
        acc = np.zeros(i1 - i0)
        for j0 in range(0, m, TILE):
            j1 = min(m, j0 + TILE)
            wt = w[j0:j1]
            for i in range(i0, i1):
                _tile_r2(X[i], Yt, j0, j1, r2)
                part = 0.0
                for jj in range(j1 - j0):
                    part += wt[jj] * pm.poly_exp(neg_a0 * r2[jj])
                total = ws0 * part
                for s in range(1, n_s):  # further mixture components
                    neg_a = -mix[0, s]
                    part = 0.0
                    for jj in range(j1 - j0):
                        part += wt[jj] * pm.poly_exp(neg_a * r2[jj])
                    total += mix[2, s] * part
                acc[i - i0] += total
        for i in range(i0, i1):
            out[i] = acc[i - i0]


@_driver(fastmath=_FM)
def _gauss_value_grad_lowd(X, Yt, w, mix, out_v, out_g):
    """Values as in :func:`_gauss_sum_lowd` and gradients out_g[i] = sum_j c_ij (x_i - y_j),
    c_ij = w_j sum_s ws_s (-2 a_s) exp(-a_s r2_ij); same tile-outer order."""
    n, d = X.shape
    m = Yt.shape[1]
    n_s = mix.shape[1]
    n_items = (n + ROWS - 1) // ROWS
    for item in prange(n_items):
        r2 = np.empty(TILE)
        gb = np.empty(TILE)
        i0 = item * ROWS
        i1 = min(n, i0 + ROWS)
        acc = np.zeros(i1 - i0)
        g = np.zeros((i1 - i0, d))
        for j0 in range(0, m, TILE):
            j1 = min(m, j0 + TILE)
            length = j1 - j0
            wt = w[j0:j1]
            for i in range(i0, i1):
                xi = X[i]
                _tile_r2(xi, Yt, j0, j1, r2)
                neg_a = -mix[0, 0]
                ws = mix[2, 0]
                slope = 2.0 * neg_a
                part = 0.0
                for jj in range(length):
                    e = ws * wt[jj] * pm.poly_exp(neg_a * r2[jj])
                    part += e
                    gb[jj] = slope * e
                for s in range(1, n_s):  # further mixture components
                    neg_a = -mix[0, s]
                    ws = mix[2, s]
                    slope = 2.0 * neg_a
                    for jj in range(length):
                        e = ws * wt[jj] * pm.poly_exp(neg_a * r2[jj])
                        part += e
                        gb[jj] += slope * e
                acc[i - i0] += part
                for k in range(d):
                    yk = Yt[k, j0:j1]
                    xk = xi[k]
                    gk = 0.0
                    for jj in range(length):
                        gk += gb[jj] * (xk - yk[jj])
                    g[i - i0, k] += gk
        for i in range(i0, i1):
            out_v[i] = acc[i - i0]
            for k in range(d):
                out_g[i, k] = g[i - i0, k]


# ------------------------------------------------------------- any kernel, low d -----------
@_driver()
def _generic_lowd(X, Y, w, code, p, mix, aa, bb, want_grad, out_v, out_g, out_saa):
    """Direct per-pair loop for any kernel.

    out_v[i] = sum_j w_j k_ij;  out_g[i] = sum_j w_j (2 dk/dr2 (x_i - y_j) + dk/dab y_j);
    out_saa[i] = sum_j w_j dk/daa (the anchor term 2 out_saa[i] (x_i - x0) is added by the caller).
    """
    n, d = X.shape
    m = Y.shape[0]
    for i in prange(n):
        g = np.zeros(d)
        acc = 0.0
        saa = 0.0
        for j in range(m):
            r2 = 0.0
            ab = 0.0
            for k in range(d):
                t = X[i, k] - Y[j, k]
                r2 += t * t
                ab += X[i, k] * Y[j, k]
            kv, k_r2, k_ab, k_aa = pm.pair_terms(code, r2, ab, aa[i], bb[j], p, mix)
            acc += w[j] * kv
            if want_grad:
                c_r2 = 2.0 * w[j] * k_r2
                c_ab = w[j] * k_ab
                for k in range(d):
                    g[k] += c_r2 * (X[i, k] - Y[j, k]) + c_ab * Y[j, k]
                saa += w[j] * k_aa
        out_v[i] = acc
        if want_grad:
            for k in range(d):
                out_g[i, k] = g[k]
            out_saa[i] = saa


# ------------------------------------------------------------------ BLAS path, high d ------
@_driver(fastmath=_FM)
def _gauss_from_gram(G, xx, yy, w, mix, want_grad, out_v, c_sum):
    """Gaussian sums from a Gram block G = X' Y'^T (shifted points) and squared norms xx, yy.

    out_v[i] = sum_j w_j k_ij, r2_ij = xx_i + yy_j - 2 G_ij.  With want_grad, G is overwritten
    by c_ij = 2 w_j dk/dr2 and c_sum[i] = sum_j c_ij, so that grad_i = x'_i c_sum[i] - (C Y')_i.
    G may be float32 (from a float32 GEMM): r2, exp and the sums are still float64, so the only
    float32 rounding is that of the Gram entries (and of c_ij for the gradient GEMM).
    One fused pass per row; the common single Gaussian has its own loop without the mixture
    loop inside, which is what lets LLVM vectorise it (~1.3 ns per pair on 2 AVX2 cores,
    5x the mixture loop).
    """
    n, m = G.shape
    n_s = mix.shape[1]
    neg_a0, ws0 = -mix[0, 0], mix[2, 0]
    for i in prange(n):
        gi = G[i]
        xi = xx[i]
        acc = 0.0
        csum = 0.0
        if n_s == 1:
            if want_grad:
                for j in range(m):
                    r2 = max(xi + yy[j] - 2.0 * gi[j], 0.0)
                    e = w[j] * ws0 * pm.poly_exp(neg_a0 * r2)
                    acc += e
                    c = 2.0 * neg_a0 * e
                    gi[j] = c
                    csum += c
            else:
                for j in range(m):
                    r2 = max(xi + yy[j] - 2.0 * gi[j], 0.0)
                    acc += w[j] * pm.poly_exp(neg_a0 * r2)
                acc *= ws0
        else:
            for j in range(m):
                r2 = max(xi + yy[j] - 2.0 * gi[j], 0.0)
                kv = 0.0
                c = 0.0
                for s in range(n_s):
                    e = mix[2, s] * pm.poly_exp(-mix[0, s] * r2)
                    kv += e
                    c -= 2.0 * mix[0, s] * e
                acc += w[j] * kv
                if want_grad:
                    gi[j] = w[j] * c
                    csum += w[j] * c
        out_v[i] = acc
        c_sum[i] = csum


@_driver()
def _generic_from_gram(G, xx, yy, xc, yc, cc, w, code, p, mix, aa, bb, want_grad, out_v, s_r2, s_ab, s_aa):
    """Any kernel from a Gram block G = X' Y'^T of points shifted by c (x = x' + c).

    r2 = |x'|^2 + |y'|^2 - 2 G, ab = G + x'.c + y'.c + c.c.  out_v[i] = sum_j w_j k_ij.
    With want_grad, G is overwritten by C_ij = w_j (dk/dab - 2 dk/dr2), and s_r2, s_ab, s_aa get the
    row sums of w dk/dr2, w dk/dab, w dk/daa, so that
    grad_i = 2 x'_i s_r2 + (C Y')_i + c s_ab + 2 (x_i - x0) s_aa.
    """
    n, m = G.shape
    for i in prange(n):
        acc = 0.0
        t_r2 = 0.0
        t_ab = 0.0
        t_aa = 0.0
        for j in range(m):
            g = G[i, j]
            r2 = xx[i] + yy[j] - 2.0 * g
            ab = g + xc[i] + yc[j] + cc
            kv, k_r2, k_ab, k_aa = pm.pair_terms(code, r2, ab, aa[i], bb[j], p, mix)
            acc += w[j] * kv
            if want_grad:
                G[i, j] = w[j] * (k_ab - 2.0 * k_r2)
                t_r2 += w[j] * k_r2
                t_ab += w[j] * k_ab
                t_aa += w[j] * k_aa
        out_v[i] = acc
        s_r2[i] = t_r2
        s_ab[i] = t_ab
        s_aa[i] = t_aa


# ------------------------------------------------------------------------ drivers ----------
def _prepare(X, Y, w, fname):
    X, Y, w = check_points(X, Y, w, fname)
    f64 = (np.ascontiguousarray(a, dtype=np.float64) for a in (X, Y, w))
    return X, *f64


def _is_gaussian(kernel: KernelSpec) -> bool:
    return kernel.name in ("gaussian", "gaussian_mixture")


def _anchor_norms(X64, Y64, kernel):
    x0 = anchor(kernel, X64.shape[1])
    if x0 is None:
        return None, np.zeros(X64.shape[0]), np.zeros(Y64.shape[0])
    return x0, ((X64 - x0) ** 2).sum(axis=1), ((Y64 - x0) ** 2).sum(axis=1)


def gram_block_rows(m: int) -> int:
    """Rows of X per BLAS Gram block against m centres: GRAM_ELEMS / m, raised to GRAM_MIN_ROWS
    while the block stays within GRAM_MAX_ELEMS entries, and at least 1."""
    m = max(m, 1)
    return max(1, GRAM_ELEMS // m, min(GRAM_MIN_ROWS, GRAM_MAX_ELEMS // m))


def _high_d(X, X64, Y64, w64, kernel, want_grad):
    """BLAS row-block path for any kernel; returns (values (n,), grads (n, d) or None), float64."""
    n, d = X64.shape
    m = Y64.shape[0]
    gemm_dtype = out_dtype(X)
    centre = Y64.mean(axis=0) if m else np.zeros(d)
    Xs, Ys = X64 - centre, Y64 - centre
    xx, yy = (Xs * Xs).sum(axis=1), (Ys * Ys).sum(axis=1)
    Ys_g = np.ascontiguousarray(Ys, dtype=gemm_dtype)
    Xs_g = np.ascontiguousarray(Xs, dtype=gemm_dtype)
    vals = np.empty(n)
    grads = np.empty((n, d)) if want_grad else None
    block = gram_block_rows(m)
    gauss = _is_gaussian(kernel)
    code, p, mix = pm.encode_kernel(kernel, d)
    if not gauss:
        x0, aa, bb = _anchor_norms(X64, Y64, kernel)
        xc, yc, cc = Xs @ centre, Ys @ centre, float(centre @ centre)
    for start in range(0, n, block):
        rows = slice(start, min(n, start + block))
        G = Xs_g[rows] @ Ys_g.T
        nb = G.shape[0]
        if gauss:
            c_sum = np.empty(nb)
            _gauss_from_gram(G, xx[rows], yy, w64, mix, want_grad, vals[rows], c_sum)
            if want_grad:
                grads[rows] = Xs[rows] * c_sum[:, None] - (G @ Ys_g)
        else:
            s_r2, s_ab, s_aa = np.empty(nb), np.empty(nb), np.empty(nb)
            _generic_from_gram(G, xx[rows], yy, xc[rows], yc, cc, w64, code, p, mix, aa[rows], bb,
                               want_grad, vals[rows], s_r2, s_ab, s_aa)
            if want_grad:
                g = 2.0 * Xs[rows] * s_r2[:, None] + (G @ Ys_g) + centre * s_ab[:, None]
                if x0 is not None:
                    g += 2.0 * (X64[rows] - x0) * s_aa[:, None]
                grads[rows] = g
    return vals, grads


def _value_and_grad(X, Y, w, kernel: KernelSpec, want_grad: bool, fname: str):
    X, X64, Y64, w64 = _prepare(X, Y, w, fname)
    n, d = X64.shape
    m = Y64.shape[0]
    if n == 0 or m == 0 or d == 0:  # nothing to loop over (d = 0: every r2 is 0; use the reference)
        if d == 0 and n and m:
            from particlegan.backends import numpy_backend as ref
            vals = ref.kernel_sum(X64, Y64, w64, kernel)
            return vals, (ref.kernel_grad_sum(X64, Y64, w64, kernel) if want_grad else None)
        return np.zeros(n), np.zeros((n, d))
    if d >= HIGH_D:
        vals, grads = _high_d(X, X64, Y64, w64, kernel, want_grad)
        return vals, grads
    vals = np.empty(n)
    grads = np.empty((n, d)) if want_grad else np.empty((0, d))
    if _is_gaussian(kernel):
        _, _, mix = pm.encode_kernel(kernel, d)
        Yt = np.ascontiguousarray(Y64.T)
        if want_grad:
            _gauss_value_grad_lowd(X64, Yt, w64, mix, vals, grads)
        else:
            _gauss_sum_lowd(X64, Yt, w64, mix, vals)
        return vals, grads
    code, p, mix = pm.encode_kernel(kernel, d)
    x0, aa, bb = _anchor_norms(X64, Y64, kernel)
    saa = np.empty(n)
    _generic_lowd(X64, Y64, w64, code, p, mix, aa, bb, want_grad, vals, grads, saa)
    if want_grad and x0 is not None:
        grads += 2.0 * saa[:, None] * (X64 - x0)
    return vals, grads


def kernel_sum(X, Y, w, kernel: KernelSpec) -> np.ndarray:
    """out_i = sum_j w_j k(x_i, y_j): X (n, d), Y (m, d), w (m,) -> (n,) in X's float dtype."""
    vals, _ = _value_and_grad(X, Y, w, kernel, False, "kernel_sum")
    return vals.astype(out_dtype(np.asarray(X)))


def kernel_grad_sum(X, Y, w, kernel: KernelSpec) -> np.ndarray:
    """out_i = sum_j w_j grad_1 k(x_i, y_j): X (n, d), Y (m, d), w (m,) -> (n, d) in X's dtype."""
    _, grads = _value_and_grad(X, Y, w, kernel, True, "kernel_grad_sum")
    return grads.astype(out_dtype(np.asarray(X)))


def kernel_value_and_grad_sum(X, Y, w, kernel: KernelSpec):
    """Both sums of one pass: ((n,) values, (n, d) gradients), in X's float dtype."""
    vals, grads = _value_and_grad(X, Y, w, kernel, True, "kernel_value_and_grad_sum")
    dt = out_dtype(np.asarray(X))
    return vals.astype(dt), grads.astype(dt)


def pair_sum(X, Y, kernel: KernelSpec) -> float:
    """sum_{i,j} k(x_i, y_j) as a Python float (float64 accumulation)."""
    X, Y, _ = check_points(X, Y, None, "pair_sum")
    vals, _ = _value_and_grad(X.astype(np.float64), Y, np.ones(Y.shape[0]), kernel, False, "pair_sum")
    return float(vals.sum())


# ------------------------------------------------------------------ random features --------
@_driver()
def _features_inplace(H, b, is_cos, scale, zero, dpsi):
    """H <- scale act(H + b) and dpsi <- scale act'(H + b) (pairmath.feature_act), row-parallel."""
    n, K = H.shape
    for i in prange(n):
        for k in range(K):
            H[i, k], dpsi[i, k] = pm.feature_act(H[i, k] + b[k], is_cos, scale, zero)


@_driver()
def _cos_features_inplace(H, b, scale, dpsi):
    """H <- scale cos(H + b), dpsi <- -scale sin(H + b) with the vectorising polynomial sin/cos
    of H's precision (pairmath.sincos_in_dtype; phases within its limit; 6x math.cos + math.sin,
    which numba cannot vectorise)."""
    n, K = H.shape
    for i in prange(n):
        hi = H[i]
        di = dpsi[i]
        for k in range(K):
            s, c = pm.sincos_in_dtype(hi[k] + b[k])
            hi[k] = scale * c
            di[k] = -scale * s


@njit
def _phases_row(xi, At, b, out):
    """out[k] = a_k . x_i + b_k for one row (At is (d, K)): one vectorised pass per coordinate."""
    K = out.shape[0]
    for k in range(K):
        out[k] = b[k]
    for c in range(xi.shape[0]):
        xc = xi[c]
        ac = At[c]
        for k in range(K):
            out[k] += xc * ac[k]


@_driver()
def _cos_features_lowd(X, At, b, scale, psi, dpsi):
    """psi = scale cos(X A^T + b), dpsi = -scale sin(X A^T + b) with the phases computed in the
    loop (d < HIGH_D): no GEMM, no phase array, and no hand-over between the BLAS and numba
    thread pools (the spinning BLAS threads slowed the following pass down by 1.6x). At is (d, K)."""
    n = X.shape[0]
    K = At.shape[1]
    for i in prange(n):
        pi = psi[i]
        di = dpsi[i]
        _phases_row(X[i], At, b, pi)
        for k in range(K):  # then the activation, on the row while it is in L1
            s, co = pm.sincos_in_dtype(pi[k])
            pi[k] = scale * co
            di[k] = -scale * s


FEATURE_ITEMS = 64   # at most this many row groups in the fused passes below (summed in order)
ITEM_ROWS_MIN = 32   # and at least this many rows per group (small n: few groups, little overhead)
FLUSH_ROWS = 16      # rows summed in the input dtype before they are added to the float64 sums


def _n_items(n: int) -> int:
    """Row groups of a fused pass over n rows: a function of n only, never of the thread count,
    so that the sums are bitwise the same on 1 or 2 threads."""
    return max(1, min(FEATURE_ITEMS, -(-n // ITEM_ROWS_MIN)))


@njit(inline="always")
def _feature_grads_item(X, At, b, scale, is_cos, dpsi, acc, lo, hi):
    """Rows lo..hi-1 of :func:`_feature_grads_lowd` for one member: their dpsi rows, and into
    acc (K,) the sum of their activations (input-dtype row sums flushed into float64)."""
    K = At.shape[1]
    zero = scale - scale  # 0 in the features' dtype (scale is a scalar of that dtype)
    acc[:] = 0.0
    part = np.zeros(K, dtype=dpsi.dtype)
    rows = 0
    plane = At.shape[0] == 2
    for i in range(lo, hi):
        di = dpsi[i]
        if is_cos and plane:  # d = 2: the phases (b + x0 a0) + x1 a1 inside the sin/cos loop (8% faster)
            x0 = X[i, 0]
            x1 = X[i, 1]
            a0 = At[0]
            a1 = At[1]
            for k in range(K):
                s, co = pm.sincos_in_dtype(b[k] + x0 * a0[k] + x1 * a1[k])
                part[k] += co
                di[k] = -scale * s
        elif is_cos:
            _phases_row(X[i], At, b, di)
            for k in range(K):
                s, co = pm.sincos_in_dtype(di[k])
                part[k] += co
                di[k] = -scale * s
        else:
            _phases_row(X[i], At, b, di)
            for k in range(K):
                h = di[k]
                part[k] += zero if h <= zero else h  # NaN phases give NaN sums, as numpy's
                di[k] = scale if h > zero else zero
        rows += 1
        if rows == FLUSH_ROWS:
            _flush(part, acc)
            rows = 0
    _flush(part, acc)


@_driver()
def _feature_grads_lowd(X, At, b, scale, is_cos, dpsi, parts):
    """For each member m of an ensemble (leading axis; a single run is one member):
    dpsi[m] = scale act'(X[m] A[m]^T + b[m]) (n, K) and parts[m, t] = sum over the rows of work
    item t of act(X[m] A[m]^T + b[m]) (float64), act = cos (act' = -sin) or relu (act' = step):
    psi itself is never written. Each row's phases are formed in its dpsi row and overwritten
    there. Items are fixed (not per thread), and each (member, item) runs the same code
    whatever the ensemble's size, so the sums are bitwise the same on any number of threads
    and in or out of an ensemble. X (B, n, d), At (B, d, K), b (B, K), parts (B, n_items, K)."""
    n_mem, n = X.shape[0], X.shape[1]
    n_items = parts.shape[1]
    per = (n + n_items - 1) // n_items
    for q in prange(n_mem * n_items):
        m = q // n_items
        t = q - m * n_items
        _feature_grads_item(X[m], At[m], b[m], scale, is_cos, dpsi[m], parts[m, t], t * per,
                            min(n, (t + 1) * per))


@njit
def _flush(part, acc):
    """acc += part (acc in float64), then part <- 0."""
    for k in range(part.shape[0]):
        acc[k] += part[k]
        part[k] = 0.0


def _cos_poly_ok(X, A, b, dt) -> bool:
    """True when every phase a_k . x_i + b_k is within the polynomial sin/cos's limit for dt."""
    return bool(X.size and A.size and _phase_bound(X, A, b) <= pm.sincos_limit(dt))


def random_features(X, A, b, activation: str, scale: float):
    """psi = scale act(X A^T + b), dpsi = scale act'(X A^T + b): X (n, d), A (K, d), b (K,) -> (n, K) each.

    cos features use the polynomial sin/cos of the input's precision when every phase is within
    its limit (pairmath.sincos_limit; bounded by Cauchy-Schwarz as max|x_i| max|a_k| + max|b_k|),
    with the phases computed in the same loop for d < HIGH_D; otherwise X A^T comes from BLAS in
    X's float dtype and the activation (math.cos / math.sin beyond the polynomial's range)
    follows in one fused parallel pass.
    """
    X, A, b = check_features(X, A, b, activation)
    dt = out_dtype(X)
    Xd = np.ascontiguousarray(X, dtype=dt)
    Ad = np.ascontiguousarray(A, dtype=dt)
    bd = np.ascontiguousarray(b, dtype=dt)
    poly = activation == "cos" and _cos_poly_ok(Xd, Ad, bd, dt)
    if poly and 0 < Xd.shape[1] < HIGH_D:
        psi = np.empty((Xd.shape[0], Ad.shape[0]), dtype=dt)
        dpsi = np.empty_like(psi)
        _cos_features_lowd(Xd, np.ascontiguousarray(Ad.T), bd, dt(scale), psi, dpsi)
        return psi, dpsi
    H = np.ascontiguousarray(Xd @ Ad.T)
    dpsi = np.empty_like(H)
    if poly:
        _cos_features_inplace(H, bd, dt(scale), dpsi)
    else:
        _features_inplace(H, bd, activation == "cos", dt(scale), dt(0), dpsi)
    return H, dpsi


def feature_mean_and_dpsi(X, A, b, activation: str, scale: float):
    """(mean_i psi_i (K,), dpsi (n, K)) as from :func:`random_features`, without writing psi
    where that can be avoided: for d < HIGH_D (cos features: phases within the polynomial's
    limit) one fused pass sums the activations per fixed row group (float64 sums, the same order
    on any number of threads); otherwise the features are built whole and averaged."""
    X, A, b = check_features(X, A, b, activation)
    Xd, Ad, bd, dt = _in_dtype(X, A, b)
    if not _fused_features_ok(Xd[None], Ad[None], bd[None], activation, dt):
        psi, dpsi = random_features(Xd, Ad, bd, activation, scale)
        return psi.mean(axis=0), dpsi
    mean, dpsi = _fused_mean_and_dpsi(Xd[None], Ad[None], bd[None], activation, scale, dt)
    return mean[0], dpsi[0]


def feature_mean_and_dpsi_members(X, A, b, activation: str, scale: float):
    """:func:`feature_mean_and_dpsi` of B ensemble members at once: X (B, n, d), A (B, K, d),
    b (B, K) -> (B, K), (B, n, K); member m bitwise as its own call (the fused pass runs each
    (member, row group) with the same code). Members outside the fused pass's range are
    looped."""
    X, A, b = check_members(X, A, b, activation)
    Xd, Ad, bd, dt = _in_dtype(X, A, b)
    if not _fused_features_ok(Xd, Ad, bd, activation, dt):
        return loop_members(feature_mean_and_dpsi, 3)(Xd, Ad, bd, activation, scale)
    return _fused_mean_and_dpsi(Xd, Ad, bd, activation, scale, dt)


def _in_dtype(X, A, b):
    dt = out_dtype(X)
    return (np.ascontiguousarray(X, dtype=dt), np.ascontiguousarray(A, dtype=dt),
            np.ascontiguousarray(b, dtype=dt), dt)


def _fused_features_ok(X, A, b, activation, dt) -> bool:
    """The fused low-d pass applies to members X (B, n, d): d < HIGH_D and, for cos features,
    every member's phases within the polynomial sin/cos's limit."""
    d = X.shape[2]
    if not 0 < d < HIGH_D:
        return False
    return activation != "cos" or (X.size > 0 and A.size > 0 and _max_phase_bound(X, A, b) <= pm.sincos_limit(dt))


def _fused_mean_and_dpsi(X, A, b, activation, scale, dt):
    n_mem, n, _ = X.shape
    K = A.shape[1]
    dpsi = np.empty((n_mem, n, K), dtype=dt)
    parts = np.empty((n_mem, _n_items(n), K))
    _feature_grads_lowd(X, np.ascontiguousarray(A.transpose(0, 2, 1)), b, dt(scale), activation == "cos",
                        dpsi, parts)
    return (parts.sum(axis=1) * (scale / n)).astype(dt), dpsi


@njit
def _max_row_norm2(M):
    """max_i ||m_i||^2 over the rows of M in float64 (NaN as soon as a row's is NaN)."""
    best = 0.0
    for i in range(M.shape[0]):
        s = 0.0
        for c in range(M.shape[1]):
            s += np.float64(M[i, c]) * np.float64(M[i, c])
        if s != s:
            return s
        best = max(best, s)
    return best


@njit
def _phase_bound(X, A, b):
    """An upper bound of |a_k . x_i + b_k| over all i, k, max|x_i| max|a_k| + max|b_k|
    (Cauchy-Schwarz; NaN when an input is NaN, inf when one is infinite)."""
    nb = _max_row_norm2(b.reshape((b.shape[0], 1)))
    return math.sqrt(_max_row_norm2(X)) * math.sqrt(_max_row_norm2(A)) + math.sqrt(nb)


@njit
def _max_phase_bound(X, A, b):
    """max over members m of :func:`_phase_bound` (X[m], A[m], b[m]) (NaN as soon as one is)."""
    best = 0.0
    for m in range(X.shape[0]):
        v = _phase_bound(X[m], A[m], b[m])
        if v != v:
            return v
        best = max(best, v)
    return best


# ---------------------------------------------------- feature critic gradients, penalty --
@njit(fastmath=_FM)
def _row_input_grad(di, wAt, zero, g):
    """g[c] = sum_k di[k] wAt[c, k] = grad f(x_i)_c for f = psi w (wAt = (w a_k)^T, (d, K)),
    summed in di's dtype (zero: 0 in it); returns ||g||^2 in float64."""
    s2 = 0.0
    for c in range(wAt.shape[0]):
        wc = wAt[c]
        gc = zero
        for k in range(di.shape[0]):
            gc += di[k] * wc[k]
        g[c] = gc
        s2 += np.float64(gc) * np.float64(gc)
    return s2


@_driver(fastmath=_FM)
def _feature_input_grads(dpsi, A, w, zero, out, n_items):
    """out[m, i] = grad f_m(x_i) for each member m (dpsi (B, n, K), A (B, K, d), w (B, K),
    out (B, n, d)), parallel over (member, row group) (the fixed groups of :func:`_n_items`),
    in the plane four rows at a time; each row's sums in one thread, with the same code in or
    out of an ensemble and on any number of threads."""
    n_mem, n, _ = dpsi.shape
    _, wAt = _weighted_directions(A, w, dpsi)
    plane = A.shape[2] == 2
    per = (n + n_items - 1) // n_items
    for q in prange(n_mem * n_items):
        m = q // n_items
        lo = (q - m * n_items) * per
        hi = min(n, lo + per)
        g = np.empty(8, dtype=dpsi.dtype)
        i = lo
        while i < hi:
            if plane and i + 4 <= hi:  # four rows' sums in one loop
                _rows4_plane_grads(dpsi[m], wAt[m], zero, i, g)
                for r in range(4):
                    out[m, i + r, 0] = g[2 * r]
                    out[m, i + r, 1] = g[2 * r + 1]
                i += 4
            else:
                _row_input_grad(dpsi[m, i], wAt[m], zero, out[m, i])
                i += 1


@njit
def _weighted_directions(A, w, dtype_of):
    """Per member m: (A[m]^T, (w[m][:, None] A[m])^T), each (B, d, K) contiguous in the dtype
    of ``dtype_of``, the products formed in float64 and rounded once (as numpy's float64
    product then astype)."""
    n_mem, K, d = A.shape
    At = np.empty((n_mem, d, K), dtype=dtype_of.dtype)
    wAt = np.empty((n_mem, d, K), dtype=dtype_of.dtype)
    for m in range(n_mem):
        for c in range(d):
            for k in range(K):
                At[m, c, k] = A[m, k, c]
                wAt[m, c, k] = np.float64(w[m, k]) * np.float64(A[m, k, c])
    return At, wAt


def feature_input_grads(dpsi, A, w):
    """grad f(x_i) = A^T (dpsi_i * w) (n, d) of f = psi w, in dpsi's dtype: a row-parallel
    numba pass (no BLAS call: OpenBLAS's threads spin after a GEMM and slowed the next numba
    pass of an outer step down by 1.8x)."""
    return feature_input_grads_members(np.asarray(dpsi)[None], np.asarray(A)[None], np.asarray(w)[None])[0]


def feature_input_grads_members(dpsi, A, w):
    """:func:`feature_input_grads` of B members at once: dpsi (B, n, K), A (B, K, d), w (B, K)
    -> (B, n, d), member m bitwise as its own call."""
    dt = out_dtype(dpsi)
    dpsi = np.ascontiguousarray(dpsi, dtype=dt)
    A = np.ascontiguousarray(A)
    out = np.empty((dpsi.shape[0], dpsi.shape[1], A.shape[2]), dtype=dt)
    _feature_input_grads(dpsi, A, np.ascontiguousarray(w), dt(0), out, _n_items(dpsi.shape[1]))
    return out


@njit(fastmath=_FM, inline="always")
def _gp_row_factor(s2):
    """d(||G|| - 1)^2 / d||G||^2 = 2 (||G|| - 1) / ||G|| at ||G||^2 = s2 (regularised by 1e-12):
    the per-row factor of the 'gp' penalty's pull-back (the 'sq' form's is 1)."""
    norm = math.sqrt(s2 + 1e-12)
    return 2.0 * (norm - 1.0) / norm


@njit(fastmath=_FM, inline="always")
def _rows4_plane_grads(dpsi, wAt, zero, i, g):
    """g[2r + c] = grad f(x_{i+r})_c, r < 4, in the plane (d = 2): the four rows' sums in one
    loop, sharing every load of the weighted directions wAt (2, K) (the input gradients of
    :func:`_feature_input_grads` and the penalty's, alike)."""
    K = dpsi.shape[1]
    wa0 = wAt[0]
    wa1 = wAt[1]
    d0 = dpsi[i]
    d1 = dpsi[i + 1]
    d2 = dpsi[i + 2]
    d3 = dpsi[i + 3]
    s00 = zero
    s01 = zero
    s10 = zero
    s11 = zero
    s20 = zero
    s21 = zero
    s30 = zero
    s31 = zero
    for k in range(K):
        u = wa0[k]
        v = wa1[k]
        s00 += d0[k] * u
        s01 += d0[k] * v
        s10 += d1[k] * u
        s11 += d1[k] * v
        s20 += d2[k] * u
        s21 += d2[k] * v
        s30 += d3[k] * u
        s31 += d3[k] * v
    g[0] = s00
    g[1] = s01
    g[2] = s10
    g[3] = s11
    g[4] = s20
    g[5] = s21
    g[6] = s30
    g[7] = s31


@njit(fastmath=_FM, inline="always")
def _penalty_rows4_plane(dpsi, At, wAt, gp, zero, sq, part, i, g):
    """Rows i..i+3 of :func:`_penalty_item` in the plane (d = 2) at once: the four rows share
    every load of the directions and every read-modify-write of ``part`` (1.5x faster than
    row by row; part[k] gets the four rows' terms summed first). g: scratch (8,)."""
    K = dpsi.shape[1]
    d0 = dpsi[i]
    d1 = dpsi[i + 1]
    d2 = dpsi[i + 2]
    d3 = dpsi[i + 3]
    _rows4_plane_grads(dpsi, wAt, zero, i, g)
    for r in range(4):
        s2 = np.float64(g[2 * r]) * np.float64(g[2 * r]) + np.float64(g[2 * r + 1]) * np.float64(g[2 * r + 1])
        sq[i + r] = s2
        coef = _gp_row_factor(s2) if gp else 1.0
        g[2 * r] = g[2 * r] * coef
        g[2 * r + 1] = g[2 * r + 1] * coef
    h00 = g[0]
    h01 = g[1]
    h10 = g[2]
    h11 = g[3]
    h20 = g[4]
    h21 = g[5]
    h30 = g[6]
    h31 = g[7]
    a0 = At[0]
    a1 = At[1]
    for k in range(K):
        p = a0[k]
        q = a1[k]
        part[k] += d0[k] * (h00 * p + h01 * q) + d1[k] * (h10 * p + h11 * q) \
            + d2[k] * (h20 * p + h21 * q) + d3[k] * (h30 * p + h31 * q)


@njit(fastmath=_FM, inline="always")
def _penalty_item(dpsi, At, wAt, gp, zero, sq, acc, lo, hi):
    """Rows lo..hi-1 of :func:`_feature_penalty` for one member (At, wAt (d, K)); in the plane
    four rows at a time (:func:`_penalty_rows4_plane`), the rest row by row."""
    K = dpsi.shape[1]
    d = At.shape[0]
    acc[:] = 0.0
    part = np.zeros(K, dtype=dpsi.dtype)
    g = np.empty(max(d, 8), dtype=dpsi.dtype)
    ag = np.empty(K, dtype=dpsi.dtype)
    rows = 0
    i = lo
    while i < hi:
        if d == 2 and i + 4 <= hi and rows + 4 <= FLUSH_ROWS:
            _penalty_rows4_plane(dpsi, At, wAt, gp, zero, sq, part, i, g)
            i += 4
            rows += 4
        else:
            di = dpsi[i]
            s2 = _row_input_grad(di, wAt, zero, g)
            sq[i] = s2
            coef = _gp_row_factor(s2) if gp else 1.0
            for c in range(d):
                g[c] = g[c] * coef
            if d == 2:  # the plane: A G_i in the same pass, no ag buffer
                g0 = g[0]
                g1 = g[1]
                a0 = At[0]
                a1 = At[1]
                for k in range(K):
                    part[k] += di[k] * (g0 * a0[k] + g1 * a1[k])
            else:
                for k in range(K):
                    ag[k] = 0.0
                for c in range(d):
                    ac = At[c]
                    gc = g[c]
                    for k in range(K):
                        ag[k] += gc * ac[k]
                for k in range(K):
                    part[k] += di[k] * ag[k]
            i += 1
            rows += 1
        if rows == FLUSH_ROWS:
            _flush(part, acc)
            rows = 0
    _flush(part, acc)


@_driver(fastmath=_FM)
def _feature_penalty(dpsi, A, w, gp, zero, sq, parts):
    """For each member m: sq[m, i] = ||G_i||^2, G_i = sum_k dpsi_ik w_k a_k, and parts[m, t] =
    sum over the rows of work item t of c_i dpsi_i * (A G_i): one read of each row of dpsi (it
    stays in L1 for the second loop), where the numpy form reads dpsi twice. dpsi (B, n, K),
    A (B, K, d), w (B, K); zero is 0 in dpsi's dtype, and each row's sums run in that dtype
    (float32 rows vectorise 8 wide), as a BLAS GEMM's would; rows are added into the float64
    parts (B, n_items, K) every FLUSH_ROWS rows. Parallel over (member, item), each with the
    same code in or out of an ensemble."""
    n_mem, n, _ = dpsi.shape
    At, wAt = _weighted_directions(A, w, dpsi)
    n_items = parts.shape[1]
    per = (n + n_items - 1) // n_items
    for q in prange(n_mem * n_items):
        m = q // n_items
        t = q - m * n_items
        _penalty_item(dpsi[m], At[m], wAt[m], gp, zero, sq[m], parts[m, t], t * per, min(n, (t + 1) * per))


def feature_penalty(dpsi, A, w, form: str):
    """Input-gradient norms sq (n,) of f = psi w and their pull-back back (K,) to w
    (see numpy_backend.feature_penalty for the formulas): one fused parallel pass over dpsi.
    Per-row sums in dpsi's float dtype, row sums and sq in float64; returned in dpsi's dtype."""
    sq, back = feature_penalty_members(np.asarray(dpsi)[None], np.asarray(A)[None], np.asarray(w)[None], form)
    return sq[0], back[0]


def feature_penalty_members(dpsi, A, w, form: str):
    """:func:`feature_penalty` of B members at once: dpsi (B, n, K), A (B, K, d), w (B, K) ->
    sq (B, n), back (B, K), member m bitwise as its own call."""
    dt = out_dtype(dpsi)
    dpsi = np.ascontiguousarray(dpsi, dtype=dt)
    n_mem, n, K = dpsi.shape
    sq = np.empty((n_mem, n))
    parts = np.empty((n_mem, _n_items(n), K))
    _feature_penalty(dpsi, np.ascontiguousarray(A), np.ascontiguousarray(w), form == "gp", dt(0), sq, parts)
    return sq.astype(dt), parts.sum(axis=1).astype(dt)


# ------------------------------------------------- fused critic ascent (feature critics) --
OPTIMIZER_CODES = {"sgd": 0, "momentum": 1, "adam": 2}


@njit  # no fast-math: numpy's element-wise operations one by one, in the same order
def _ascent_member_step(w, base, back, coef, wdg, pen_on, kind, h, nesterov, amsgrad, fresh, rate, bc2,
                        m, v, vmax, g, w_new):
    """One critic step of one member, as the numpy path computes it: the IPM gradient
    grad = base - coef * back - wdg * w (critics.feature_critic_gradient), then the optimizer
    (optimizers.py, ``maximize=True``) on g = -grad (+ its coupled weight decay h[6] * w):
    sgd w - rate g; momentum buf <- g (first step) or h[0] buf + g, w - rate (buf or
    g + h[0] buf with Nesterov); adam m <- h[2] m + h[1] g, v <- h[4] v + h[3] g^2 (amsgrad:
    vmax <- max(vmax, v)), w - rate m / (sqrt(v / bc2) + h[5]). All constants arrive rounded to
    w's dtype (h = mu, 1 - b1, b1, 1 - b2, b2, eps, weight decay). Writes w_new; returns True
    when it is finite."""
    K = w.shape[0]
    for k in range(K):
        gk = base[k]
        if pen_on:
            gk = gk - coef * back[k]
        if wdg != 0:
            gk = gk - wdg * w[k]
        gk = -gk
        if h[6] != 0:
            gk = gk + h[6] * w[k]
        g[k] = gk
    ok = True
    for k in range(K):
        gk = g[k]
        if kind == 0:
            upd = gk
        elif kind == 1:
            if fresh:
                m[k] = gk
            else:
                m[k] = h[0] * m[k] + gk
            upd = gk + h[0] * m[k] if nesterov else m[k]
        else:
            m[k] = m[k] * h[2] + gk * h[1]
            v[k] = v[k] * h[4] + (gk * gk) * h[3]
            second = v[k]
            if amsgrad:
                a = vmax[k]
                vmax[k] = a if (a >= second or a != a) else second  # np.maximum: NaN wins
                second = vmax[k]
            upd = m[k] / (np.sqrt(second / bc2) + h[5])
        wk = w[k] - upd * rate if kind == 2 else w[k] - rate * upd
        w_new[k] = wk
        if not np.isfinite(wk):
            ok = False
    return ok


@njit
def _feature_ascent(dpsi, A, w, base, coef, wdg, pen_on, kind, h, nesterov, amsgrad, fresh, rates, bc2,
                    m, v, vmax, zero, parts, done, alive):
    """``rates.shape[0]`` critic steps of each member m of an IPM random-feature critic with the
    squared gradient penalty on the fixed batch dpsi (B, n, K) and an element-wise optimizer,
    in one call: per step the penalty's pull-back (:func:`_feature_penalty` itself, the
    parallel pass the numpy-side loop calls) and then each member's update
    (:func:`_ascent_member_step`). w (B, K) is updated in place and so are the moments m, v,
    vmax; a member whose step is not finite keeps its last finite weights and stops
    (alive[m] <- False; done[m] = steps taken, the failing one included).

    No fast-math here: LLVM would otherwise be free to contract the optimizer's products and
    sums into FMAs, which the numpy path does not do."""
    n_mem, n, K = dpsi.shape
    n_items = parts.shape[1]
    sq = np.empty((n_mem, n))  # the norms: not needed by the gradient
    g = np.empty((n_mem, K), dtype=w.dtype)
    w_new = np.empty((n_mem, K), dtype=w.dtype)
    back = np.empty((n_mem, K), dtype=w.dtype)
    any_pen = False
    for b in range(n_mem):
        any_pen = any_pen or pen_on[b]
    for s in range(rates.shape[0]):
        if any_pen:
            _feature_penalty(dpsi, A, w, False, zero, sq, parts)
        for b in range(n_mem):
            if not alive[b]:
                continue
            if pen_on[b]:
                for k in range(K):
                    acc = parts[b, 0, k]
                    for t in range(1, n_items):  # in item order, as numpy's sum over the items
                        acc += parts[b, t, k]
                    back[b, k] = acc
            done[b] = s + 1
            if _ascent_member_step(w[b], base[b], back[b], coef[b], wdg[b], pen_on[b], kind, h, nesterov,
                                   amsgrad, fresh and s == 0, rates[s, b], bc2[s], m[b], v[b], vmax[b], g[b],
                                   w_new[b]):
                for k in range(K):
                    w[b, k] = w_new[b, k]
            else:
                alive[b] = False


jit_cache.attach(_feature_ascent)  # a serial entry point: cached like the parallel drivers


def feature_ascent_members(dpsi, A, w, base, coef, wd, steps):
    """Critic steps of B members of an IPM random-feature critic in one fused loop (dpsi stays
    in cache between the steps and no Python runs between them): the loop of
    ``critics.ascend_critic`` over ``critics.feature_critic_gradient`` with the squared penalty
    on the fixed batch and an element-wise optimizer, bitwise as that loop on this backend.

    Parameters
    ----------
    dpsi : (B, n, K) activation derivatives of the penalty's batch.  A : (B, K, d) directions.
    w : (B, K) weights (not modified).  base : (B, K) mean psi(y) - mean psi(x) (the IPM gradient).
    coef : (B,) float64 2 lam / n, the penalty's factor (0: no penalty for that member).
    wd : (B,) float64 critic weight decays.  steps : :class:`particlegan.model.optimizers.FusedSteps`
        (its moments are updated in place).

    Returns
    -------
    w : (B, K) new weights (the last finite ones).  finite : (B,) False for a member whose step
    was not finite (it stopped there).  done : (B,) steps taken per member (the failing one
    counted).
    """
    dt = out_dtype(w)
    dpsi = np.ascontiguousarray(dpsi, dtype=dt)
    n_mem, n, K = dpsi.shape
    w = np.array(w, dtype=dt)
    coef = np.asarray(coef, dtype=np.float64)
    h = np.array([steps.mu, 1 - steps.b1, steps.b1, 1 - steps.b2, steps.b2, steps.eps, steps.weight_decay], dtype=dt)
    done = np.zeros(n_mem, dtype=np.int64)
    alive = np.ones(n_mem, dtype=np.bool_)
    parts = np.zeros((n_mem, _n_items(n), K))
    _feature_ascent(dpsi, np.ascontiguousarray(A), w, np.ascontiguousarray(base, dtype=dt), coef.astype(dt),
                    np.asarray(wd, dtype=dt), coef > 0, OPTIMIZER_CODES[steps.kind], h, steps.nesterov,
                    steps.amsgrad, steps.fresh, steps.rates.astype(dt), steps.bc2.astype(dt), steps.m, steps.v,
                    steps.v_max, dt(0), parts, done, alive)
    return w, alive, done


# ---------------------------------------------------------------------------- NTK ----------
NTK_BLOCK_ELEMS = 1 << 22  # entries of Theta held at once (32 MB in float64)


@_driver()
def _ntk_from_gram(G, q_rows, q_cols, kind, p):
    """Overwrite a Gram block G = Z_rows Z^T with Theta entries (pairmath.ntk_entry)."""
    n, m = G.shape
    for i in prange(n):
        for j in range(m):
            G[i, j] = pm.ntk_entry(kind, pm.ntk_sigma1(G[i, j], p), q_rows[i], q_cols[j], p)


def ntk_apply(Z, F, kind: str, sigma_w: float = 1.0, sigma_b: float = 0.0) -> np.ndarray:
    """out_i = sum_j Theta(z_i, z_j) F_j: Z (N, dz), F (N, d) -> (N, d) in F's float dtype.

    Theta is built block by block (at most ``NTK_BLOCK_ELEMS`` entries at a time) and never
    stored whole when N^2 exceeds that.
    """
    Z, F = check_ntk(Z, F)
    N, dz = Z.shape
    code, p = pm.encode_ntk(kind, float(sigma_w), float(sigma_b), max(dz, 1))
    Z64 = np.ascontiguousarray(Z, dtype=np.float64)
    F64 = np.ascontiguousarray(F, dtype=np.float64)
    q = p[pm.N_SW2] * (Z64 * Z64).sum(axis=1) * p[pm.N_INV_DZ] + p[pm.N_SB2]
    out = np.empty(F64.shape)
    block = max(1, NTK_BLOCK_ELEMS // max(N, 1))
    for start in range(0, N, block):
        rows = slice(start, min(N, start + block))
        G = np.ascontiguousarray(Z64[rows] @ Z64.T)
        _ntk_from_gram(G, q[rows], q, code, p)
        out[rows] = G @ F64
    return out.astype(out_dtype(F))
