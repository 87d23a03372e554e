"""Critics (discriminators) f : R^d -> R and their training objectives.

Random-feature critics (trainable weights w, fixed random features; effective-gan-spec A2.5):

* ``rff``: f(x) = w^T psi(x), psi_k(x) = sqrt(2/K) cos(a_k^T x + b_k), a_k ~ N(0, sigma^-2 I),
  b_k ~ U(-pi, pi): approximates an RBF kernel of width sigma (USD ``RFFEmbedding``).
* ``relu_features``: psi_k(x) = sqrt(2/K) relu(a_k^T x + b_k), a_k ~ N(0, sigma^-2 I),
  b_k ~ U(-1.5, 1.5)/sigma so that the kinks cross the data region (inferred choice).

Fixed-kernel critics f(x) = sum_p c_p k(x, centre_p) (no trainable parameters):

* ``kernel``: the exact MMD witness of the current particles against the target,
  f(x) = (1/M) sum_m k(x, y_m) - (1/N) sum_i k(x, x_i), Gaussian k of width sigma; with
  ``memory`` > 0 the closed-form gradient-ascent critic with a ridge lambda_r (A2.5, after
  Becker et al.): f_t = rho^{n_c} f_{t-1} + eta_D (sum_{c<n_c} rho^c) w[X(t)], rho = 1 - eta_D lambda_r,
  keeping the last ``memory`` particle snapshots (a geometric memory of past positions).
* ``mmd`` / ``energy`` / ``riesz``: particle-based-distance flows (Paper B): the particles
  descend the distance directly, f = witness with a Gaussian mixture, the energy (distance)
  kernel, or the Riesz kernel (||u - v||^2 + eps^2)^(-s/2).

The critic objective of trainable critics is J(w) = mean_r a(f(y)) + mean_f b(f(x)) - P(w)
(see :mod:`particlegan.model.losses`) with penalty P one of:
``fake``  lambda mean_i ||grad f(x_i)||^2 (A2.1; the '-1' of the spec is a constant),
``real``  lambda mean_m ||grad f(y_m)||^2 (R1),
``interpolates`` lambda mean_i (||grad f(xhat_i)|| - 1)^2, xhat = (1-u) y + u x, u ~ U(0, 1) (WGAN-GP),
plus (weight_decay/2) ||w||^2.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from particlegan.maths.kernels import KernelSpec
from particlegan.model.losses import Objective

FEATURE_CRITICS = ("rff", "relu_features")
KERNEL_CRITICS = ("kernel", "mmd", "energy", "riesz")


# ----------------------------------------------------------------------------- features ----
@dataclass(frozen=True)
class FeatureMap:
    """Fixed random features psi(x) = scale * act(A x + b).

    Attributes
    ----------
    A : (K, d) feature directions.  b : (K,) phases/offsets.
    activation : "cos" or "relu".  scale : sqrt(2/K).
    """

    A: np.ndarray
    b: np.ndarray
    activation: str
    scale: float


def make_feature_map(kind: str, sigma: float, n_features: int, dim: int,
                     rng: np.random.Generator) -> FeatureMap:
    """Draw the random features of critic ``kind`` ('rff' or 'relu_features')."""
    A = rng.standard_normal((n_features, dim)) / sigma
    if kind == "rff":
        b = rng.uniform(-np.pi, np.pi, n_features)
        act = "cos"
    else:
        b = rng.uniform(-1.5, 1.5, n_features) / sigma
        act = "relu"
    return FeatureMap(A=A, b=b, activation=act, scale=float(np.sqrt(2.0 / n_features)))


@dataclass(frozen=True)
class FeatureBatch:
    """Features of a fixed set of points: psi (n, K), dpsi (n, K) = scale * act'(A x + b), and
    mean_psi (K,) = mean_n psi (the whole real-sample term of the IPM objective's gradient).

    For the targets, psi / dpsi are None when the loss never reads them
    (:func:`target_feature_batch`)."""

    psi: np.ndarray | None
    dpsi: np.ndarray | None
    mean_psi: np.ndarray


TARGET_CHUNK_ELEMS = 1 << 22  # features of the targets built this many (row x feature) at a time


def target_feature_batch(fm: FeatureMap, y: np.ndarray, backend, keep_psi: bool = True,
                         keep_dpsi: bool = True, chunk_elems: int = TARGET_CHUNK_ELEMS) -> FeatureBatch:
    """Features of the targets y (M, d), keeping only what is asked for.

    Up to ``chunk_elems`` (row x feature) entries the batch is built in one piece, exactly as
    :func:`feature_batch` builds it (bitwise the same mean). Beyond that the features are built
    over row chunks, so the (M, K) arrays that are not kept are never held (at M = 1e5, K = 512
    in float64: 819 MB of psi and dpsi, of which the IPM loss uses only the mean); the mean is
    then the chunk sums added in order, equal to the one-piece mean to rounding (the GEMM of a
    chunk may round its phases differently from that of all rows).
    """
    m, k = y.shape[0], fm.A.shape[0]
    rows = max(1, chunk_elems // max(k, 1))
    if (keep_psi and keep_dpsi) or m <= rows:
        whole = feature_batch(fm, y, backend)
        return FeatureBatch(whole.psi if keep_psi else None, whole.dpsi if keep_dpsi else None,
                            whole.mean_psi)
    A = fm.A.astype(y.dtype, copy=False)
    b = fm.b.astype(y.dtype, copy=False)
    psi_parts, dpsi_parts = [], []
    total = None
    for start in range(0, m, rows):
        psi, dpsi = backend.random_features(y[start:start + rows], A, b, fm.activation, fm.scale)
        part = psi.sum(axis=0)
        total = part if total is None else total + part
        if keep_psi:
            psi_parts.append(psi)
        if keep_dpsi:
            dpsi_parts.append(dpsi)
    return FeatureBatch(np.concatenate(psi_parts) if keep_psi else None,
                        np.concatenate(dpsi_parts) if keep_dpsi else None, total / m)


def feature_batch(fm: FeatureMap, X: np.ndarray, backend, keep_psi: bool = True) -> FeatureBatch:
    """Evaluate the feature map on X (n, d) with the chosen backend; with ``keep_psi = False``
    the batch holds only dpsi and the mean of psi (``backend.feature_mean_and_dpsi``)."""
    A = fm.A.astype(X.dtype, copy=False)
    b = fm.b.astype(X.dtype, copy=False)
    if not keep_psi:
        mean_psi, dpsi = backend.feature_mean_and_dpsi(X, A, b, fm.activation, fm.scale)
        return FeatureBatch(None, dpsi, mean_psi)
    psi, dpsi = backend.random_features(X, A, b, fm.activation, fm.scale)
    return FeatureBatch(psi, dpsi, psi.mean(axis=0))


def feature_values_and_grads(fm: FeatureMap, fb: FeatureBatch, w: np.ndarray, backend=None):
    """f(x) = psi w  (n,; None when the batch holds no psi) and
    grad f(x) = (dpsi * w) A  (n, d) (``backend.feature_input_grads``, default numpy: one skinny
    GEMM over dpsi, without an (n, K) temporary)."""
    values = None if fb.psi is None else fb.psi @ w
    backend = backend or _numpy_backend()
    return values, backend.feature_input_grads(fb.dpsi, fm.A.astype(w.dtype, copy=False), w)


def member_constant(v, like: np.ndarray):
    """A per-run constant in the arrays' arithmetic: a Python number stays a scalar (numpy
    rounds it to ``like``'s dtype); a (B,) array of per-member values of an ensemble (one
    value per leading row of ``like``) becomes a (B, 1, ...) array in ``like``'s dtype, so
    that each member's row is computed exactly as the scalar case computes it."""
    if np.ndim(v) == 0:
        return v
    return np.asarray(v, dtype=like.dtype).reshape(-1, *([1] * (like.ndim - 1)))


