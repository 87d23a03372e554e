"""MMD estimators, energy distance, KID, the relative three-sample test and the KID learning-rate rule.

Everything here follows Paper 1 of ``losses-metrics-optim-spec.md`` (Bińkowski et al.,
*Demystifying MMD GANs*):

* (P1.2) unbiased / U-statistic / biased estimators of MMD^2, taking kernel matrices;
* (P1.3) the energy distance 2E||X-Y|| - E||X-X'|| - E||Y-Y'|| (= MMD^2 of the distance kernel,
  unhalved form);
* (P1.5) KID: MMD^2_unb with the cubic polynomial kernel, averaged over random subsets;
* (P1.6) the variance estimate of MMD^2_unb (extrapolated to ``var_at_m``);
* (P1.7) the relative-similarity three-sample test (Bounliphone et al. 2016);
* (P1.8) the KID-driven learning-rate decay rule, :class:`KIDLearningRateSchedule`.

Estimators take **kernel matrices** so that they do not depend on how the kernel is evaluated:
``K_XX`` (m, m), ``K_YY`` (n, n), ``K_XY`` (m, n). None of the unbiased estimators is clipped at
zero (P1.2: KID is reported unclipped).
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
from scipy.spatial.distance import cdist
from scipy.special import ndtr

from particlegan.errors import ConfigError, DataError
from particlegan.maths.kernels import kernel_parts, make_kernel
from particlegan.store.storage import load_sample_array
from particlegan.store import checks
from particlegan.store.checks import require

__all__ = [
    "mmd2_unbiased", "mmd2_ustat", "mmd2_biased", "mmd2_and_variance", "energy_distance",
    "polynomial_kernel_matrix", "KIDResult", "kid", "load_feature_file", "kid_from_files",
    "ThreeSampleSums", "ThreeSampleResult", "three_sample_sums", "three_sample_test_from_sums",
    "three_sample_test_from_matrices", "three_sample_test", "KIDLearningRateSchedule",
]

# P1.7: the t statistic divides by sqrt(max(V, 1e-5)) (code constant).
THREE_SAMPLE_MIN_VARIANCE = 1e-5
# P1.7 / P1.8: the code tests on the first 2048 feature rows of each set.
THREE_SAMPLE_MAX_ROWS = 2048


# --------------------------------------------------------------------------------------------
# kernel-matrix validation and shared sums
# --------------------------------------------------------------------------------------------

def _as_kernel_matrices(K_XX, K_YY, K_XY, need_equal_sizes: bool = False):
    """float64 views of the three matrices after shape checks (DataError names the bad one)."""
    K_XX = np.asarray(K_XX, dtype=np.float64)
    K_YY = np.asarray(K_YY, dtype=np.float64)
    K_XY = np.asarray(K_XY, dtype=np.float64)
    for name, K in (("K_XX", K_XX), ("K_YY", K_YY)):
        if K.ndim != 2 or K.shape[0] != K.shape[1]:
            raise DataError(f"{name} must be a square 2-D matrix, got shape {K.shape}")
        if K.shape[0] < 2:
            raise DataError(f"{name} must be at least 2x2 (an unbiased estimate needs two samples), "
                            f"got shape {K.shape}")
    m, n = K_XX.shape[0], K_YY.shape[0]
    if K_XY.shape != (m, n):
        raise DataError(f"K_XY must have shape (m, n) = ({m}, {n}) to match K_XX and K_YY, got {K_XY.shape}")
    if need_equal_sizes and m != n:
        raise DataError(f"this estimator needs equal sample sizes m = n, got m = {m}, n = {n}")
    return K_XX, K_YY, K_XY


def _offdiag_sum(K: np.ndarray) -> float:
    """sum_{i != i'} K[i, i'] (S_XX / S_YY of P1.2)."""
    return float(K.sum() - np.trace(K))


# --------------------------------------------------------------------------------------------
# (P1.2) estimators
# --------------------------------------------------------------------------------------------

def mmd2_unbiased_from_sums(s_xx: float, s_yy: float, s_xy: float, m: int, n: int) -> float:
    """MMD^2_unb = S_XX / (m(m-1)) + S_YY / (n(n-1)) - 2 S_XY / (m n) from the off-diagonal sums
    S_XX, S_YY and the full cross sum S_XY (the one formula behind :func:`mmd2_unbiased` and the
    simulator's MMD^2 observable, which gets the sums from a backend's kernel sums)."""
    return s_xx / (m * (m - 1)) + s_yy / (n * (n - 1)) - 2.0 * s_xy / (m * n)


def mmd2_unbiased(K_XX, K_YY, K_XY) -> float:
    """Unbiased MMD^2 estimate with the K_XY diagonal kept (P1.2, the "unbiased" estimator).

    MMD^2_unb = S_XX / (m(m-1)) + S_YY / (n(n-1)) - 2 S_XY / (m n),
    with S_XX = sum_{i != i'} K_XX[i, i'], S_YY likewise and S_XY = sum_{i, j} K_XY[i, j].
    This is the estimator of the MMD-GAN training loss and of KID; it may be negative.

    Parameters
    ----------
    K_XX : (m, m) array, k(x_i, x_i').
    K_YY : (n, n) array, k(y_j, y_j').
    K_XY : (m, n) array, k(x_i, y_j).  m and n may differ (both >= 2).

    Returns
    -------
    float
    """
    K_XX, K_YY, K_XY = _as_kernel_matrices(K_XX, K_YY, K_XY)
    m, n = K_XY.shape
    return mmd2_unbiased_from_sums(_offdiag_sum(K_XX), _offdiag_sum(K_YY), float(K_XY.sum()), m, n)


def mmd2_ustat(K_XX, K_YY, K_XY) -> float:
    """U-statistic MMD^2 for paired samples (x_i, y_i), m = n (P1.2, ``mmd_est='u-statistic'``).

    MMD^2_U = (S_XX + S_YY) / (m(m-1)) - 2 (S_XY - tr K_XY) / (m(m-1)).

    Parameters
    ----------
    K_XX, K_YY, K_XY : (m, m) arrays each (see :func:`mmd2_unbiased`).

    Returns
    -------
    float
    """
    K_XX, K_YY, K_XY = _as_kernel_matrices(K_XX, K_YY, K_XY, need_equal_sizes=True)
    m = K_XX.shape[0]
    return (_offdiag_sum(K_XX) + _offdiag_sum(K_YY) - 2.0 * _offdiag_sum(K_XY)) / (m * (m - 1))


def mmd2_biased(K_XX, K_YY, K_XY) -> float:
    """Biased (V-statistic) MMD^2 (P1.2).

    MMD^2_b = sum_{i,i'} K_XX / m^2 + sum_{j,j'} K_YY / n^2 - 2 S_XY / (m n)  (>= 0 for a p.d. kernel).

    Parameters
    ----------
    K_XX : (m, m);  K_YY : (n, n);  K_XY : (m, n).

    Returns
    -------
    float
    """
    K_XX, K_YY, K_XY = _as_kernel_matrices(K_XX, K_YY, K_XY)
    m, n = K_XY.shape
    return float(K_XX.sum()) / m**2 + float(K_YY.sum()) / n**2 - 2.0 * float(K_XY.sum()) / (m * n)


def mmd2_and_variance(K_XX, K_YY, K_XY, var_at_m: int | None = None,
                      estimator: str = "unbiased") -> tuple[float, float]:
    """MMD^2 and the estimate of its variance (P1.6, ``_mmd2_and_variance``), m = n.

    With K~ a matrix with zeroed diagonal, t_X = K~_XX 1, t_Y = K~_YY 1, c_0 = K_XY^T 1,
    c_1 = K_XY 1, T_X = 1^T t_X, T_Y = 1^T t_Y, S = 1^T K_XY 1, F_X = ||K~_XX||_F^2,
    F_Y = ||K~_YY||_F^2, F_XY = ||K_XY||_F^2, a = t_X . c_1, b = t_Y . c_0:

    zeta_1 = (||t_X||^2 - F_X + ||t_Y||^2 - F_Y) / (m(m-1)(m-2)) - (T_X^2 + T_Y^2) / (m(m-1))^2
             + (||c_1||^2 + ||c_0||^2 - 2 F_XY) / (m^2 (m-1)) - 2 S^2 / m^4
             - 2 (a + b) / (m^2 (m-1)) + 2 (T_X + T_Y) S / (m^3 (m-1))
    zeta_2 = (F_X + F_Y) / (m(m-1)) - (T_X^2 + T_Y^2) / (m(m-1))^2 + 2 F_XY / m^2 - 2 S^2 / m^4
             - 4 (a + b) / (m^2 (m-1)) + 4 (T_X + T_Y) S / (m^3 (m-1))
    Var = 4 (M-2) / (M(M-1)) zeta_1 + 2 / (M(M-1)) zeta_2,   M = var_at_m (default m).

    The estimate can be negative for small m (P1.6); it is returned as is.

    Parameters
    ----------
    K_XX, K_YY, K_XY : (m, m) arrays, m >= 3.
    var_at_m : sample size the variance is extrapolated to (KID uses min(n_gen, n_real)); >= 3.
    estimator : "unbiased" (K_XY diagonal kept, the KID estimator) or "u-statistic".

    Returns
    -------
    (mmd2, variance) : floats.
    """
    K_XX, K_YY, K_XY = _as_kernel_matrices(K_XX, K_YY, K_XY, need_equal_sizes=True)
    m = K_XX.shape[0]
    if m < 3:
        raise DataError(f"the variance estimate needs at least 3 samples per set, got m = {m}")
    if estimator == "unbiased":
        mmd2 = mmd2_unbiased(K_XX, K_YY, K_XY)
    elif estimator == "u-statistic":
        mmd2 = mmd2_ustat(K_XX, K_YY, K_XY)
    else:
        raise ConfigError(f"estimator must be 'unbiased' or 'u-statistic', got {estimator!r}")
    M = m if var_at_m is None else int(var_at_m)
    if M < 3:
        raise ConfigError(f"var_at_m must be >= 3, got {var_at_m}")

    diag_X, diag_Y = np.diagonal(K_XX), np.diagonal(K_YY)
    t_X = K_XX.sum(axis=1) - diag_X
    t_Y = K_YY.sum(axis=1) - diag_Y
    c_0 = K_XY.sum(axis=0)
    c_1 = K_XY.sum(axis=1)
    T_X, T_Y, S = t_X.sum(), t_Y.sum(), c_0.sum()
    F_X = np.sum(K_XX**2) - np.sum(diag_X**2)
    F_Y = np.sum(K_YY**2) - np.sum(diag_Y**2)
    F_XY = np.sum(K_XY**2)
    a, b = t_X @ c_1, t_Y @ c_0

    m1, m2 = m - 1, m - 2
    zeta1 = ((t_X @ t_X - F_X + t_Y @ t_Y - F_Y) / (m * m1 * m2)
             - (T_X**2 + T_Y**2) / (m * m1) ** 2
             + (c_1 @ c_1 + c_0 @ c_0 - 2.0 * F_XY) / (m * m * m1)
             - 2.0 * S**2 / m**4
             - 2.0 * (a + b) / (m * m * m1)
             + 2.0 * (T_X + T_Y) * S / (m**3 * m1))
    zeta2 = ((F_X + F_Y) / (m * m1)
             - (T_X**2 + T_Y**2) / (m * m1) ** 2
             + 2.0 * F_XY / m**2
             - 2.0 * S**2 / m**4
             - 4.0 * (a + b) / (m * m * m1)
             + 4.0 * (T_X + T_Y) * S / (m**3 * m1))
    variance = 4.0 * (M - 2) / (M * (M - 1)) * zeta1 + 2.0 / (M * (M - 1)) * zeta2
    return float(mmd2), float(variance)


# --------------------------------------------------------------------------------------------
# (P1.3) energy distance
# --------------------------------------------------------------------------------------------

def _as_samples(A, name: str, min_rows: int = 1) -> np.ndarray:
    A = np.asarray(A, dtype=np.float64)
    if A.ndim != 2:
        raise DataError(f"{name} must be a 2-D (n_samples, dim) array, got shape {A.shape}")
    if A.shape[0] < min_rows:
        raise DataError(f"{name} needs at least {min_rows} rows, got {A.shape[0]}")
    return A


def energy_distance(X, Y, biased: bool = False) -> float:
    """Energy distance D_E = 2 E||X-Y|| - E||X-X'|| - E||Y-Y'|| (P1.3, unhalved form).

    Unbiased (default): the within-sample means exclude i = i',
        D_E = 2/(m n) sum_{i,j} ||x_i - y_j|| - 1/(m(m-1)) sum_{i != i'} ||x_i - x_i'||
              - 1/(n(n-1)) sum_{j != j'} ||y_j - y_j'||,
    which equals :func:`mmd2_unbiased` with the distance kernel
    K(a, b) = ||a - x0|| + ||b - x0|| - ||a - b|| for any anchor x0.
    ``biased=True`` divides the within-sample sums by m^2 and n^2 instead (the zero diagonal is
    included), which equals :func:`mmd2_biased` with the same kernel. Exact norms are used (no
    1e-5 regulariser).

    Parameters
    ----------
    X : (m, d) array;  Y : (n, d) array  (m, n >= 2 unless ``biased``).
    biased : see above.

    Returns
    -------
    float
    """
    min_rows = 1 if biased else 2
    X = _as_samples(X, "X", min_rows)
    Y = _as_samples(Y, "Y", min_rows)
    if X.shape[1] != Y.shape[1]:
        raise DataError(f"X and Y must have the same number of columns, got {X.shape[1]} and {Y.shape[1]}")
    m, n = X.shape[0], Y.shape[0]
    cross = cdist(X, Y).mean()
    sum_xx = cdist(X, X).sum()  # the diagonal is exactly zero, so sum over i != i' is the full sum
    sum_yy = cdist(Y, Y).sum()
    if biased:
        return float(2.0 * cross - sum_xx / m**2 - sum_yy / n**2)
    return float(2.0 * cross - sum_xx / (m * (m - 1)) - sum_yy / (n * (n - 1)))


# --------------------------------------------------------------------------------------------
# (P1.5) KID
# --------------------------------------------------------------------------------------------

def polynomial_kernel_matrix(A, B, degree: int = 3, gamma: float | None = None,
                             coef0: float = 1.0) -> np.ndarray:
    """Polynomial kernel matrix K[i, j] = (gamma <a_i, b_j> + coef0)^degree (P1.5).

    KID uses degree 3, gamma = 1/d (``gamma=None``) and coef0 = 1.

    Parameters
    ----------
    A : (m, d) array;  B : (n, d) array.
    degree : positive integer.
    gamma : scale of the dot product; None means 1/d.
    coef0 : additive constant.

    Returns
    -------
    (m, n) float64 array.
    """
    A = _as_samples(A, "A")
    B = _as_samples(B, "B")
    if A.shape[1] != B.shape[1]:
        raise DataError(f"A and B must have the same number of columns, got {A.shape[1]} and {B.shape[1]}")
    if int(degree) != degree or degree < 1:
        raise ConfigError(f"degree must be a positive integer, got {degree}")
    # the kernels module's formula on the dot products alone (no (m, n, d) differences)
    spec = make_kernel("polynomial", degree=int(degree), gamma=gamma, coef0=coef0)
    return kernel_parts(spec, None, A.astype(np.float64, copy=False) @ B.astype(np.float64, copy=False).T,
                        0.0, 0.0, A.shape[1])[0]


@dataclass
class KIDResult:
    """KID summary over subsets (P1.5).

    Attributes
    ----------
    kid : mean of MMD^2_unb over subsets.
    kid_std : np.std of the subset values (ddof = 0).
    n_subsets, subset_size : the subset scheme actually used.
    values : (n_subsets,) per-subset MMD^2_unb.
    variance : mean over subsets of the P1.6 variance estimate extrapolated to
        var_at_m = min(n_fake, n_real), or None when not requested.
    """

    kid: float
    kid_std: float
    n_subsets: int
    subset_size: int
    values: np.ndarray = field(repr=False)
    variance: float | None = None

    def to_dict(self, include_values: bool = False) -> dict:
        """Plain-Python dict (JSON-ready): kid, kid_std, n_subsets, subset_size [, variance, values]."""
        out = {"kid": float(self.kid), "kid_std": float(self.kid_std),
               "n_subsets": int(self.n_subsets), "subset_size": int(self.subset_size)}
        if self.variance is not None:
            out["variance"] = float(self.variance)
        if include_values:
            out["values"] = [float(v) for v in self.values]
        return out


def _check_index_subset(idx, n_rows: int, what: str, k: int) -> np.ndarray:
    idx = np.asarray(idx)
    if idx.ndim != 1 or not np.issubdtype(idx.dtype, np.integer):
        raise ConfigError(f"subset {k}: {what} indices must be a 1-D integer array")
    if idx.size and (idx.min() < 0 or idx.max() >= n_rows):
        raise ConfigError(f"subset {k}: {what} indices must lie in [0, {n_rows})")
    if np.unique(idx).size != idx.size:
        raise ConfigError(f"subset {k}: {what} indices repeat (subsets are drawn without replacement)")
    return idx


def kid(real_features, fake_features, n_subsets: int = 100, subset_size: int = 1000, degree: int = 3,
        gamma: float | None = None, coef0: float = 1.0, rng=None, return_variance: bool = False,
        subsets: Sequence[tuple] | None = None) -> KIDResult:
    """Kernel Inception Distance: MMD^2_unb with the polynomial kernel, averaged over subsets (P1.5).

    For each subset, ``subset_size`` fake rows and then ``subset_size`` real rows are drawn
    without replacement with a numpy Generator, and MMD^2_unb(fake subset, real subset) is
    computed (P1.2). KID is the mean over subsets and ``kid_std`` the population std (ddof = 0).
    The effective subset size is min(subset_size, n_real, n_fake) (spec 1.6 item 5).

    Parameters
    ----------
    real_features : (n_real, d) array.
    fake_features : (n_fake, d) array.
    n_subsets : number of random subsets (ignored when ``subsets`` is given).
    subset_size : requested rows per subset (ignored when ``subsets`` is given).
    degree, gamma, coef0 : polynomial kernel, see :func:`polynomial_kernel_matrix` (gamma None -> 1/d).
    rng : numpy Generator, an integer seed, or None (fresh entropy).
    return_variance : also return the mean P1.6 variance estimate, extrapolated to
        var_at_m = min(n_fake, n_real).
    subsets : explicit ``[(idx_fake, idx_real), ...]`` integer index arrays (equal lengths, no
        repeats) to use instead of random draws, e.g. to compare with another implementation.

    Returns
    -------
    KIDResult
    """
    real = _as_samples(real_features, "real_features", 2)
    fake = _as_samples(fake_features, "fake_features", 2)
    if real.shape[1] != fake.shape[1]:
        raise DataError(f"real and fake features must have the same number of columns, "
                        f"got {real.shape[1]} and {fake.shape[1]}")
    n_real, n_fake = real.shape[0], fake.shape[0]
    if subsets is None:
        if int(n_subsets) != n_subsets or n_subsets < 1:
            raise ConfigError(f"n_subsets must be a positive integer, got {n_subsets}")
        if int(subset_size) != subset_size or subset_size < 2:
            raise ConfigError(f"subset_size must be an integer >= 2, got {subset_size}")
        size = int(min(subset_size, n_real, n_fake))
        gen = rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)
        pairs = []
        for _ in range(int(n_subsets)):
            idx_fake = gen.choice(n_fake, size, replace=False)
            idx_real = gen.choice(n_real, size, replace=False)
            pairs.append((idx_fake, idx_real))
    else:
        if len(subsets) == 0:
            raise ConfigError("subsets must hold at least one (idx_fake, idx_real) pair")
        pairs = []
        for k, pair in enumerate(subsets):
            if len(pair) != 2:
                raise ConfigError(f"subset {k} must be a pair (idx_fake, idx_real)")
            idx_fake = _check_index_subset(pair[0], n_fake, "fake", k)
            idx_real = _check_index_subset(pair[1], n_real, "real", k)
            pairs.append((idx_fake, idx_real))
        sizes = {len(a) for a, _ in pairs} | {len(b) for _, b in pairs}
        if len(sizes) != 1:
            raise ConfigError(f"all explicit subsets must have one common size, got sizes {sorted(sizes)}")
        size = sizes.pop()
        if size < 2:
            raise ConfigError(f"explicit subsets need at least 2 rows each, got {size}")
    if return_variance and size < 3:
        raise DataError(f"the KID variance needs subsets of at least 3 rows, got {size}")

    if gamma is None:
        gamma = 1.0 / real.shape[1]  # P1.5: gamma = 1/d, fixed by the feature dimension
    var_at_m = min(n_fake, n_real)
    values = np.empty(len(pairs))
    variances = np.empty(len(pairs))
    for k, (idx_fake, idx_real) in enumerate(pairs):
        F, R = fake[idx_fake], real[idx_real]
        K_FF = polynomial_kernel_matrix(F, F, degree, gamma, coef0)
        K_RR = polynomial_kernel_matrix(R, R, degree, gamma, coef0)
        K_FR = polynomial_kernel_matrix(F, R, degree, gamma, coef0)
        if return_variance:
            values[k], variances[k] = mmd2_and_variance(K_FF, K_RR, K_FR, var_at_m=var_at_m)
        else:
            values[k] = mmd2_unbiased(K_FF, K_RR, K_FR)
    return KIDResult(kid=float(values.mean()), kid_std=float(values.std()), n_subsets=len(pairs),
                     subset_size=int(size), values=values,
                     variance=float(variances.mean()) if return_variance else None)


def load_feature_file(path) -> np.ndarray:
    """Load a (n, d) feature matrix (n >= 2) from ``.npy`` or ``.npz`` (``FILE.npz:NAME``) as float64.

    See :func:`particlegan.store.storage.load_sample_array` (allow_pickle=False; DataError naming the
    file and the problem for anything but a finite 2-D real array).
    """
    return load_sample_array(path, "feature", min_rows=2)


def kid_from_files(real_path, fake_path, n_subsets: int = 100, subset_size: int = 1000,
                   seed: int | None = 0, return_variance: bool | None = False) -> KIDResult:
    """KID between two feature files (the ``particlegan kid`` command); see :func:`kid`.

    Parameters
    ----------
    real_path, fake_path : ``.npy``/``.npz`` files read by :func:`load_feature_file`.
    n_subsets, subset_size : subset scheme (P1.5; default 100 x 1000).
    seed : seed of the numpy Generator that draws the subsets.
    return_variance : see :func:`kid`; None: only when the subsets have at least 3 rows.

    Returns
    -------
    KIDResult
    """
    real = load_feature_file(real_path)
    fake = load_feature_file(fake_path)
    if real.shape[1] != fake.shape[1]:
        raise DataError(f"column mismatch: '{real_path}' has {real.shape[1]} columns but "
                        f"'{fake_path}' has {fake.shape[1]}")
    if return_variance is None:  # "when possible": the variance estimate needs 3 rows per subset
        return_variance = min(subset_size, real.shape[0], fake.shape[0]) >= 3
    return kid(real, fake, n_subsets=n_subsets, subset_size=subset_size, rng=seed,
               return_variance=return_variance)


# --------------------------------------------------------------------------------------------
# (P1.7) relative-similarity three-sample test
# --------------------------------------------------------------------------------------------

@dataclass(eq=False)  # identity equality: an ndarray field makes field-wise == ambiguous
class ThreeSampleSums:
    """Kernel sums of one sample W against the fixed reference X, both of size m (P1.7).

    These are all the test needs about W, so an evaluation can be stored and tested later
    against a newer sample (P1.8 keeps them in a FIFO memory).

    Attributes
    ----------
    m : sample size.
    T : 1^T t_W with t_W = K~_WW 1 (zero-diagonal row sums).
    t_sq : ||t_W||^2.
    F_within : ||K~_WW||_F^2.
    S_cross : 1^T K_XW 1.
    cross_rows : (m,) w_1 = K_XW 1 (indexed by the X rows; needed for E_x mu_Y mu_Z).
    cross_cols_sq : ||w_0||^2 with w_0 = K_XW^T 1.
    F_cross : ||K_XW||_F^2.
    t_dot_cols : t_W . w_0.
    """

    m: int
    T: float
    t_sq: float
    F_within: float
    S_cross: float
    cross_rows: np.ndarray = field(repr=False)
    cross_cols_sq: float
    F_cross: float
    t_dot_cols: float

    SCALAR_FIELDS = ("T", "t_sq", "F_within", "S_cross", "cross_cols_sq", "F_cross", "t_dot_cols")

    def scalars(self) -> np.ndarray:
        """(7,) float array of the scalar fields in ``SCALAR_FIELDS`` order (for checkpoints)."""
        return np.array([getattr(self, f) for f in self.SCALAR_FIELDS], dtype=np.float64)

    @classmethod
    def from_arrays(cls, scalars: np.ndarray, cross_rows: np.ndarray) -> "ThreeSampleSums":
        """Inverse of (``scalars()``, ``cross_rows``)."""
        scalars = np.asarray(scalars, dtype=np.float64)
        cross_rows = np.asarray(cross_rows, dtype=np.float64)
        if scalars.shape != (len(cls.SCALAR_FIELDS),) or cross_rows.ndim != 1:
            raise DataError(f"three-sample sums have the wrong shape: scalars {scalars.shape}, "
                            f"cross_rows {cross_rows.shape}")
        values = {f: float(v) for f, v in zip(cls.SCALAR_FIELDS, scalars)}
        return cls(m=cross_rows.shape[0], cross_rows=cross_rows, **values)


@dataclass
class ThreeSampleResult:
    """Outcome of the three-sample test (P1.7): Delta, its variance V, t and p = Phi(t)."""

    delta: float
    variance: float
    t: float
    p: float

    def __iter__(self):  # allows ``delta, variance, t, p = three_sample_test(...)``
        return iter((self.delta, self.variance, self.t, self.p))


def three_sample_sums(K_XW, K_WW) -> ThreeSampleSums:
    """The P1.7 sums of a sample W against the reference X.

    Parameters
    ----------
    K_XW : (m, m) array, k(x_i, w_j).
    K_WW : (m, m) array, k(w_j, w_j').

    Returns
    -------
    ThreeSampleSums
    """
    K_XW = np.asarray(K_XW, dtype=np.float64)
    K_WW = np.asarray(K_WW, dtype=np.float64)
    if K_WW.ndim != 2 or K_WW.shape[0] != K_WW.shape[1] or K_WW.shape[0] < 3:
        raise DataError(f"K_WW must be a square matrix of size >= 3, got shape {K_WW.shape}")
    if K_XW.shape != K_WW.shape:
        raise DataError(f"K_XW must have the shape of K_WW {K_WW.shape} (equal sample sizes), got {K_XW.shape}")
    diag = np.diagonal(K_WW)
    t = K_WW.sum(axis=1) - diag
    cols = K_XW.sum(axis=0)
    rows = K_XW.sum(axis=1)
    return ThreeSampleSums(m=K_WW.shape[0], T=float(t.sum()), t_sq=float(t @ t),
                           F_within=float(np.sum(K_WW**2) - np.sum(diag**2)), S_cross=float(cols.sum()),
                           cross_rows=rows, cross_cols_sq=float(cols @ cols), F_cross=float(np.sum(K_XW**2)),
                           t_dot_cols=float(t @ cols))


def three_sample_test_from_sums(sums_Y: ThreeSampleSums, sums_Z: ThreeSampleSums) -> ThreeSampleResult:
    """Relative-similarity test of Y (new) against Z (old) w.r.t. the reference X (P1.7).

    Per sample W in {Y, Z} (all of size m):
    mu_WW = T_W/(m(m-1)), mu_XW = S_XW/m^2, E_w mu_W^2 = (||t_W||^2 - F_W)/(m(m-1)(m-2)),
    E_x mu_W^2 = (||w_1||^2 - F_XW)/(m^2(m-1)), E_w mu_X^2 = (||w_0||^2 - F_XW)/(m^2(m-1)),
    E_w mu_W mu_X = t_W.w_0/(m^2(m-1)), E k_ww^2 = F_W/(m(m-1)), E k_xw^2 = F_XW/m^2, and
    E_x mu_Y mu_Z = y_1.z_1/m^3.  Then

    Delta = mu_YY - 2 mu_XY - mu_ZZ + 2 mu_XZ = MMD^2_unb(X, Y) - MMD^2_unb(X, Z),
    V = 4(m-2)/(m(m-1)) [sum_W (E_w mu_W^2 - mu_WW^2 + E_x mu_W^2 - mu_XW^2 + E_w mu_X^2 - mu_XW^2
                                - 2 E_w mu_W mu_X + 2 mu_WW mu_XW) - 2 E_x mu_Y mu_Z + 2 mu_XY mu_XZ]
      + 2/(m(m-1)) [sum_W (E k_ww^2 - mu_WW^2 + 2 E k_xw^2 - 2 mu_XW^2 - 4 E_w mu_W mu_X
                           + 4 mu_WW mu_XW) - 4 E_x mu_Y mu_Z + 4 mu_XY mu_XZ],
    t = Delta / sqrt(max(V, 1e-5)),  p = Phi(t).

    A small p means Y is significantly closer to X than Z is.

    Returns
    -------
    ThreeSampleResult (delta, variance, t, p)
    """
    if sums_Y.m != sums_Z.m or sums_Y.cross_rows.shape != sums_Z.cross_rows.shape:
        raise DataError(f"the two samples must have the same size and the same reference X, "
                        f"got m = {sums_Y.m} and m = {sums_Z.m}")
    m = sums_Y.m
    mm1 = m * (m - 1)

    def moments(s: ThreeSampleSums):
        mu_ww = s.T / mm1
        mu_xw = s.S_cross / m**2
        e_w_muw2 = (s.t_sq - s.F_within) / (mm1 * (m - 2))
        e_x_muw2 = (s.cross_rows @ s.cross_rows - s.F_cross) / (m * mm1)
        e_w_mux2 = (s.cross_cols_sq - s.F_cross) / (m * mm1)
        e_w_muw_mux = s.t_dot_cols / (m * mm1)
        e_kww2 = s.F_within / mm1
        e_kxw2 = s.F_cross / m**2
        first = (e_w_muw2 - mu_ww**2 + e_x_muw2 - mu_xw**2 + e_w_mux2 - mu_xw**2
                 - 2.0 * e_w_muw_mux + 2.0 * mu_ww * mu_xw)
        second = (e_kww2 - mu_ww**2 + 2.0 * e_kxw2 - 2.0 * mu_xw**2 - 4.0 * e_w_muw_mux
                  + 4.0 * mu_ww * mu_xw)
        return mu_ww, mu_xw, first, second

    mu_yy, mu_xy, first_y, second_y = moments(sums_Y)
    mu_zz, mu_xz, first_z, second_z = moments(sums_Z)
    e_x_muy_muz = float(sums_Y.cross_rows @ sums_Z.cross_rows) / m**3
    delta = mu_yy - 2.0 * mu_xy - mu_zz + 2.0 * mu_xz
    variance = (4.0 * (m - 2) / mm1 * (first_y + first_z - 2.0 * e_x_muy_muz + 2.0 * mu_xy * mu_xz)
                + 2.0 / mm1 * (second_y + second_z - 4.0 * e_x_muy_muz + 4.0 * mu_xy * mu_xz))
    t = delta / np.sqrt(max(variance, THREE_SAMPLE_MIN_VARIANCE))
    return ThreeSampleResult(delta=float(delta), variance=float(variance), t=float(t), p=float(ndtr(t)))


def three_sample_test_from_matrices(K_XY, K_YY, K_XZ, K_ZZ) -> ThreeSampleResult:
    """P1.7 test from kernel matrices, all (m, m): see :func:`three_sample_test_from_sums`."""
    return three_sample_test_from_sums(three_sample_sums(K_XY, K_YY), three_sample_sums(K_XZ, K_ZZ))


def three_sample_test(X, Y, Z, kernel: Callable | None = None, max_rows: int | None = None) -> ThreeSampleResult:
    """Is the new sample Y closer to the reference X than the old sample Z? (P1.7)

    Parameters
    ----------
    X : (m, d) reference (real) sample.
    Y : (m, d) new sample (current generator).
    Z : (m, d) old sample (earlier evaluation).
    kernel : callable (A (p, d), B (q, d)) -> (p, q) kernel matrix; default the KID polynomial
        kernel (degree 3, gamma = 1/d, coef0 = 1).
    max_rows : if given, use only the first min(max_rows, sizes) rows of each set (the code uses
        the first 2048); otherwise all three sets must have the same number of rows.

    Returns
    -------
    ThreeSampleResult, unpackable as (delta, variance, t, p) with p = Phi(t).
    """
    X = _as_samples(X, "X", 3)
    Y = _as_samples(Y, "Y", 3)
    Z = _as_samples(Z, "Z", 3)
    if not (X.shape[1] == Y.shape[1] == Z.shape[1]):
        raise DataError(f"X, Y and Z must have the same number of columns, got "
                        f"{X.shape[1]}, {Y.shape[1]}, {Z.shape[1]}")
    if max_rows is not None:
        m = min(int(max_rows), X.shape[0], Y.shape[0], Z.shape[0])
        X, Y, Z = X[:m], Y[:m], Z[:m]
    elif not (X.shape[0] == Y.shape[0] == Z.shape[0]):
        raise DataError(f"X, Y and Z must have the same number of rows, got "
                        f"{X.shape[0]}, {Y.shape[0]}, {Z.shape[0]} (or pass max_rows)")
    if kernel is None:
        kernel = polynomial_kernel_matrix
    return three_sample_test_from_matrices(kernel(X, Y), kernel(Y, Y), kernel(X, Z), kernel(Z, Z))


# --------------------------------------------------------------------------------------------
# (P1.8) KID-adaptive learning-rate rule
# --------------------------------------------------------------------------------------------

class KIDLearningRateSchedule:
    """KID-driven learning-rate decay by the relative three-sample test (P1.8).

    Every ``frequency`` generator steps (:meth:`due`), :meth:`update` summarises the current
    features against the fixed real features (first ``max_rows`` rows of each, P1.7) and:

    * while the memory holds fewer than ``window`` entries: appends the summary, no test;
    * otherwise tests the current sample Y against Z = the oldest entry, p = Phi(t) (P1.7):
        - p > p_threshold (no significant improvement): ``chances += 1``; if
          ``chances >= patience``: lr <- max(factor * lr, floor), memory <- the last
          ``keep_after_decay`` entries of (memory + [current]) (default ``patience``, i.e. the
          2 most recent old entries plus the current one), chances <- 0. A failure that does
          not trigger a decay leaves the memory unchanged (the next test uses the same Z), as in
          the reference code;
        - otherwise (improvement): slide the window (drop the oldest, append the current) and
          reset chances to 0.

    The critic learning rate is tied to the generator's: lr_D = lr * lr_D0 / lr_G0, i.e.
    ``lr_D0 * schedule.lr_ratio`` (:meth:`critic_lr`).

    Config keys (wired by the run loop; documented here): ``schedule.kind = "kid"``,
    ``schedule.every`` (= frequency, 2000; 500 for MNIST), ``schedule.window`` (10),
    ``schedule.p_threshold`` (0.1), ``schedule.patience`` (3), ``schedule.factor`` (0.5),
    ``schedule.floor`` (1e-6). See :meth:`from_config`.

    Parameters
    ----------
    lr : initial generator learning rate lr_G0 (> 0).
    frequency : evaluation cadence in generator steps.
    window : FIFO memory length n.
    p_threshold : p above which a test counts as a failure.
    patience : consecutive failures that trigger a decay.
    factor : multiplicative decay in (0, 1).
    floor : lower bound of lr.
    keep_after_decay : memory length kept after a decay (default: ``patience``, as in the code).
    max_rows : rows of each feature set used by the test (2048 in the code).
    degree, gamma, coef0 : the polynomial KID kernel (gamma None -> 1/d).
    p_value_fn : optional replacement of the test, ``(sums_current, sums_oldest) -> p``
        (e.g. to script p-values in tests).
    """

    CONFIG_KEYS = ("kind", "every", "window", "p_threshold", "patience", "factor", "floor")

    def __init__(self, lr: float, frequency: int = 2000, window: int = 10, p_threshold: float = 0.1,
                 patience: int = 3, factor: float = 0.5, floor: float = 1e-6,
                 keep_after_decay: int | None = None, max_rows: int = THREE_SAMPLE_MAX_ROWS,
                 degree: int = 3, gamma: float | None = None, coef0: float = 1.0,
                 p_value_fn: Callable[[ThreeSampleSums, ThreeSampleSums], float] | None = None):
        def positive_int(name, v):
            return int(require(f"schedule.{name}", v, checks.integer, checks.at_least(1)))

        lr = float(require("schedule learning rate", lr, checks.finite, checks.positive))
        p_threshold = require("schedule.p_threshold", p_threshold, checks.real, checks.unit_closed)
        factor = require("schedule.factor", factor, checks.real, checks.unit_open)
        floor = require("schedule.floor", floor, checks.finite, checks.nonneg)
        self.frequency = positive_int("every", frequency)
        self.window = positive_int("window", window)
        self.patience = positive_int("patience", patience)
        self.keep_after_decay = self.patience if keep_after_decay is None else positive_int(
            "keep_after_decay", keep_after_decay)
        self.max_rows = int(require("schedule.max_rows", max_rows, checks.integer, checks.at_least(3)))
        self.p_threshold = float(p_threshold)
        self.factor = float(factor)
        self.floor = float(floor)
        self.degree, self.gamma, self.coef0 = degree, gamma, coef0
        self.p_value_fn = p_value_fn
        self.initial_lr = float(lr)
        self.lr = float(lr)
        self.chances = 0
        self.n_evaluations = 0
        self.n_tests = 0
        self.n_decays = 0
        self.last_p_value = float("nan")
        self.memory: list[ThreeSampleSums] = []

    @classmethod
    def from_config(cls, section: dict, lr: float, **kwargs) -> "KIDLearningRateSchedule":
        """Build from a ``schedule`` config section (keys in ``CONFIG_KEYS``; ``kind`` must be "kid")."""
        unknown = set(section) - set(cls.CONFIG_KEYS)
        if unknown:
            raise ConfigError(f"unknown schedule key(s): {', '.join(sorted(unknown))}")
        if section.get("kind", "kid") != "kid":
            raise ConfigError(f"schedule.kind must be 'kid' for the KID schedule, got {section['kind']!r}")
        rename = {"every": "frequency"}
        params = {rename.get(k, k): v for k, v in section.items() if k != "kind"}
        return cls(lr, **params, **kwargs)

    # -- queries ---------------------------------------------------------------------------
    @property
    def lr_ratio(self) -> float:
        """lr / lr_G0: multiply any tied learning rate (e.g. the critic's lr_D0) by this."""
        return self.lr / self.initial_lr

    def critic_lr(self, critic_lr0: float) -> float:
        """lr_D = lr * lr_D0 / lr_G0 (P1.8)."""
        return float(critic_lr0) * self.lr_ratio

    def due(self, step: int) -> bool:
        """True on evaluation steps (``step % frequency == 0``; step counts generator updates)."""
        return int(step) % self.frequency == 0

    # -- updates ---------------------------------------------------------------------------
    def summarize(self, real_features, current_features) -> ThreeSampleSums:
        """P1.7 sums of the current features against the real ones (first ``max_rows`` rows)."""
        real = _as_samples(real_features, "real_features", 3)
        cur = _as_samples(current_features, "current_features", 3)
        if real.shape[1] != cur.shape[1]:
            raise DataError(f"real and current features must have the same number of columns, "
                            f"got {real.shape[1]} and {cur.shape[1]}")
        m = min(self.max_rows, real.shape[0], cur.shape[0])
        X, Y = real[:m], cur[:m]
        gamma = 1.0 / X.shape[1] if self.gamma is None else self.gamma
        return three_sample_sums(polynomial_kernel_matrix(X, Y, self.degree, gamma, self.coef0),
                                 polynomial_kernel_matrix(Y, Y, self.degree, gamma, self.coef0))

    def update(self, step: int, real_features, current_features) -> float:
        """Evaluate on a due step (else do nothing) and return the (possibly decayed) lr.

        ``real_features`` must be the same array at every call (the stored sums refer to it).
        """
        if not self.due(step):
            return self.lr
        return self.update_from_sums(self.summarize(real_features, current_features))

    def update_from_sums(self, current: ThreeSampleSums) -> float:
        """One evaluation with precomputed sums (the P1.8 memory / chances / reset logic)."""
        if self.memory and current.m != self.memory[0].m:
            raise DataError(f"evaluation sample size changed from {self.memory[0].m} to {current.m}; "
                            f"the three-sample test needs a fixed size")
        self.n_evaluations += 1
        if len(self.memory) < self.window:
            self.memory.append(current)
            return self.lr
        oldest = self.memory[0]
        if self.p_value_fn is not None:
            p = float(self.p_value_fn(current, oldest))
        else:
            p = three_sample_test_from_sums(current, oldest).p
        self.n_tests += 1
        self.last_p_value = p
        if p > self.p_threshold:
            self.chances += 1
            if self.chances >= self.patience:
                self.lr = max(self.factor * self.lr, self.floor)
                self.memory = (self.memory + [current])[-self.keep_after_decay:]
                self.chances = 0
                self.n_decays += 1
        else:
            self.memory = self.memory[1:] + [current]
            self.chances = 0
        return self.lr

    # -- checkpointing ---------------------------------------------------------------------
    def state_dict(self) -> dict:
        """Plain numbers and float arrays describing the mutable state (for checkpoints).

        Keys: lr, initial_lr, chances, n_evaluations, n_tests, n_decays, last_p_value,
        memory_scalars (k, 7), memory_cross_rows (k, m).
        """
        k = len(self.memory)
        m = self.memory[0].m if k else 0
        scalars = (np.stack([s.scalars() for s in self.memory]) if k
                   else np.zeros((0, len(ThreeSampleSums.SCALAR_FIELDS))))
        rows = np.stack([s.cross_rows for s in self.memory]) if k else np.zeros((0, m))
        return {"lr": self.lr, "initial_lr": self.initial_lr, "chances": self.chances,
                "n_evaluations": self.n_evaluations, "n_tests": self.n_tests, "n_decays": self.n_decays,
                "last_p_value": self.last_p_value, "memory_scalars": scalars, "memory_cross_rows": rows}

    def load_state_dict(self, state: dict) -> None:
        """Restore what :meth:`state_dict` returned (hyper-parameters come from the constructor)."""
        required = ("lr", "initial_lr", "chances", "n_evaluations", "n_tests", "n_decays",
                    "last_p_value", "memory_scalars", "memory_cross_rows")
        missing = [k for k in required if k not in state]
        if missing:
            raise DataError(f"schedule state is missing key(s): {', '.join(missing)}")
        scalars = np.asarray(state["memory_scalars"], dtype=np.float64)
        rows = np.asarray(state["memory_cross_rows"], dtype=np.float64)
        if scalars.ndim != 2 or rows.ndim != 2 or scalars.shape[0] != rows.shape[0]:
            raise DataError(f"schedule state memory arrays are inconsistent: {scalars.shape} and {rows.shape}")
        self.lr = float(state["lr"])
        self.initial_lr = float(state["initial_lr"])
        self.chances = int(state["chances"])
        self.n_evaluations = int(state["n_evaluations"])
        self.n_tests = int(state["n_tests"])
        self.n_decays = int(state["n_decays"])
        self.last_p_value = float(state["last_p_value"])
        self.memory = [ThreeSampleSums.from_arrays(s, r) for s, r in zip(scalars, rows)]
