"""Reference ("numpy") backend: plain, chunked numpy; the oracle the fast backends are tested against.

Pairwise quantities use direct differences x_i - y_j (no ||x||^2 - 2 x.y + ||y||^2 expansion, which
loses precision for nearby points) and are computed in float64 over row blocks so that memory stays
about ``_CHUNK_ELEMS`` numbers; results are returned in the input's float dtype.
"""
from __future__ import annotations

import numpy as np

from particlegan.errors import ConfigError, DataError
from particlegan.maths.kernels import KernelSpec, anchor, kernel_parts, ntk_matrix

NAME = "numpy"
_CHUNK_ELEMS = 1 << 22  # ~32 MB of float64 per (rows, m, d) temporary


def out_dtype(X: np.ndarray):
    """Float dtype of results: float32 for float32 input, float64 otherwise."""
    return np.float32 if X.dtype == np.float32 else np.float64


def check_points(X, Y, w=None, fname="kernel_sum"):
    """Validate shapes: X (n, d), Y (m, d), w (m,). Returns the arrays (w may be None)."""
    X, Y = np.asarray(X), np.asarray(Y)
    if X.ndim != 2 or Y.ndim != 2:
        raise DataError(f"{fname}: X and Y must be 2-d (n, d) arrays, got shapes {X.shape} and {Y.shape}")
    if X.shape[1] != Y.shape[1]:
        raise DataError(f"{fname}: X has d={X.shape[1]} columns but Y has d={Y.shape[1]}")
    if w is not None:
        w = np.asarray(w)
        if w.shape != (Y.shape[0],):
            raise DataError(f"{fname}: weights w must have shape ({Y.shape[0]},), got {w.shape}")
    return X, Y, w


