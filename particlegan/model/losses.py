"""GAN objectives written on the critic output s = f(x) (a logit for classification losses).

Every objective is a triple of per-sample functions of s, each returning (value, d value/ds):

* critic objective (maximised):  J = mean_real a(s_r) + mean_fake b(s_f)  [- penalty]
* generator loss (minimised):    L_G = mean_fake c(s_f)

so the force on particle i is F_i = -c'(s_i) grad f(x_i) (the per-particle descent direction of
N * L_G), and the particle step is x_i += eta_G sum_j C_ij F_j.

Objectives
----------
* ``ipm`` (WGAN/Sobolev type, A2.1): a(s) = s, b(s) = -s, c(s) = -s, so F_i = grad f(x_i).
* ``alpha`` (Welfert et al., P3.1-P3.4): with L_alpha(s) := l_alpha(1, sigma(s)) and
  l_alpha(0, sigma(s)) = L_alpha(-s):  a(s) = -L_{alpha_D}(s), b(s) = -L_{alpha_D}(-s);
  saturating c(s) = -L_{alpha_G}(-s); non-saturating c(s) = L_{alpha_G}(s).
* ``minimax`` = alpha (1, 1) saturating (vanilla GAN, log(1 - D) generator).
* ``nonsaturating`` = alpha (1, 1) non-saturating (-log D generator).

The alpha-loss is evaluated in log space (spec 3.2 note): sigma(s)^{(alpha-1)/alpha} =
exp(((alpha-1)/alpha) log sigma(s)) with log sigma(s) = -softplus(-s); alpha = 1 (log-loss) and
alpha = inf (soft 0-1 loss) are exact special cases.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

ScalarFn = Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]]


def log_sigmoid(s: np.ndarray) -> np.ndarray:
    """log sigma(s) = -softplus(-s), stable for all s."""
    return -np.logaddexp(0.0, -s)


def sigmoid(s: np.ndarray) -> np.ndarray:
    """sigma(s) = 1 / (1 + e^{-s}), stable for all s."""
    return np.exp(log_sigmoid(s))


def alpha_loss_real(s: np.ndarray, alpha: float) -> tuple[np.ndarray, np.ndarray]:
    """L_alpha(s) = l_alpha(1, sigma(s)) and its derivative in s (P3.1).

    l_alpha(1, y) = alpha/(alpha-1) (1 - y^{(alpha-1)/alpha});  alpha = 1: -log y;
    alpha = inf: 1 - y.  Derivative: dL/ds = -sigma(s)^{(alpha-1)/alpha} sigma(-s).

    Parameters
    ----------
    s : (n,) critic logits.
    alpha : in (0, inf].

    Returns
    -------
    value, derivative : (n,) each.
    """
    s = np.asarray(s)
    log_sig = log_sigmoid(s)
    sig_neg = sigmoid(-s)
    if alpha == 1.0:
        return -log_sig, -sig_neg
    if np.isinf(alpha):
        sig = np.exp(log_sig)
        return sig_neg, -sig * sig_neg  # 1 - sigma(s) = sigma(-s): no cancellation for large s
    e = (alpha - 1.0) / alpha
    pow_e = np.exp(e * log_sig)  # sigma(s)^e without forming sigma(s)^e by a pow of a tiny number
    # alpha/(alpha-1) (1 - y^e) = -(expm1(e log y))/e, accurate when e log y is small
    value = -np.expm1(e * log_sig) / e
    return value, -pow_e * sig_neg


def alpha_loss_fake(s: np.ndarray, alpha: float) -> tuple[np.ndarray, np.ndarray]:
    """l_alpha(0, sigma(s)) = L_alpha(-s) and its derivative in s."""
    v, d = alpha_loss_real(-np.asarray(s), alpha)
    return v, -d


@dataclass(frozen=True)
class Objective:
    """Per-sample critic/generator terms of a GAN objective (see module docstring).

    ``real_term(s)``, ``fake_term(s)``: the critic maximises their means; ``gen_term(s)``:
    the generator minimises its mean. Each returns (value, derivative in s).
    """

    name: str
    real_term: ScalarFn
    fake_term: ScalarFn
    gen_term: ScalarFn


def _ipm_real(s):
    return s, np.ones_like(s)


def _ipm_fake(s):
    return -s, -np.ones_like(s)


def make_objective(kind: str, alpha_d: float = 1.0, alpha_g: float = 1.0,
                   saturating: bool = True) -> Objective:
    """Build the :class:`Objective` of ``loss.kind`` (``ipm``, ``minimax``, ``nonsaturating``, ``alpha``)."""
    if kind == "ipm":
        return Objective("ipm", _ipm_real, _ipm_fake, _ipm_fake)
    if kind == "minimax":
        alpha_d, alpha_g, saturating = 1.0, 1.0, True
    elif kind == "nonsaturating":
        alpha_d, alpha_g, saturating = 1.0, 1.0, False
    elif kind != "alpha":
        raise ValueError(f"unknown objective {kind!r}")

    def real_term(s):
        v, d = alpha_loss_real(s, alpha_d)
        return -v, -d

    def fake_term(s):
        v, d = alpha_loss_fake(s, alpha_d)
        return -v, -d

    if saturating:
        def gen_term(s):
            v, d = alpha_loss_fake(s, alpha_g)
            return -v, -d
    else:
        def gen_term(s):
            return alpha_loss_real(s, alpha_g)

    label = f"alpha({alpha_d:g},{alpha_g:g},{'sat' if saturating else 'ns'})"
    return Objective(label, real_term, fake_term, gen_term)


