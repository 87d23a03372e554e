"""Critic side of the particle engine: one small object per critic type, one interface.

:mod:`particlegan.engine.dynamics` composes the particles (moved through a coupling kernel) with any of
these objects; adding a critic means writing one class here and one line in
:func:`particlegan.model.from_config.build_critic`, not editing the engine. Every object answers:

* ``trainable`` -- True when the critic has parameters ``state.w`` trained by gradient ascent
  with the model's critic optimizer, whose state is ``state.critic_opt`` (the engine runs the
  steps, :func:`particlegan.model.critics.ascend_critic`);
  False for the fixed-kernel critics, which update their own memory (``train``).
* ``prepare(x) -> ctx`` -- what depends only on the particles x (N, d) and is shared by the
  critic steps and the forces of one outer step (the random features of x), or None.
* ``objective_grad(w, x, ctx, rng) -> (P,)`` -- dJ/dw of the critic objective (trainable
  critics); ``rng`` is the run's noise stream (from the state), drawn from only by critics with
  ``draws_noise`` (WGAN-GP interpolates, dropout masks), None otherwise.
* ``draws_noise`` -- True when ``objective_grad`` draws from ``rng`` (the engine then hands it a
  copy of the state's stream and keeps the advanced copy in the new state).
* ``train(kernel_state, x, n_steps, eta_d) -> kernel_state`` -- (fixed-kernel critics; ``eta_d``
  already scaled by the state's ``lr_scale``).
* ``values_and_grads(state, ctx, need_values) -> (values (N,) or None, grads (N, d))`` -- f(x_i)
  and grad f(x_i) at ``state.x``, from which the engine forms the particle forces.

The objects hold only what is fixed at build time (arrays, kernel specs, coefficients); the
random-number stream they draw from lives in the engine's state.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from particlegan.model import critics as cr
from particlegan.model import feature_critic as fc
from particlegan.maths import nn
from particlegan.maths.kernels import KernelSpec
from particlegan.model.losses import Objective


@dataclass(frozen=True)
class CriticLoss:
    """What a trained critic maximises: the objective on (y, x), the gradient penalty (kind,
    effective lambda) and the weight decay."""

    y: np.ndarray                  # (M, d) targets
    objective: Objective
    penalty: str
    lam: float
    weight_decay: float

    @property
    def draws_interpolates(self) -> bool:
        return self.penalty == "interpolates" and cr.any_positive(self.lam)

    def interpolates(self, x, rng):
        """WGAN-GP points for the 'interpolates' penalty (drawn from ``rng`` each critic step),
        else None."""
        if self.draws_interpolates:
            return cr.interpolates(x, self.y, rng)
        return None


@dataclass(frozen=True)
class FeatureCritic:
    """f(x) = w^T psi(x) with fixed random features (critic.type rff / relu_features)."""

    feature_map: cr.FeatureMap
    real: cr.FeatureBatch          # features of the targets (only what the loss reads)
    loss: CriticLoss
    backend: object
    trainable = True

    def prepare(self, x):
        # the IPM objective and its forces read only the mean of psi(x): the fast backends then
        # never write the (N, K) psi
        return cr.feature_batch(self.feature_map, x, self.backend, keep_psi=self.loss.objective.name != "ipm")

    @property
    def draws_noise(self) -> bool:
        return self.loss.draws_interpolates

    def objective_grad(self, w, x, ctx, rng=None):
        L = self.loss
        xhat = L.interpolates(x, rng)
        pen_batch = None if xhat is None else cr.feature_batch(self.feature_map, xhat, self.backend,
                                                               keep_psi=False)
        return cr.feature_critic_gradient(self.feature_map, w, self.real, ctx, L.objective, L.penalty, L.lam,
                                          pen_batch, L.weight_decay, self.backend)

    def fused_ascent(self, opt, opt_state, w, ctx, rates):
        """All critic steps of an outer step in one backend call, or None where that loop does not
        exist (the engine then runs :func:`particlegan.model.critics.ascend_critic`).

        The loop exists on backends with ``feature_ascent_members`` (cpu) for the IPM objective,
        a penalty on the particles, on the targets or none, and an element-wise optimizer; its
        result is bitwise the engine's loop on that backend (tests/test_particle_critics.py).

        Parameters
        ----------
        opt, opt_state : the critic optimizer rule and its state before the steps.
        w : (K,) weights, or (B, K) for an ensemble (then the feature map and batches are stacked).
        ctx : :meth:`prepare` of the particles.  rates : (n_steps, B) learning rates of the steps.

        Returns
        -------
        (w, finite, opt_state) with finite a bool (single run) or (B,) bool array and the
        optimizer state after the steps; or None.
        """
        L = self.loss
        fused = getattr(self.backend, "feature_ascent_members", None)
        if fused is None or L.objective.name != "ipm" or L.penalty == "interpolates":
            return None
        members = w.ndim == 2
        as_members = (lambda a: a) if members else (lambda a: a[None])
        steps = opt.fused_steps(opt_state, rates, as_members(w).shape, w.dtype)
        if steps is None:
            return None
        n_mem = len(w) if members else 1
        lam = np.zeros(n_mem) + L.lam  # per member, float64
        penalised = L.penalty != "none" and cr.any_positive(lam)
        batch = self.real if penalised and L.penalty == "real" else ctx
        coef = cr.penalty_pullback_factor(lam, batch.dpsi.shape[-2], "sq") if penalised else np.zeros(n_mem)
        base = self.real.mean_psi - ctx.mean_psi  # the IPM gradient, as feature_critic_gradient forms it
        wd = np.zeros(n_mem) + L.weight_decay
        w_new, finite, done = fused(as_members(batch.dpsi), as_members(self.feature_map.A.astype(w.dtype, copy=False)),
                                    as_members(w), as_members(base), coef, wd, steps)
        if members:
            return w_new, finite, opt.absorb_fused(opt_state, steps, len(rates), True)
        return w_new[0], bool(finite[0]), opt.absorb_fused(opt_state, steps, int(done[0]), False)

    def values_and_grads(self, state, ctx, need_values):
        if need_values and ctx.psi is None:  # values asked of an IPM critic (prepare kept no psi)
            ctx = cr.feature_batch(self.feature_map, state.x, self.backend)
        return cr.feature_values_and_grads(self.feature_map, ctx, state.w, self.backend)


@dataclass(frozen=True)
class LearnedCritic:
    """Kernel critic in a learned feature space (critic.type learned_features)."""

    learned: fc.LearnedFeatureCritic
    y: np.ndarray
    weight_decay: float
    backend: object
    trainable = True
    draws_noise = False

    def prepare(self, x):
        return None

    def objective_grad(self, w, x, ctx, rng=None):
        return fc.learned_critic_objective(self.learned, w, x, self.y, self.backend, self.weight_decay,
                                           need_value=False)[1]

    def values_and_grads(self, state, ctx, need_values):
        return fc.learned_critic_values_and_grads(self.learned, state.w, state.x, self.y, self.backend,
                                                  need_values)


@dataclass(frozen=True)
class MLPCritic:
    """Neural critic f = MLP(x) (critic.type mlp): d -> widths -> 1, trained on (y, x).

    With ``dropout`` rates, every critic step draws fresh inverted-dropout masks (from the
    run's noise stream) for its batch [y; x] (and the interpolates); the particle forces use
    the network without dropout (evaluation mode).
    """

    net: nn.MLP                    # architecture and initial parameters (theta)
    loss: CriticLoss
    dropout: tuple = ()            # one rate per hidden layer, or empty
    trainable = True

    def prepare(self, x):
        return None

    @property
    def draws_noise(self) -> bool:
        return self.loss.draws_interpolates or any(p > 0 for p in self.dropout)

    def _masks(self, net, n, rng):
        if not any(p > 0 for p in self.dropout):
            return None
        return nn.dropout_masks(net, n, self.dropout, rng)

    def objective_grad(self, w, x, ctx, rng=None):
        L = self.loss
        net = self.net.with_theta(w)
        xhat = L.interpolates(x, rng)
        masks = self._masks(net, len(L.y) + len(x), rng)
        xhat_masks = None if xhat is None else self._masks(net, len(xhat), rng)
        return mlp_critic_objective(net, L.y, x, L.objective, L.penalty, L.lam, xhat, L.weight_decay,
                                    masks, xhat_masks)[1]

    def values_and_grads(self, state, ctx, need_values):
        return nn.critic_values_and_input_grads(self.net.with_theta(state.w), state.x)


def mlp_critic_objective(critic: nn.MLP, y: np.ndarray, x: np.ndarray, objective: Objective,
                         penalty: str, lam: float, xhat: np.ndarray | None = None,
                         weight_decay: float = 0.0, masks: list | None = None,
                         xhat_masks: list | None = None) -> tuple[float, np.ndarray]:
    """Critic objective J(phi) (maximised) of an MLP critic and its gradient dJ/dphi.

    J = (1/M) sum_m a(f(y_m)) + (1/N) sum_i b(f(x_i)) - P - (wd/2) ||phi||^2, with a, b the
    objective's real/fake terms and P = lam mean ||grad f||^2 on x (``fake``) or y (``real``),
    or lam mean (||grad f(xhat)|| - 1)^2 on the interpolates ``xhat`` (``interpolates``).

    One forward and one backward pass on the stacked batch [y; x] give every term: the
    objective's parameter gradient is sum_i c_i df(x_i)/dphi with c = (a'(f(y))/M, b'(f(x))/N)
    (scalar output), and the penalty on x or y reuses that pass's rows (and dropout masks).

    Parameters
    ----------
    critic : scalar-output MLP f.
    y : (M, d) real samples.  x : (N, d) generated samples.
    objective : :class:`particlegan.model.losses.Objective`.
    penalty : "none" | "fake" | "real" | "interpolates".  lam : effective lambda >= 0.
    xhat : (N, d) interpolates (only for ``interpolates``).
    weight_decay : L2 coefficient wd >= 0.
    masks : dropout multipliers for the M + N rows of [y; x] (:func:`particlegan.maths.nn.dropout_masks`),
        or None.  xhat_masks : the same for the interpolates.

    Returns
    -------
    value : float J.  grad : (P_D,) dJ/dphi.
    """
    M = len(y)
    cp = nn.critic_pass(critic, np.concatenate([y, x]) if len(x) else y, masks)
    va, da = objective.real_term(cp.values[:M])
    vb, db = objective.fake_term(cp.values[M:])
    value = float(va.mean() + vb.mean())
    grad = nn.weighted_param_grad(critic, cp, np.concatenate([da / M, db / len(x)]))
    if penalty != "none" and lam > 0:
        if penalty == "interpolates":
            pv, pg = nn.penalty_and_param_grad(critic, xhat, lam / len(xhat), "gp",
                                               cp=nn.critic_pass(critic, xhat, xhat_masks))
        else:
            rows = slice(M, None) if penalty == "fake" else slice(0, M)
            pcp = cp.rows(rows)
            pv, pg = nn.penalty_and_param_grad(critic, None, lam / len(pcp.values), "sq", cp=pcp)
        value -= pv
        grad -= pg
    if weight_decay > 0:
        value -= 0.5 * weight_decay * float(critic.theta @ critic.theta)
        grad -= critic.theta.dtype.type(weight_decay) * critic.theta
    return value, grad


@dataclass(frozen=True)
class KernelCritic:
    """Fixed-kernel witness critics with memory (critic.type kernel / mmd / energy / riesz)."""

    kernel: KernelSpec
    y: np.ndarray
    backend: object
    ridge: float = 0.0
    memory: int = 0
    trainable = False
    draws_noise = False

    def prepare(self, x):
        return None

    def train(self, kernel_state, x, n_steps, eta_d):
        """:func:`particlegan.model.critics.kernel_critic_update` with learning rate ``eta_d``
        (already scaled by the schedule), at least one step: a fixed-kernel critic always sees
        the current particles."""
        return cr.kernel_critic_update(kernel_state, x, max(n_steps, 1), eta_d, self.ridge, self.memory)

    def values_and_grads(self, state, ctx, need_values):
        return cr.kernel_critic_eval(state.kernel_state, self.y, state.x, self.kernel, self.backend,
                                     need_values)


