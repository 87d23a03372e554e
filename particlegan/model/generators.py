"""The generator side of the engine: how the generated points x move under the forces F.

Every generator object has the same small interface, and the engine
(:mod:`particlegan.engine.dynamics`) never asks which kind it is:

* ``step(gen_state, x, forces, lr_scale) -> (x_new (N, d), gen_state)``: one generator step
  with the forces F (N, d) at the current points x (N, d) and the learning rate
  ``lr_scale * eta_G``; pure (nothing it is given is changed).
* ``is_finite(gen_state) -> bool``: the generator's own parameters are finite.
* ``result_arrays(gen_state) -> dict``: what a run stores of them in result.npz.

``gen_state`` is whatever the kind needs beyond x (None for particles); it lives in the engine's
state as ``state.gen`` and is checkpointed with it.
:func:`particlegan.model.from_config.build_generator` builds the object, the initial points and
the initial generator state from the config (``model.type``).

Particles (``model.type = "particle"``, :class:`ParticleGenerator`)
--------------------------------------------------------------------
The effective model (effective-gan-spec A2.6): x_i <- x_i + eta_G sum_j C_ij F_j with the
coupling C of :mod:`particlegan.model.coupling` (universal, identity, ntk_relu, ntk_erf, matrix,
empirical NTK), a plain gradient step.

MLP generator (``model.type = "neural"``, :class:`MLPGenerator`)
-----------------------------------------------------------------
An MLP ``(generator.latent_dim, generator.width x generator.depth, target.dim)``
(:mod:`particlegan.maths.nn`; ``generator.activation``, ``bias``, ``parameterization``,
``sigma_w`` / ``sigma_b``) on latents of kind ``generator.latent`` ("sphere": radius sqrt(d_z);
"gaussian": N(0, I)); x_i = G_theta(z_i) on a fixed latent set z_1..z_N (N = ``particles.n``),
or on a fresh minibatch every step (``generator.fresh_latents``). ``particles.init`` is not
used. One generator step on L_G(theta) = (1/N) sum_i c(f(G_theta(z_i))) (critic frozen)::

    grad_theta L_G = J_G^T (-F / N) = sum_i (dG(z_i)/dtheta)^T (-F_i) / N
    theta <- optimizer step (generator.optimizer, learning rate eta_G = dynamics.eta_g)

then, with fresh latents, a new minibatch z is drawn (stream ``particles``, kept in the state as
``gen.latents``) and x <- G_theta(z). With SGD, to first order in eta_G, x_i <- x_i +
(eta_G / N) sum_j Theta(z_i, z_j) F_j with the empirical NTK Theta = J_G J_G^T: the particle
step with ``generator.normalization = "ntk"`` and kernel Theta (effective-gan-spec A-1), so
eta_G means the same for both kinds. Randomness: initial weights from stream ``coupling``
(unused by this kind otherwise), latents from ``particles``.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from particlegan.maths import nn
from particlegan.model.coupling import Coupling, apply_coupling
from particlegan.model.optimizers import Optimizer, OptState
from particlegan.model.streams import advanced_copy


# ------------------------------------------------------------------------ particles ----
@dataclass(frozen=True)
class ParticleGenerator:
    """Particles moved through the coupling C: x <- x + lr_scale eta_G C F (no own state)."""

    coupling: Coupling
    eta_g: float
    backend: object
    dtype: np.dtype

    def step(self, gen_state, x: np.ndarray, forces: np.ndarray, lr_scale: float):
        moved = apply_coupling(self.coupling, forces, self.backend)
        return (x + (self.eta_g * lr_scale) * moved).astype(self.dtype, copy=False), gen_state

    def is_finite(self, gen_state) -> bool:
        return True

    def result_arrays(self, gen_state) -> dict:
        return {}


# -------------------------------------------------------------------- MLP generator ----
@dataclass(frozen=True)
class MLPGeneratorState:
    """The MLP generator's evolving part: parameters ``theta`` (P_G,) (flat, the layout of
    :class:`particlegan.maths.nn.MLP`), current latents ``z`` (N, d_z), its optimizer's state
    ``opt`` and the stream of fresh latent minibatches ``latents`` (never advanced in place)."""

    theta: np.ndarray
    z: np.ndarray
    opt: OptState
    latents: np.random.Generator


def draw_latents(shape: tuple, rng: np.random.Generator, dtype) -> np.ndarray:
    """N latents (N, d_z) of the kind in ``shape`` = (N, d_z, kind)."""
    n, dim, kind = shape
    return nn.sample_latents(n, dim, kind, rng, dtype)


@dataclass(frozen=True)
class MLPGenerator:
    """An MLP generator pulled back through its Jacobian (see the module docstring).

    Attributes
    ----------
    net : the MLP at initialisation (its architecture; the live parameters are ``gen.theta``).
    optimizer : the generator's optimizer rule (base learning rate eta_G; its state is
    ``gen.opt``).  latent_shape : (N, d_z, kind) of fresh minibatches.
    fresh_latents : draw new latents every step.  dtype : run dtype.
    """

    net: nn.MLP
    optimizer: Optimizer
    latent_shape: tuple
    fresh_latents: bool
    dtype: np.dtype

    def param_grad(self, gen_state: MLPGeneratorState, forces: np.ndarray) -> np.ndarray:
        """grad_theta L_G = J_G^T (-F / N) (P_G,), L_G = (1/N) sum_i c(f(G_theta(z_i))), for
        the forces F (N, d) at x = G_theta(z) (critic frozen)."""
        net = self.net.with_theta(gen_state.theta)
        _, cache = nn.mlp_forward(net, gen_state.z)
        return nn.mlp_backward(net, cache, -forces / gen_state.z.shape[0])[0]

    def step(self, gen_state: MLPGeneratorState, x: np.ndarray, forces: np.ndarray, lr_scale: float):
        opt_state = self.optimizer.begin_outer_step(gen_state.opt)
        theta, opt_state = self.optimizer.update(opt_state, gen_state.theta, self.param_grad(gen_state, forces),
                                                 lr_scale=lr_scale)
        latents, z = gen_state.latents, gen_state.z
        if self.fresh_latents:
            latents = advanced_copy(gen_state.latents)
            z = draw_latents(self.latent_shape, latents, self.dtype)
        x_new = nn.mlp_apply(self.net.with_theta(theta), z)
        return x_new, MLPGeneratorState(theta=theta, z=z, opt=opt_state, latents=latents)

    def is_finite(self, gen_state: MLPGeneratorState) -> bool:
        return bool(np.all(np.isfinite(gen_state.theta)))

    def result_arrays(self, gen_state: MLPGeneratorState) -> dict:
        return {"generator_theta": gen_state.theta}