def any_positive(v) -> bool:
    """v > 0 for a per-run number, any member's v > 0 for a (B,) array (cheap on the
    critic step's hot path: no array is made from a scalar)."""
    return bool((v > 0).any() if isinstance(v, np.ndarray) else v > 0)


def _penalty_grad(fm: FeatureMap, fb: FeatureBatch, w: np.ndarray, lam, form: str, backend):
    """Penalty value and its gradient in w for f = w^T psi.

    With G_i = grad f(x_i) = A^T (dpsi_i * w):  d||G_i||^2/dw = 2 dpsi_i * (A G_i).
    form 'sq': P = lam mean ||G_i||^2;  'gp': P = lam mean (||G_i|| - 1)^2.
    The per-sample sums come from ``backend.feature_penalty`` (numpy: two skinny GEMMs over
    dpsi; cpu: one fused pass). With an ensemble axis (w (B, K), dpsi (B, n, K), lam (B,))
    the value is (B,) and the gradient (B, K).
    """
    sq, back = backend.feature_penalty(fb.dpsi, fm.A.astype(w.dtype, copy=False), w, form)
    lam_b = np.asarray(lam, dtype=np.float64)  # () or (B,)
    if form == "sq":
        value = lam_b * sq.mean(axis=-1)
    else:
        value = lam_b * np.mean((np.sqrt(sq + 1e-12) - 1.0) ** 2, axis=-1)
    coef = penalty_pullback_factor(lam, sq.shape[-1], form)
    return value, member_constant(coef if np.ndim(lam) else float(coef), back) * back