def _row_blocks(n: int, per_row: int):
    step = max(1, _CHUNK_ELEMS // max(per_row, 1))
    for start in range(0, n, step):
        yield slice(start, min(n, start + step))


def _block_parts(Xb, Y64, kernel, x0):
    diff = Xb[:, None, :] - Y64[None, :, :]
    r2 = np.einsum("ijk,ijk->ij", diff, diff)
    ab = Xb @ Y64.T
    if x0 is None:
        aa = bb = 0.0
    else:
        aa = ((Xb - x0) ** 2).sum(axis=1)[:, None]
        bb = ((Y64 - x0) ** 2).sum(axis=1)[None, :]
    return diff, r2, ab, aa, bb


def kernel_sum(X, Y, w, kernel: KernelSpec) -> np.ndarray:
    """Weighted kernel sums out_i = sum_j w_j k(x_i, y_j).

    Parameters
    ----------
    X : (n, d) evaluation points.  Y : (m, d) centres.  w : (m,) weights.  kernel : KernelSpec.

    Returns
    -------
    out : (n,) in X's float dtype (computed in float64).
    """
    X, Y, w = check_points(X, Y, w, "kernel_sum")
    n, d = X.shape
    X64, Y64, w64 = (a.astype(np.float64, copy=False) for a in (X, Y, w))
    x0 = anchor(kernel, d)
    out = np.empty(n)
    for rows in _row_blocks(n, Y.shape[0] * max(d, 1)):
        _, r2, ab, aa, bb = _block_parts(X64[rows], Y64, kernel, x0)
        k = np.broadcast_to(kernel_parts(kernel, r2, ab, aa, bb, d)[0], r2.shape)
        out[rows] = k @ w64
    return out.astype(out_dtype(X))


def kernel_grad_sum(X, Y, w, kernel: KernelSpec) -> np.ndarray:
    """Weighted kernel gradient sums out_i = sum_j w_j grad_1 k(x_i, y_j).

    grad_1 k = 2 dk/dr2 (x_i - y_j) + dk/dab y_j + 2 dk/daa (x_i - x0)  (see :mod:`particlegan.maths.kernels`).

    Parameters
    ----------
    X : (n, d).  Y : (m, d).  w : (m,).  kernel : KernelSpec.

    Returns
    -------
    out : (n, d) in X's float dtype.
    """
    X, Y, w = check_points(X, Y, w, "kernel_grad_sum")
    n, d = X.shape
    X64, Y64, w64 = (a.astype(np.float64, copy=False) for a in (X, Y, w))
    x0 = anchor(kernel, d)
    out = np.empty((n, d))
    for rows in _row_blocks(n, Y.shape[0] * max(d, 1)):
        Xb = X64[rows]
        diff, r2, ab, aa, bb = _block_parts(Xb, Y64, kernel, x0)
        _, k_r2, k_ab, k_aa = kernel_parts(kernel, r2, ab, aa, bb, d)
        shape = r2.shape
        c_r2 = np.broadcast_to(k_r2, shape) * w64
        g = 2.0 * np.einsum("ij,ijk->ik", c_r2, diff)
        if np.ndim(k_ab) or k_ab != 0:
            g += (np.broadcast_to(k_ab, shape) * w64) @ Y64
        if x0 is not None:
            g += 2.0 * (np.broadcast_to(k_aa, shape) @ w64)[:, None] * (Xb - x0)
        out[rows] = g
    return out.astype(out_dtype(X))


def kernel_value_and_grad_sum(X, Y, w, kernel: KernelSpec):
    """Both sums, ((n,) values, (n, d) gradients), as :func:`kernel_sum` and :func:`kernel_grad_sum`."""
    return kernel_sum(X, Y, w, kernel), kernel_grad_sum(X, Y, w, kernel)


def pair_sum(X, Y, kernel: KernelSpec) -> float:
    """Total sum_{i,j} k(x_i, y_j) as a Python float (accumulated in float64)."""
    X, Y, _ = check_points(X, Y, None, "pair_sum")
    ones = np.ones(Y.shape[0])
    return float(kernel_sum(X.astype(np.float64), Y.astype(np.float64), ones, kernel).sum())


def random_features(X, A, b, activation: str, scale: float):
    """Random features psi = scale act(X A^T + b) and their derivative factor dpsi = scale act'(X A^T + b).

    Parameters
    ----------
    X : (n, d) points.  A : (K, d) directions.  b : (K,) offsets.
    activation : "cos" (act' = -sin) or "relu" (act' = step, 0 at the kink).  scale : float.

    Returns
    -------
    psi, dpsi : (n, K) each, in X's float dtype. For f = psi @ w, grad_x f = (dpsi * w) @ A.
    """
    X, A, b = check_features(X, A, b, activation)
    dt = out_dtype(X)
    H = X.astype(dt, copy=False) @ A.astype(dt, copy=False).T + b.astype(dt, copy=False)
    s = dt(scale)
    if activation == "cos":
        return s * np.cos(H), -s * np.sin(H)
    return s * np.maximum(H, 0), s * (H > 0).astype(dt)


def feature_mean_and_dpsi(X, A, b, activation: str, scale: float):
    """(mean_i psi_i (K,), dpsi (n, K)) of :func:`random_features`: what a critic whose objective
    is linear in f (the IPM loss) reads of the particles' features. The fast backends form it
    without writing psi; here it is the plain composition."""
    psi, dpsi = random_features(X, A, b, activation, scale)
    return psi.mean(axis=0), dpsi


def feature_input_grads(dpsi, A, w):
    """Input gradients grad f(x_i) = A^T (dpsi_i * w) (n, d) of f = psi w: one skinny GEMM
    over dpsi, dpsi (w[:, None] A), in dpsi's float dtype."""
    return dpsi @ (w[:, None] * A.astype(w.dtype, copy=False))


def feature_penalty(dpsi, A, w, form: str):
    """Input-gradient norms of a random-feature critic f = psi w and their pull-back to w.

    With G_i = grad f(x_i) = A^T (dpsi_i * w) (d,):  sq_i = ||G_i||^2 and
    back = sum_i c_i dpsi_i * (A G_i) (K,), c_i = 1 (form 'sq') or 2 (||G_i|| - 1) / ||G_i||
    (form 'gp', ||G_i|| from sq_i + 1e-12), so that d sq_i / dw = 2 dpsi_i * (A G_i).

    Parameters
    ----------
    dpsi : (n, K).  A : (K, d).  w : (K,).  form : 'sq' or 'gp'.

    Returns
    -------
    sq (n,), back (K,), in dpsi's float dtype. Two skinny GEMMs over dpsi, no (n, K) temporary.
    """
    G = dpsi @ (w[:, None] * A)                      # (n, d)
    sq = np.einsum("ij,ij->i", G, G)
    if form == "sq":
        c = np.ones_like(sq)
    else:
        norm = np.sqrt(sq + 1e-12)
        c = 2.0 * (norm - 1.0) / norm
    return sq, np.einsum("kc,kc->k", A, dpsi.T @ (c[:, None] * G))


def check_features(X, A, b, activation):
    """Validate random-feature arguments; returns X, A, b as arrays."""
    if activation not in ("cos", "relu"):
        raise ConfigError(f"unknown feature activation '{activation}'; choose cos or relu")
    X, A, b = np.asarray(X), np.asarray(A), np.asarray(b)
    if X.ndim != 2 or A.ndim != 2 or X.shape[1] != A.shape[1]:
        raise DataError(f"random_features: X (n, d) and A (K, d) must agree in d, got {X.shape} and {A.shape}")
    if b.shape != (A.shape[0],):
        raise DataError(f"random_features: b must have shape ({A.shape[0]},), got {b.shape}")
    return X, A, b


def check_members(X, A, b, activation):
    """Validate the random-feature arguments of B ensemble members: X (B, n, d), A (B, K, d),
    b (B, K). Returns them as arrays."""
    if activation not in ("cos", "relu"):
        raise ConfigError(f"unknown feature activation '{activation}'; choose cos or relu")
    X, A, b = np.asarray(X), np.asarray(A), np.asarray(b)
    if X.ndim != 3 or A.ndim != 3 or X.shape[2] != A.shape[2] or X.shape[0] != A.shape[0]:
        raise DataError(f"random features of an ensemble: X (B, n, d) and A (B, K, d) must agree in B "
                        f"and d, got {X.shape} and {A.shape}")
    if b.shape != A.shape[:2]:
        raise DataError(f"random features of an ensemble: b must have shape {A.shape[:2]}, got {b.shape}")
    return X, A, b


def loop_members(op, n_arrays: int):
    """``op`` applied to each member of an ensemble: its first ``n_arrays`` arguments carry a
    leading member axis B, the others are shared; the results are stacked along B (a tuple
    result element-wise). The reference form of every ``*_members`` op: bitwise each member's
    own call."""
    def members(*args):
        arrays, rest = args[:n_arrays], args[n_arrays:]
        outs = [op(*(a[m] for a in arrays), *rest) for m in range(len(arrays[0]))]
        if isinstance(outs[0], tuple):
            return tuple(np.stack(part) for part in zip(*outs))
        return np.stack(outs)
    members.__name__ = f"{op.__name__}_members"
    members.__doc__ = f":func:`{op.__name__}` of each ensemble member (leading axis B), looped."
    return members


def ntk_apply(Z, F, kind: str, sigma_w: float = 1.0, sigma_b: float = 0.0) -> np.ndarray:
    """Apply the closed-form NTK: out_i = sum_j Theta(z_i, z_j) F_j.

    Parameters
    ----------
    Z : (N, dz) latent codes.  F : (N, d) per-particle vectors.  kind, sigma_w, sigma_b : see
    :func:`particlegan.maths.kernels.ntk_matrix`.

    Returns
    -------
    out : (N, d) in F's float dtype (Theta built in float64 over row blocks).
    """
    Z, F = check_ntk(Z, F)
    F64 = F.astype(np.float64, copy=False)
    out = np.empty(F.shape)
    for rows in _row_blocks(Z.shape[0], Z.shape[0]):
        out[rows] = ntk_matrix(Z[rows], Z, kind, sigma_w, sigma_b) @ F64
    return out.astype(out_dtype(F))


def check_ntk(Z, F):
    """Validate ntk_apply arguments: Z (N, dz), F (N, d)."""
    Z, F = np.asarray(Z), np.asarray(F)
    if Z.ndim != 2 or F.ndim != 2 or Z.shape[0] != F.shape[0]:
        raise DataError(f"ntk_apply: Z (N, dz) and F (N, d) must have the same N, got {Z.shape} and {F.shape}")
    return Z, F
