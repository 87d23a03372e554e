"""The engine: discrete-time GAN dynamics of any generator against any critic
(effective-gan-spec A2.6).

One outer step (``alternating``, the default)::

    critic:    n_c critic steps (n_c_startup before the first generator step), x frozen
    forces:    F_j = -c'(f(x_j)) grad f(x_j)            (= grad f(x_j) for the IPM objective)
    generator: one step of the generator object with the forces F, e.g. for particles
               x_i <- x_i + eta_G sum_j C_ij F_j        (plain gradient step, C = K/N or K)

With ``simultaneous`` updates both players read the same (critic, points) state: the forces
are computed with the critic *before* its n_c steps.

The two sides are objects with one interface each, composed freely: the generator of
:mod:`particlegan.model.generators` (particles through a coupling kernel, or an MLP generator
pulled back through its Jacobian: ``model.type``) and the critic of
:mod:`particlegan.model.particle_critics` (``critic.type``). The static part of a simulation is
a frozen :class:`Model`; the evolving part a frozen :class:`State`; :func:`outer_step` is a pure
function ``(model, state) -> (state, info)``: the optimizers are (init, update) rules in the
model whose moments are arrays in the state (:class:`particlegan.model.optimizers.OptState`),
and the random streams (``state.noise``: WGAN-GP interpolates, dropout masks; the MLP
generator's fresh latents) are copied before they draw, so the input state is never changed.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np

from particlegan.backends import get_backend
from particlegan.model import critics as cr
from particlegan.model.from_config import (build_critic, build_generator, make_critic_optimizer, make_target,
                                           objective_from_config)
from particlegan.model.losses import Objective
from particlegan.model.optimizers import Optimizer, OptState
from particlegan.model.streams import advanced_copy, seed_streams
from particlegan.model.targets import Target


@dataclass(frozen=True)
class StepParams:
    """The outer step's constants, read from the config once at build time (the hot path reads
    no config dict): eta_D, critic steps per outer step, and the update order
    (``dynamics.update``: "alternating" or "simultaneous"). eta_G belongs to the generator."""

    eta_d: float
    critic_steps: int
    update: str

    @classmethod
    def from_config(cls, cfg: dict) -> "StepParams":
        dyn = cfg["dynamics"]
        return cls(float(dyn["eta_d"]), int(dyn["critic_steps"]), str(dyn["update"]))


@dataclass(frozen=True)
class Model:
    """Everything fixed during a run (built once by :func:`build_model`).

    ``generator`` is one of the generator objects of :mod:`particlegan.model.generators`,
    ``critic`` one of the critic objects of :mod:`particlegan.model.particle_critics` (one
    interface per side); the engine below never asks which kinds they are. ``critic_optimizer``
    is the critic's optimizer rule (hyperparameters; its state is ``State.critic_opt``), None
    for fixed-kernel critics. ``cfg`` is kept for recording and checkpoints; the step reads
    ``params`` only.
    """

    cfg: dict
    params: StepParams
    target: Target
    y: np.ndarray                      # (M, d) target samples in the run dtype
    generator: object
    critic: object
    critic_optimizer: Optimizer | None
    objective: Objective
    backend: object
    dtype: np.dtype


@dataclass(frozen=True)
class State:
    """Evolving simulation state.

    Attributes
    ----------
    step : number of generator steps taken.
    x : (N, d) generated points: the particles, or the MLP generator's outputs G_theta(z_i).
    w : (K,) random-feature critic weights, (P,) MLP or feature-MLP critic parameters (None for
        fixed-kernel critics).
    kernel_state : fixed-kernel critic memory (None for trainable critics).
    critic_opt : the critic optimizer's state (:class:`particlegan.model.optimizers.OptState`:
        step count, moments / directions as arrays), None for fixed-kernel critics.
    lr_scale : factor on both learning rates, eta_G -> lr_scale eta_G and eta_D -> lr_scale eta_D
        (1 unless a learning-rate schedule, ``schedule.kind = "kid"``, has decayed them).
    critic_finite : False once a critic step produced NaN/inf; ``w`` then holds the last finite
        parameters (see :func:`particlegan.model.critics.ascend_critic`).
    noise : the critic's noise stream (a Generator never advanced in place: a step that draws
        from it works on a copy, :func:`particlegan.model.streams.advanced_copy`, and stores
        that), or None.
    gen : the generator's own state (None for particles; an
        :class:`particlegan.model.generators.MLPGeneratorState` for the MLP generator).
    """

    step: int
    x: np.ndarray
    w: np.ndarray | None
    kernel_state: cr.KernelCriticState | None
    critic_opt: OptState | None
    lr_scale: float = 1.0
    critic_finite: bool = True
    noise: np.random.Generator | None = None
    gen: object | None = None


def build_model(cfg: dict, streams: dict[str, np.random.Generator] | None = None,
                startup: bool = True) -> tuple[Model, State]:
    """Build the static model and the initial state of any ``model.type`` with any
    ``critic.type``: the parts come from the config through :mod:`particlegan.model.from_config`,
    composed here. The state has had the ``dynamics.critic_steps_startup`` critic steps unless
    ``startup`` is False (an ensemble runs its members' start-up steps together)."""
    streams = streams or seed_streams(cfg["run"]["seed"])
    dtype = np.dtype(cfg["run"]["dtype"])
    backend = get_backend(cfg["run"]["backend"])
    target = make_target(cfg["target"], streams["target"])
    generator, x0, gen_state = build_generator(cfg, streams, target, backend, dtype)
    y = target.samples.astype(dtype)
    critic, w = build_critic(cfg, y, backend, streams["critic"])
    critic_optimizer = make_critic_optimizer(cfg) if w is not None else None
    model = Model(cfg=cfg, params=StepParams.from_config(cfg), target=target, y=y, generator=generator,
                  critic=critic, critic_optimizer=critic_optimizer, objective=objective_from_config(cfg["loss"]),
                  backend=backend, dtype=dtype)
    state = State(step=0, x=x0, w=w, kernel_state=None,
                  critic_opt=critic_optimizer.init() if w is not None else None,
                  noise=streams["noise"], gen=gen_state)
    if startup:
        state = train_critic(model, state, cfg["dynamics"]["critic_steps_startup"], critic.prepare(x0))
    return model, state


def train_critic(model: Model, state: State, n_steps: int, ctx=None) -> State:
    """Run ``n_steps`` critic steps (learning rate ``state.lr_scale`` eta_D) with the points
    frozen at ``state.x``; ``ctx``: the critic's ``prepare(state.x)`` when already at hand.

    A critic whose backend runs the whole loop in one call (``fused_ascent``: random-feature
    critics on cpu) does so, bitwise as :func:`particlegan.model.critics.ascend_critic`'s loop."""
    critic = model.critic
    if not critic.trainable:
        ks = critic.train(state.kernel_state, state.x, n_steps, model.params.eta_d * state.lr_scale)
        return dataclasses.replace(state, kernel_state=ks)
    if n_steps == 0:
        return state
    ctx = critic.prepare(state.x) if ctx is None else ctx
    opt = model.critic_optimizer
    opt_state = opt.begin_outer_step(state.critic_opt)  # a reset only when built with that option
    fused = getattr(critic, "fused_ascent", None)  # the backend's one-call loop, where it has one
    rates = cr.step_rates([opt.schedule.scaled(state.lr_scale)], opt_state.count, n_steps)
    out = None if fused is None else fused(opt, opt_state, state.w, ctx, rates)
    noise = advanced_copy(state.noise) if critic.draws_noise else None  # the input state's stays as it was
    w, finite, opt_state = out if out is not None else cr.ascend_critic(
        opt, opt_state, state.w, n_steps, lambda w: critic.objective_grad(w, state.x, ctx, noise), state.lr_scale)
    return dataclasses.replace(state, w=w, critic_opt=opt_state, critic_finite=state.critic_finite and finite,
                               noise=state.noise if noise is None else noise)


def critic_values_and_grads(model: Model, state: State, x: np.ndarray | None = None,
                            need_values: bool = True):
    """The critic of ``state`` at the points ``x`` (n, d) (default ``state.x``): f(x) (n,)
    (None for IPM kernel critics when not needed) and grad f(x) (n, d)."""
    at_x = state if x is None or x is state.x else dataclasses.replace(state, x=x)
    return model.critic.values_and_grads(at_x, model.critic.prepare(at_x.x), need_values)


def particle_forces(model: Model, state: State, ctx=None):
    """Forces F (N, d) on the generated points and critic gradients grad f(x_i) (N, d) at
    ``state.x``: F_i = -c'(f(x_i)) grad f(x_i) (F = grad f for the IPM objective)."""
    need_values = model.objective.name != "ipm"
    ctx = model.critic.prepare(state.x) if ctx is None else ctx
    values, grad = model.critic.values_and_grads(state, ctx, need_values)
    if not need_values:
        return grad, grad
    _, dc = model.objective.gen_term(values)
    return -dc[:, None] * grad, grad


def outer_step(model: Model, state: State):
    """One outer step (critic steps + generator step). Returns (new state, critic gradients at x_t).

    Both learning rates are multiplied by ``state.lr_scale``: eta_G in the generator step, eta_D
    in the critic steps (see :func:`train_critic`).
    """
    par = model.params
    ctx = model.critic.prepare(state.x)  # shared by the critic steps and the forces (x is fixed)
    if par.update == "simultaneous":
        forces, grad = particle_forces(model, state, ctx)
        state = train_critic(model, state, par.critic_steps, ctx)
    else:
        state = train_critic(model, state, par.critic_steps, ctx)
        forces, grad = particle_forces(model, state, ctx)
    x_new, gen = model.generator.step(state.gen, state.x, forces, state.lr_scale)
    return dataclasses.replace(state, step=state.step + 1, x=x_new, gen=gen), grad


def state_is_finite(model: Model, state: State) -> bool:
    """True when the points, the critic and the generator parameters are all finite (checked
    outside fastmath code)."""
    if not state.critic_finite or not np.all(np.isfinite(state.x)):
        return False
    if state.w is not None and not np.all(np.isfinite(state.w)):
        return False
    return model.generator.is_finite(state.gen)
