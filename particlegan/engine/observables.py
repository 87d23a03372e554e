"""Observables of a particle configuration (effective-gan-spec A2.8).

* collapse measure C = log K - H(p) = KL(p || uniform), p_k = fraction of particles whose nearest
  mode centre is k (Euclidean; the data-point version of Paper A's notebook). C = 0: perfect
  coverage; C = log K: all particles on one mode.
* modes covered: modes with at least one particle within ``hq_sigmas`` * sigma of the centre.
* high-quality fraction: fraction of particles within ``hq_sigmas`` * sigma of their nearest mode.
* radius of gyration R_g = sqrt(mean_i ||x_i - xbar||^2).
* MMD^2 (unbiased, Gaussian kernel, P1.2) between the particles and a fixed target subsample.
* centre-of-mass error ||xbar - ybar|| (the collective mode of A2.9).
* optional (``observables.kid``): KID (P1.5, cubic polynomial kernel, gamma = 1/d) between the
  particles as fake and the target samples as real features (raw positions), with its subset std
  (:func:`kid_observable`). Series ``kid`` / ``kid_std`` exist only in runs that record them.
* optional (``observables.cosine``): the paper's MNIST measures against data-point targets in
  cosine geometry (:func:`cosine_observables`): collapse_cos, quality_cos, spread_cos,
  targets_hit.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.special import xlogy

from particlegan.maths.kernels import KernelSpec, kernel_diag, make_kernel
from particlegan.maths.mmd import kid, mmd2_unbiased_from_sums

SERIES_KEYS = ("collapse", "modes_covered", "hq_fraction", "radius_gyration", "mmd2",
               "critic_grad_norm", "com_error")
KID_KEYS = ("kid", "kid_std")  # recorded only with observables.kid = true
COSINE_KEYS = ("collapse_cos", "quality_cos", "spread_cos", "targets_hit")  # observables.cosine = true


def nearest_mode(x: np.ndarray, centres: np.ndarray):
    """Index (N,) and distance (N,) of the nearest centre for each particle (chunked in N)."""
    idx = np.empty(len(x), dtype=np.int64)
    dist = np.empty(len(x))
    c2 = np.einsum("kd,kd->k", centres, centres)
    chunk = max(1, 2_000_000 // max(1, len(centres)))
    for s in range(0, len(x), chunk):
        xs = x[s:s + chunk].astype(np.float64)
        d2 = np.einsum("nd,nd->n", xs, xs)[:, None] - 2.0 * xs @ centres.T + c2[None, :]
        j = np.argmin(d2, axis=1)
        idx[s:s + chunk] = j
        dist[s:s + chunk] = np.sqrt(np.maximum(d2[np.arange(len(xs)), j], 0.0))
    return idx, dist


def collapse_measure(assign: np.ndarray, n_modes: int) -> float:
    """C = log K + sum_k p_k log p_k (0 log 0 = 0), p_k = bincount(assign)/N."""
    p = np.bincount(assign, minlength=n_modes) / len(assign)
    return float(np.log(n_modes) + xlogy(p, p).sum())


def modes_covered(x: np.ndarray, centres: np.ndarray, radius: float) -> int:
    """Number of centres with at least one particle within ``radius``."""
    covered = np.zeros(len(centres), dtype=bool)
    chunk = max(1, 2_000_000 // max(1, len(x)))
    x64 = x.astype(np.float64)
    x2 = np.einsum("nd,nd->n", x64, x64)
    for s in range(0, len(centres), chunk):
        c = centres[s:s + chunk]
        d2 = np.einsum("kd,kd->k", c, c)[:, None] - 2.0 * c @ x64.T + x2[None, :]
        covered[s:s + chunk] = d2.min(axis=1) <= radius ** 2
    return int(covered.sum())


def radius_of_gyration(x: np.ndarray) -> float:
    """R_g = sqrt(mean_i ||x_i - xbar||^2)."""
    return float(np.sqrt(np.mean(np.sum((x - x.mean(axis=0)) ** 2, axis=1))))


@dataclass(frozen=True)
class MMDReference:
    """Fixed target subsample Y (m, d) with its precomputed sum_{m != m'} k(y_m, y_m')."""

    y: np.ndarray
    kernel: KernelSpec
    yy_offdiag_sum: float


def make_mmd_reference(y: np.ndarray, sigma: float, n_max: int, rng: np.random.Generator,
                       backend) -> MMDReference:
    """Subsample at most ``n_max`` target points and precompute their kernel sum."""
    if len(y) > n_max:
        y = y[np.sort(rng.choice(len(y), n_max, replace=False))]
    kern = make_kernel("gaussian", sigma=sigma)
    return MMDReference(y=y, kernel=kern, yy_offdiag_sum=_offdiag_kernel_sum(y, kern, backend))


def _offdiag_kernel_sum(x: np.ndarray, kern, backend) -> float:
    """sum_{i != i'} k(x_i, x_i') from the backend's kernel sums minus the diagonal k(x_i, x_i)."""
    total = float(backend.kernel_sum(x, x, np.ones(len(x), dtype=x.dtype), kern).sum())
    return total - float(kernel_diag(x, kern).sum())


