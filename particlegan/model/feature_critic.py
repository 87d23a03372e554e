"""Learned-feature critics of particle-based distances (effective-gan-spec Part B: B2, B6.2-B6.4).

The critic is a trainable feature map D_theta: R^d -> R^m (an MLP of :mod:`particlegan.maths.nn`).
With features u_i = D(x_i) of the N particles and v_m = D(y_m) of the M target samples, the
distance is the interaction energy of B2 in its V-statistic form (every kernel here is bounded)::

    E(u, v) = 1/(2N^2) sum_ij K(u_i, u_j) - 1/(NM) sum_im K(u_i, v_m) + 1/(2M^2) sum_mn K(v_m, v_n)

i.e. half the biased MMD^2 of the feature clouds, with K a Gaussian (mixture), the energy kernel
(Cramer / energy distance) or the regularised Riesz kernel (EIEG).

* The critic maximises  J(theta) = E(u, v) - S - (wd/2) ||theta||^2  by the critic optimizer,
  where S is the optional stabilising term (``beta`` > 0) [derived construction, not the
  Chen-Wu-Xiang term, which is unknown; B2, B6.2]::

      S = beta * 1/(2M^2) sum_mn K(v_m, v_n)                          ("real")
        + beta * 1/(2N^2) sum_ij K(u_i, u_j)   (also, "symmetric")

  Linearising the feature-density ascent flow, the self-interaction of the real features makes
  density perturbations grow at rate rho_0 |k|^2 K_hat(k); S multiplies it by (1 - beta), so
  beta > 1 removes the instability (:func:`particlegan.maths.stability.dispersion_relation`).
* The particles descend E through D: their critic is the witness
  f(x) = (1/M) sum_m K(D(x), v_m) - (1/N) sum_j K(D(x), u_j), with
  grad f(x_i) = J_D(x_i)^T g_i and g_i = -N dE/du_i, exactly as the fixed-kernel flows
  (critic.type = mmd / energy / riesz) with D = identity.

With the anchored energy kernel k(a, b) = |a| + |b| - |a - b| the anchor terms cancel in E
(zero total mass), while in S they add beta * mean |v| (a pull of the features towards the
origin) next to the spreading term -beta/2 mean |v - v'|: both stabilising.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from particlegan.maths import nn
from particlegan.maths.kernels import KernelSpec

__all__ = ["LearnedFeatureCritic", "FEATURE_KERNELS", "feature_space_gradients",
           "interaction_energy", "learned_critic_objective", "learned_critic_values_and_grads"]

FEATURE_KERNELS = ("gaussian", "energy", "riesz")


@dataclass(frozen=True)
class LearnedFeatureCritic:
    """Static description of a learned-feature critic (its parameters theta live in the state).

    Attributes
    ----------
    net : feature MLP (d, width x depth, m); its own theta is the initial draw.
    kernel : feature-space kernel K.  beta : stabiliser weight (0: off).
    stabilizer : "real" (S on the target features) or "symmetric" (also on the particles').
    """

    net: nn.MLP
    kernel: KernelSpec
    beta: float
    stabilizer: str


def _weights(n: int, value: float, dtype) -> np.ndarray:
    return np.full(n, value, dtype=dtype)


def interaction_energy(u: np.ndarray, v: np.ndarray, kernel: KernelSpec, backend) -> float:
    """E(u, v) of the module docstring (V-statistic), u (N, m), v (M, m)."""
    n, m = len(u), len(v)
    c = np.concatenate([u, v])
    w = np.concatenate([_weights(n, 1.0 / n, u.dtype), _weights(m, -1.0 / m, u.dtype)])
    # 1/2 sum_ab w_a w_b K(c_a, c_b) with w = (1/N, ..., -1/M, ...)
    return float(0.5 * np.dot(w.astype(np.float64), backend.kernel_sum(c, c, w, kernel).astype(np.float64)))


def feature_space_gradients(u: np.ndarray, v: np.ndarray, kernel: KernelSpec, beta: float,
                            stabilizer: str, backend) -> tuple[np.ndarray, np.ndarray]:
    """dJ/du (N, m) and dJ/dv (M, m) of J = E(u, v) - S with respect to the features themselves.

    dJ/du_i = (1 - beta_u)/N^2 sum_j grad_1 K(u_i, u_j) - 1/(NM) sum_m grad_1 K(u_i, v_m)
    dJ/dv_m = (1 - beta)/M^2 sum_n grad_1 K(v_m, v_n) - 1/(NM) sum_i grad_1 K(v_m, u_i)

    with beta_u = beta for the "symmetric" stabiliser, else 0. Free features moving with
    velocity M dJ/dv_m follow the discriminator's Wasserstein ascent flow of B2, whose density
    perturbations grow at (1 - beta) rho_0 |k|^2 K_hat(k).
    """
    n, m = len(u), len(v)
    beta_u = beta if stabilizer == "symmetric" else 0.0
    c = np.concatenate([u, v])
    dt = u.dtype
    w_u = np.concatenate([_weights(n, (1.0 - beta_u) / n**2, dt), _weights(m, -1.0 / (n * m), dt)])
    w_v = np.concatenate([_weights(n, -1.0 / (n * m), dt), _weights(m, (1.0 - beta) / m**2, dt)])
    return backend.kernel_grad_sum(u, c, w_u, kernel), backend.kernel_grad_sum(v, c, w_v, kernel)


def learned_critic_objective(critic: LearnedFeatureCritic, theta: np.ndarray, x: np.ndarray,
                             y: np.ndarray, backend, weight_decay: float = 0.0,
                             need_value: bool = True) -> tuple[float, np.ndarray]:
    """Critic objective J(theta) = E(u, v) - S - (wd/2) |theta|^2 (maximised) and dJ/dtheta.

    Parameters
    ----------
    critic : the critic.  theta : (P,) feature-map parameters.
    x : (N, d) particles.  y : (M, d) target samples.  backend : kernel-sum backend.
    weight_decay : L2 coefficient wd >= 0.
    need_value : False skips the O((N + M)^2) value sums (training needs the gradient only).

    Returns
    -------
    value : float J (nan when not needed).  grad : (P,) dJ/dtheta (through both feature clouds).
    """
    net = critic.net.with_theta(theta)
    u, cache_u = nn.mlp_forward(net, x)
    v, cache_v = nn.mlp_forward(net, y)
    n, m = len(u), len(v)
    dt = u.dtype
    beta_v = critic.beta
    beta_u = critic.beta if critic.stabilizer == "symmetric" else 0.0
    g_u, g_v = feature_space_gradients(u, v, critic.kernel, critic.beta, critic.stabilizer, backend)
    grad = nn.mlp_backward(net, cache_u, g_u)[0] + nn.mlp_backward(net, cache_v, g_v)[0]
    if weight_decay > 0:
        grad = grad - theta.dtype.type(weight_decay) * theta
    if not need_value:
        return float("nan"), grad
    value = interaction_energy(u, v, critic.kernel, backend)
    if critic.beta > 0:
        value -= beta_v * 0.5 * float(np.mean(backend.kernel_sum(v, v, _weights(m, 1.0 / m, dt), critic.kernel)))
        if beta_u > 0:
            value -= beta_u * 0.5 * float(np.mean(backend.kernel_sum(u, u, _weights(n, 1.0 / n, dt),
                                                                     critic.kernel)))
    if weight_decay > 0:
        value -= 0.5 * weight_decay * float(theta @ theta)
    return value, grad


def learned_critic_values_and_grads(critic: LearnedFeatureCritic, theta: np.ndarray, x: np.ndarray,
                                    y: np.ndarray, backend, need_values: bool = True):
    """Witness f(x_i) (N,) (or None) and grad f(x_i) (N, d) at the particles x (N, d).

    f(x) = (1/M) sum_m K(D(x), v_m) - (1/N) sum_j K(D(x), u_j), u_j = D(x_j), v_m = D(y_m);
    grad f(x_i) = J_D(x_i)^T g_i with g_i = sum_c w_c grad_1 K(u_i, c) over c in (u, v).
    """
    net = critic.net.with_theta(theta)
    u, cache_u = nn.mlp_forward(net, x)
    v = nn.mlp_apply(net, y)
    n, m = len(u), len(v)
    c = np.concatenate([u, v])
    w = np.concatenate([_weights(n, -1.0 / n, u.dtype), _weights(m, 1.0 / m, u.dtype)])
    g = backend.kernel_grad_sum(u, c, w, critic.kernel)
    grad = nn.mlp_backward(net, cache_u, g)[1]
    values = backend.kernel_sum(u, c, w, critic.kernel) if need_values else None
    return values, grad