def penalty_pullback_factor(lam, n: int, form: str):
    """The factor on the pull-back ``back`` of ``backend.feature_penalty`` in the penalty's
    gradient (:func:`_penalty_grad`) over n penalty points: 2 lam / n for 'sq'
    (P = lam mean ||G_i||^2), lam / n for 'gp'; float64, lam a number or (B,) per member."""
    lam_b = np.asarray(lam, dtype=np.float64)
    return 2.0 * lam_b / n if form == "sq" else lam_b / n


def feature_critic_gradient(fm: FeatureMap, w: np.ndarray, real: FeatureBatch, fake: FeatureBatch,
                            objective: Objective, penalty: str, lam, penalty_batch: FeatureBatch | None,
                            weight_decay=0.0, backend=None) -> np.ndarray:
    """dJ/dw (K,) of the critic objective J of :func:`feature_critic_objective`, or, with a
    leading ensemble axis, (B, K) for B independent members: w (B, K), the feature batches
    and the feature map stacked per member, ``lam`` and ``weight_decay`` scalars or (B,)
    arrays (each member's row bitwise as its own run computes it; ``backend`` then takes the
    ensemble axis, see :func:`particlegan.backends.members`). The ensemble form supports the
    IPM objective (the others read psi w per sample)."""
    if objective.name == "ipm":
        grad = real.mean_psi - fake.mean_psi  # J is linear in f: no per-sample products needed
    else:
        if w.ndim != 1:
            raise ValueError(f"the {objective.name!r} objective has no ensemble form")
        grad = real.psi.T @ objective.real_term(real.psi @ w)[1] / len(real.psi) \
            + fake.psi.T @ objective.fake_term(fake.psi @ w)[1] / len(fake.psi)
    if penalty != "none" and any_positive(lam):
        batch = {"fake": fake, "real": real, "interpolates": penalty_batch}[penalty]
        grad = grad - _penalty_grad(fm, batch, w, lam, "gp" if penalty == "interpolates" else "sq",
                                    backend or _numpy_backend())[1]
    if any_positive(weight_decay):
        grad = grad - member_constant(weight_decay, w) * w
    return grad


def feature_critic_objective(fm: FeatureMap, w: np.ndarray, real: FeatureBatch, fake: FeatureBatch,
                             objective: Objective, penalty: str, lam: float,
                             penalty_batch: FeatureBatch | None, weight_decay: float = 0.0,
                             backend=None):
    """Critic objective J(w) (maximised) and its gradient dJ/dw, shape (K,)
    (:func:`feature_critic_gradient`).

    J = mean_m a(psi_m w) + mean_i b(psi_i w) - P(w) - (wd/2) |w|^2 (the IPM objective:
    (mean psi_r - mean psi_f) w - P - (wd/2) |w|^2).

    Parameters
    ----------
    real, fake : features of the targets y_m (M points) and particles x_i (N points).
    penalty : 'none' | 'fake' | 'real' | 'interpolates';  lam : effective lambda.
    penalty_batch : features of the interpolates (only for 'interpolates').
    backend : compute backend of the penalty's per-sample sums (default numpy).
    """
    if objective.name == "ipm":
        value = float((real.mean_psi - fake.mean_psi) @ w)
    else:
        value = float(objective.real_term(real.psi @ w)[0].mean() + objective.fake_term(fake.psi @ w)[0].mean())
    if penalty != "none" and lam > 0:
        batch = {"fake": fake, "real": real, "interpolates": penalty_batch}[penalty]
        value -= float(_penalty_grad(fm, batch, w, lam, "gp" if penalty == "interpolates" else "sq",
                                     backend or _numpy_backend())[0])
    if weight_decay > 0:
        value -= 0.5 * weight_decay * float(w @ w)
    grad = feature_critic_gradient(fm, w, real, fake, objective, penalty, lam, penalty_batch,
                                   weight_decay, backend)
    return value, grad


def _numpy_backend():
    from particlegan.backends import get_backend

    return get_backend("numpy")


