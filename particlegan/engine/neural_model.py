"""Full neural GAN engine (``model.type = "neural"``): an MLP generator trained through its
parameters, with the same interface as :mod:`particlegan.engine.dynamics`.

``build_model(cfg, streams) -> (model, state)``, ``outer_step(model, state) -> (state, grad)``,
``particle_forces(model, state) -> (forces, grad)`` and ``state_is_finite(state)``, on frozen
dataclasses, so that :func:`particlegan.engine.simulate.simulate` (observables, snapshots, result.npz,
plots, checkpoints) runs it unchanged. ``state.x`` (N, d) are the generator outputs
x_i = G_theta(z_i) on the fixed latent set z_1..z_N (N = ``particles.n``), or on the current
fresh minibatch of N latents when ``generator.fresh_latents`` is true.

Networks
--------
* Generator: :mod:`particlegan.maths.nn` MLP ``(generator.latent_dim, generator.width x
  generator.depth, target.dim)`` with ``generator.activation``, ``generator.bias``,
  ``generator.parameterization``, ``generator.sigma_w`` / ``sigma_b``; latents of kind
  ``generator.latent`` ("sphere": radius sqrt(d_z); "gaussian": N(0, I)). ``particles.init``
  is not used: the initial particles are G_theta0(z_i).
* Critic: ``critic.type = "mlp"``: MLP ``(d, critic.width x critic.depth, 1)`` (biases,
  PyTorch-default init, ``critic.activation``) whose output is the logit f(x); or any critic of
  the particle model (``rff``, ``relu_features``, ``kernel``, ``mmd``, ``energy``, ``riesz``,
  reusing :mod:`particlegan.model.critics`).

One outer step (``dynamics.update = "alternating"``)
----------------------------------------------------
1. ``dynamics.critic_steps`` ascent steps (``critic.optimizer``, learning rate eta_D) of
   J(phi) = (1/M) sum_m a(f(y_m)) + (1/N) sum_i b(f(x_i)) - P(phi) - (wd/2) ||phi||^2 with the
   penalty P of ``loss.penalty``: ``fake`` lambda mean_i ||grad f(x_i)||^2, ``real``
   lambda mean_m ||grad f(y_m)||^2, ``interpolates`` lambda mean_i (||grad f(xhat_i)|| - 1)^2
   (parameter gradient by the double backward of :func:`particlegan.maths.nn.penalty_and_param_grad`).
   All M target samples are used every step (full batch, as the particle model).
2. Forces F_i = -c'(f(x_i)) grad f(x_i) (F = grad f for IPM), exactly as the particle model.
3. Generator step on L_G(theta) = (1/N) sum_i c(f(G_theta(z_i))) (critic frozen)::

       grad_theta L_G = J_G^T (-F / N) = sum_i (dG(z_i)/dtheta)^T (-F_i) / N
       theta <- optimizer step (generator.optimizer, learning rate eta_G = dynamics.eta_g)

   i.e. :func:`particlegan.maths.nn.mlp_backward` with ``grad_out = -F / N``. With SGD, to first
   order in eta_G, x_i <- x_i + (eta_G / N) sum_j Theta(z_i, z_j) F_j with the empirical NTK
   Theta = J_G J_G^T: the particle model's step with ``generator.normalization = "ntk"`` and
   kernel Theta (effective-gan-spec A-1), so eta_G means the same in both models.
4. With fresh latents, a new minibatch z ~ latent distribution is drawn (from the
   ``particles`` random stream) and x <- G_theta(z).

With ``dynamics.update = "simultaneous"`` the forces are computed before the critic steps.

Randomness: generator init from the ``coupling`` stream (unused by this model otherwise),
critic init / random features from ``critic``, latents from ``particles`` (kept in the state as
``state.latents``: fresh minibatches resume exactly), interpolates and dropout masks from
``noise`` (``state.noise``). Both streams live in the state and are copied before they draw
(:func:`particlegan.engine.dynamics.advanced_copy`), so :func:`outer_step` is pure.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np

from particlegan.model import critics as cr
from particlegan.maths import nn
from particlegan.backends import get_backend
from particlegan.engine.dynamics import advanced_copy
from particlegan.model.losses import Objective, objective_from_config
from particlegan.model.optimizers import optimizer_from_config, scale_optimizer_lr
from particlegan.model.particle_critics import build_critic  # the critic objects of both engines
from particlegan.model.targets import Target, make_target


@dataclass(frozen=True)
class NeuralModel:
    """Everything fixed during a neural run (built once by :func:`build_model`).

    Attributes
    ----------
    cfg : resolved config (recording, checkpoints; the step reads ``params`` and
        ``latent_shape`` only).  target : the target.  y : (M, d) target samples (run dtype).
    generator : generator MLP at initialisation (architecture; the live parameters are
        ``state.theta_g``).
    critic : the critic object of :mod:`particlegan.model.particle_critics` (the same objects as
        the particle engine: mlp, rff / relu_features, learned_features, fixed kernels); its
        live parameters are ``state.w``.
    objective : the loss.
    fresh_latents : draw new latents every step.  dtype : run dtype.
    """

    cfg: dict
    params: object                     # particlegan.engine.dynamics.StepParams
    target: Target
    y: np.ndarray
    generator: nn.MLP
    critic: object
    critic_type: str
    objective: Objective
    backend: object
    fresh_latents: bool
    dtype: np.dtype
    latent_shape: tuple = ()           # (N, d_z, kind) of the latents, for fresh minibatches


@dataclass(frozen=True)
class NeuralState:
    """Evolving state of a neural run.

    Attributes
    ----------
    step : outer steps taken.
    x : (N, d) generator outputs G_theta(z_i) on the current latents.
    z : (N, d_z) current latents (fixed set, or the current fresh minibatch).
    theta_g : (P_G,) generator parameters (flat, layout of :class:`particlegan.maths.nn.MLP`).
    w : critic parameters: (P_D,) MLP critic theta or (K,) random-feature weights; None for
        fixed-kernel critics.
    kernel_state : fixed-kernel critic memory (None otherwise).
    critic_opt, gen_opt : the two optimizers (hold their own moment / direction state).
    lr_scale : factor on both learning rates (eta_G of the generator optimizer, eta_D of the
        critic); 1 unless a ``schedule.kind = "kid"`` schedule has decayed them.
    noise : the critic's noise stream (interpolates, dropout).  latents : the stream of fresh
        latent minibatches. Generators never advanced in place (steps draw from copies).
    """

    step: int
    x: np.ndarray
    z: np.ndarray
    theta_g: np.ndarray
    w: np.ndarray | None
    kernel_state: cr.KernelCriticState | None
    critic_opt: object | None
    gen_opt: object
    lr_scale: float = 1.0
    critic_finite: bool = True  # False once a critic step produced NaN/inf (w: last finite)
    noise: np.random.Generator | None = None
    latents: np.random.Generator | None = None


# ------------------------------------------------------------------------- building ----
def make_generator(cfg: dict, rng: np.random.Generator, dtype=np.float64) -> nn.MLP:
    """Generator MLP of config section ``generator`` (output dimension ``target.dim``)."""
    g = cfg["generator"]
    sizes = [g["latent_dim"]] + [g["width"]] * g["depth"] + [cfg["target"]["dim"]]
    return nn.init_mlp(sizes, g["activation"], g["bias"], g["parameterization"], rng,
                       sigma_w=g["sigma_w"], sigma_b=g["sigma_b"], dtype=dtype,
                       config_prefix="generator")


def latent_shape(cfg: dict) -> tuple:
    """(N, d_z, kind) = (particles.n, generator.latent_dim, generator.latent)."""
    g = cfg["generator"]
    return (int(cfg["particles"]["n"]), int(g["latent_dim"]), str(g["latent"]))


def draw_latents(shape: tuple, rng: np.random.Generator, dtype) -> np.ndarray:
    """N latents (N, d_z) of the kind in ``shape`` = :func:`latent_shape`."""
    n, dim, kind = shape
    return nn.sample_latents(n, dim, kind, rng, dtype)


def generator_optimizer(cfg: dict):
    """Generator optimizer (``generator.*`` optimizer keys, learning rate dynamics.eta_g)."""
    return optimizer_from_config(cfg["generator"], cfg["dynamics"]["eta_g"], "generator",
                                 lr_key="dynamics.eta_g")


def build_model(cfg: dict, streams: dict[str, np.random.Generator] | None = None
                ) -> tuple[NeuralModel, NeuralState]:
    """Build the static neural model and the initial state (critic start-up steps included)."""
    from particlegan.engine.dynamics import StepParams, make_critic_optimizer, seed_streams

    streams = streams or seed_streams(cfg["run"]["seed"])
    dtype = np.dtype(cfg["run"]["dtype"])
    backend = get_backend(cfg["run"]["backend"])
    target = make_target(cfg["target"], streams["target"])
    y = target.samples.astype(dtype)
    gen = make_generator(cfg, streams["coupling"], dtype)
    z = draw_latents(latent_shape(cfg), streams["particles"], dtype)
    critic, w = build_critic(cfg, y, backend, streams["critic"])
    model = NeuralModel(cfg=cfg, params=StepParams.from_config(cfg), target=target, y=y, generator=gen, critic=critic,
                        critic_type=cfg["critic"]["type"], objective=objective_from_config(cfg["loss"]),
                        backend=backend, fresh_latents=bool(cfg["generator"]["fresh_latents"]), dtype=dtype,
                        latent_shape=latent_shape(cfg))
    x0 = nn.mlp_apply(gen, z)
    state = NeuralState(step=0, x=x0, z=z, theta_g=gen.theta.copy(), w=w, kernel_state=None,
                        critic_opt=make_critic_optimizer(cfg) if w is not None else None,
                        gen_opt=generator_optimizer(cfg), noise=streams["noise"], latents=streams["particles"])
    state = train_critic(model, state, cfg["dynamics"]["critic_steps_startup"])
    return model, state


# --------------------------------------------------------------------------- critic ----
def train_critic(model: NeuralModel, state: NeuralState, n_steps: int) -> NeuralState:
    """Run ``n_steps`` critic steps (learning rate ``state.lr_scale`` eta_D) with the generated
    points frozen at ``state.x``: the particle engine's :func:`particlegan.engine.dynamics.train_critic`
    on the same critic objects."""
    from particlegan.engine.dynamics import train_critic as train_particle_critic

    return train_particle_critic(model, state, n_steps)


def critic_values_and_grads(model: NeuralModel, state: NeuralState, x: np.ndarray,
                            need_values: bool = True):
    """f(x) (n,) (None for IPM kernel critics when not needed) and grad f(x) (n, d)."""
    at_x = state if x is state.x else dataclasses.replace(state, x=x)
    return model.critic.values_and_grads(at_x, model.critic.prepare(x), need_values)


# ------------------------------------------------------------------------ generator ----
def particle_forces(model: NeuralModel, state: NeuralState):
    """Forces F_i = -c'(f(x_i)) grad f(x_i) (N, d) and critic gradients grad f(x_i) (N, d)."""
    need_values = model.objective.name != "ipm"
    values, grad = critic_values_and_grads(model, state, state.x, need_values)
    if not need_values:
        return grad, grad
    _, dc = model.objective.gen_term(values)
    return -dc[:, None] * grad, grad