def mmd2_unbiased_gaussian(x: np.ndarray, ref: MMDReference, backend) -> float:
    """Unbiased MMD^2 (P1.2, :func:`particlegan.maths.mmd.mmd2_unbiased_from_sums`) between particles
    x (N, d) and the reference sample, Gaussian kernel."""
    n, m = len(x), len(ref.y)
    y = ref.y.astype(x.dtype, copy=False)
    xy = float(backend.kernel_sum(x, y, np.ones(m, dtype=x.dtype), ref.kernel).sum())
    return mmd2_unbiased_from_sums(_offdiag_kernel_sum(x, ref.kernel, backend), ref.yy_offdiag_sum, xy, n, m)


def measure(x: np.ndarray, centres: np.ndarray, sigma: float, hq_sigmas: float,
            mmd_ref: MMDReference | None, backend, target_mean: np.ndarray) -> dict:
    """All configuration observables of x (N, d) as a dict of floats (critic norm excluded)."""
    assign, dist = nearest_mode(x, centres)
    radius = hq_sigmas * sigma
    out = {
        "collapse": collapse_measure(assign, len(centres)),
        "modes_covered": float(modes_covered(x, centres, radius)),
        "hq_fraction": float(np.mean(dist <= radius)),
        "radius_gyration": radius_of_gyration(x),
        "com_error": float(np.linalg.norm(x.mean(axis=0) - target_mean)),
    }
    out["mmd2"] = mmd2_unbiased_gaussian(x, mmd_ref, backend) if mmd_ref is not None else float("nan")
    return out


def cosine_observables(x: np.ndarray, targets: np.ndarray) -> dict:
    """Observables of particles against data-point targets in cosine geometry (the paper's
    MNIST notebook; ``../shared/reference/mnist/README.md``).

    c_mi = 1 - <y_m / |y_m|, x_i / |x_i|>, a(i) = argmin_m c_mi (first index on ties),
    p_m = fraction of particles with a(i) = m.

    Returns
    -------
    dict of floats: ``collapse_cos`` C = log M + sum_m p_m log(p_m + 1e-8) (the notebook's
    form: 0 = every target hit once by N = M particles, log M = one target); ``quality_cos``
    mean_i min_m c_mi; ``spread_cos`` mean over i != j of |cos(x_i, x_j)| (data-free);
    ``targets_hit`` number of targets with p_m > 0.
    """
    xs = x.astype(np.float64)
    xs = xs / np.linalg.norm(xs, axis=1, keepdims=True)
    ys = targets.astype(np.float64)
    ys = ys / np.linalg.norm(ys, axis=1, keepdims=True)
    c = 1.0 - xs @ ys.T                                   # (N, M)
    assign = np.argmin(c, axis=1)
    p = np.bincount(assign, minlength=len(ys)) / len(xs)
    g = np.abs(xs @ xs.T)
    n = len(xs)
    return {"collapse_cos": float(np.log(len(ys)) + np.sum(p * np.log(p + 1e-8))),
            "quality_cos": float(c[np.arange(n), assign].mean()),
            "spread_cos": float((g.sum() - np.trace(g)) / (n * (n - 1))) if n > 1 else float("nan"),
            "targets_hit": float(np.count_nonzero(p))}


def kid_observable(x: np.ndarray, y: np.ndarray, n_subsets: int, subset_size: int,
                   rng: np.random.Generator) -> dict:
    """KID of the particles against the target samples on raw positions (P1.5).

    :func:`particlegan.maths.mmd.kid` with the particles as fake and the target samples as real
    features, the cubic polynomial kernel k(a, b) = (a.b / d + 1)^3, ``n_subsets`` subsets of
    min(subset_size, N, M) rows each (the cap keeps a small run valid: with N < subset_size
    every subset holds all N particles, in a random order), drawn from ``rng`` (fake indices,
    then real indices, per subset).

    Parameters
    ----------
    x : (N, d) particle positions.  y : (M, d) target samples.
    n_subsets : number of subsets (>= 1).  subset_size : requested rows per subset (>= 2).
    rng : generator of the subset draws (the run's observables stream).

    Returns
    -------
    dict with floats ``kid`` (mean over subsets of the unbiased MMD^2) and ``kid_std``
    (population std over subsets).
    """
    res = kid(y, x, n_subsets=n_subsets, subset_size=subset_size, rng=rng)
    return {"kid": res.kid, "kid_std": res.kid_std}