def ascend_critic(opt, opt_state, w: np.ndarray, n_steps: int, grad_fn, lr_scale: float = 1.0):
    """``n_steps`` gradient-ascent steps ``w <- opt.update(opt_state, w, grad_fn(w))`` of a
    trainable critic (learning rate ``lr_scale`` times the rule's).

    Stops at the first step whose parameters are not all finite and returns the last finite
    ones: a diverging critic keeps its last good weights (the run is then stopped as diverged).
    The optimizer state returned has taken the discarded step too, as in the backends' fused
    loop (:meth:`particlegan.model.particle_critics.FeatureCritic.fused_ascent`).

    Returns
    -------
    w : (P,) parameters after the steps (the last finite ones).
    finite : False when a step produced NaN/inf (and was discarded).
    opt_state : the :class:`particlegan.model.optimizers.OptState` after the steps taken.
    """
    for _ in range(n_steps):
        w_new, opt_state = opt.update(opt_state, w, grad_fn(w), maximize=True, lr_scale=lr_scale)
        if not np.all(np.isfinite(w_new)):
            return w, False, opt_state
        w = w_new
    return w, True, opt_state


def step_rates(schedules, start: int, n_steps: int) -> np.ndarray:
    """(n_steps, B) learning rates of the next ``n_steps`` optimizer steps of B members with the
    rules ``schedules`` (one per member), from step count ``start``."""
    return np.array([[sch(start + s) for sch in schedules] for s in range(n_steps)], dtype=np.float64)


def interpolates(x: np.ndarray, y: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """WGAN-GP points xhat_i = (1 - u_i) y_{m_i} + u_i x_i, m_i uniform, u_i ~ U(0, 1). Shape (N, d)."""
    idx = rng.integers(0, len(y), size=len(x))
    u = rng.uniform(0.0, 1.0, size=(len(x), 1)).astype(x.dtype)
    return (1.0 - u) * y[idx] + u * x


# ------------------------------------------------------------------------ kernel critics ---


@dataclass(frozen=True)
class KernelCriticState:
    """Witness-type critic f(x) = sum_s c_s [ mean_m k(x, y_m) - mean_i k(x, x_i(s)) ].

    Attributes
    ----------
    snapshots : (S, N, d) particle positions x(s) kept in memory (oldest first).
    coefs : (S,) coefficients c_s.
    """

    snapshots: np.ndarray
    coefs: np.ndarray


def kernel_critic_update(state: KernelCriticState | None, x: np.ndarray, n_steps: int, eta_d: float,
                         ridge: float, memory: int) -> KernelCriticState:
    """Advance the fixed-kernel critic by ``n_steps`` critic steps with particles x frozen.

    memory = 0: f is the current witness (coefficient 1). memory > 0: closed-form gradient ascent
    with ridge, f <- rho^n f + eta_D (sum_{c<n} rho^c) w[x], keeping ``memory`` snapshots.
    """
    if memory == 0:
        return KernelCriticState(x[None].copy(), np.ones(1))
    rho = 1.0 - eta_d * ridge
    gain = eta_d * n_steps if rho == 1.0 else eta_d * (1.0 - rho ** n_steps) / (1.0 - rho)
    if state is None:
        snaps, coefs = x[None].copy(), np.array([gain])
    else:
        snaps = np.concatenate([state.snapshots, x[None]])[-memory:]
        coefs = np.concatenate([state.coefs * rho ** n_steps, [gain]])[-memory:]
    return KernelCriticState(snaps, coefs)


def kernel_critic_centres(state: KernelCriticState, y: np.ndarray):
    """Centres (M + S N, d) and weights of f = sum_p w_p k(x, centre_p) for the backend sums."""
    s, n, d = state.snapshots.shape
    m = len(y)
    weights = np.concatenate([np.full(m, state.coefs.sum() / m), np.repeat(-state.coefs / n, n)])
    centres = np.concatenate([y, state.snapshots.reshape(s * n, d)])
    return centres, weights.astype(y.dtype)


def kernel_critic_eval(state: KernelCriticState, y: np.ndarray, x: np.ndarray, kernel: KernelSpec,
                       backend, need_values: bool = True):
    """f(x) (n,) (or None) and grad f(x) (n, d) of the fixed-kernel critic via backend sums."""
    centres, weights = kernel_critic_centres(state, y)
    grad = backend.kernel_grad_sum(x, centres, weights, kernel)
    values = backend.kernel_sum(x, centres, weights, kernel) if need_values else None
    return values, grad