def generator_param_grad(model: NeuralModel, state: NeuralState,
                         forces: np.ndarray) -> np.ndarray:
    """grad_theta L_G = J_G^T (-F / N), L_G = (1/N) sum_i c(f(G_theta(z_i))), critic frozen.

    Parameters
    ----------
    forces : (N, d) forces F at ``state.x`` (from :func:`particle_forces`).

    Returns
    -------
    (P_G,) gradient in the layout of ``state.theta_g``.
    """
    gen = model.generator.with_theta(state.theta_g)
    _, cache = nn.mlp_forward(gen, state.z)
    n = state.z.shape[0]
    return nn.mlp_backward(gen, cache, -forces / n)[0]


def outer_step(model: NeuralModel, state: NeuralState):
    """One outer step (critic steps, generator step, new outputs). Returns (new state, grad f(x_t)).

    Both learning rates are multiplied by ``state.lr_scale`` (generator optimizer and critic).
    """
    par = model.params
    if par.update == "simultaneous":
        forces, grad = particle_forces(model, state)
        state = train_critic(model, state, par.critic_steps)
    else:
        state = train_critic(model, state, par.critic_steps)
        forces, grad = particle_forces(model, state)
    gopt = state.gen_opt.copy()
    scale_optimizer_lr(gopt, par.eta_g, state.lr_scale)
    gopt.begin_outer_step()
    theta = gopt.step(state.theta_g, generator_param_grad(model, state, forces))
    latents, z = state.latents, state.z
    if model.fresh_latents:
        latents = advanced_copy(state.latents)
        z = draw_latents(model.latent_shape, latents, model.dtype)
    x = nn.mlp_apply(model.generator.with_theta(theta), z)
    return dataclasses.replace(state, step=state.step + 1, x=x, z=z, theta_g=theta, gen_opt=gopt,
                               latents=latents), grad


def state_is_finite(state: NeuralState) -> bool:
    """True when outputs, generator and critic parameters are all finite."""
    if not state.critic_finite:
        return False
    if not (np.all(np.isfinite(state.x)) and np.all(np.isfinite(state.theta_g))):
        return False
    return state.w is None or bool(np.all(np.isfinite(state.w)))
