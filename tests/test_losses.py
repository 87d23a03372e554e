import numpy as np
import pytest

from particlegan.model.from_config import penalty_coefficient
from particlegan.model.losses import alpha_loss_fake, alpha_loss_real, make_objective, sigmoid

ALPHAS = [0.2, 0.3, 0.5, 1.0, 1.2, 2.0, 5.0, np.inf]
S = np.linspace(-8, 8, 33)


def reference_alpha_loss(y, yhat, alpha):
    """Direct (probability-space) alpha-loss of P3.1, written independently of the log-space code."""
    if alpha == 1.0:
        return -y * np.log(yhat) - (1 - y) * np.log(1 - yhat)
    if np.isinf(alpha):
        return 1 - y * yhat - (1 - y) * (1 - yhat)
    e = (alpha - 1) / alpha
    return alpha / (alpha - 1) * (1 - y * yhat ** e - (1 - y) * (1 - yhat) ** e)


@pytest.mark.parametrize("alpha", ALPHAS)
def test_alpha_loss_matches_probability_form(alpha):
    yhat = 1.0 / (1.0 + np.exp(-S))
    v1, _ = alpha_loss_real(S, alpha)
    v0, _ = alpha_loss_fake(S, alpha)
    np.testing.assert_allclose(v1, reference_alpha_loss(1, yhat, alpha), rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(v0, reference_alpha_loss(0, yhat, alpha), rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("alpha", ALPHAS)
def test_alpha_loss_derivative_finite_difference(alpha):
    h = 1e-6
    for fn in (alpha_loss_real, alpha_loss_fake):
        _, d = fn(S, alpha)
        fd = (fn(S + h, alpha)[0] - fn(S - h, alpha)[0]) / (2 * h)
        np.testing.assert_allclose(d, fd, rtol=1e-6, atol=1e-9)


def test_alpha_special_cases_are_limits():
    # alpha -> 1 and alpha -> inf of the general formula approach the exact special cases
    for a_near, a_exact in [(1.0 + 1e-7, 1.0), (1e9, np.inf)]:
        np.testing.assert_allclose(alpha_loss_real(S, a_near)[0], alpha_loss_real(S, a_exact)[0],
                                   rtol=1e-5, atol=1e-6)


def test_alpha_half_closed_form():
    # l_{1/2}(1, y) = 1/y - 1 (P3.1)
    yhat = sigmoid(S)
    np.testing.assert_allclose(alpha_loss_real(S, 0.5)[0], 1 / yhat - 1, rtol=1e-9)


def test_log_space_is_stable_for_small_alpha_and_large_logits():
    s = np.array([-60.0, -30.0, 30.0, 60.0])
    for alpha in (0.2, 0.5, 1.0, 3.0, np.inf):
        v, d = alpha_loss_real(s, alpha)
        assert np.all(np.isfinite(v)) and np.all(np.isfinite(d))


def test_alpha_infinity_keeps_relative_accuracy_in_the_tails():
    """l_inf(1, sigma(s)) = 1 - sigma(s) = 1 / (1 + e^s): at s = 40 it is 4.25e-18, not 0 (the
    form 1 - sigma(s) cancels to 0 from s ~ 37 on). Reference: 1 / (1 + exp(s)) evaluated directly,
    exact to rounding for s > 0."""
    s = np.array([5.0, 20.0, 40.0, 100.0, 700.0])
    exact = 1.0 / (1.0 + np.exp(s))
    v, d = alpha_loss_real(s, np.inf)
    np.testing.assert_allclose(v, exact, rtol=1e-12)
    assert v[2] == pytest.approx(4.248354255291589e-18, rel=1e-12)
    # derivative -sigma(s) sigma(-s), and the fake side l_inf(0, sigma(-s)) is the mirror image
    np.testing.assert_allclose(d, -exact / (1.0 + np.exp(-s)), rtol=1e-12)
    np.testing.assert_allclose(alpha_loss_fake(-s, np.inf)[0], exact, rtol=1e-12)


def test_objectives_signs_and_special_cases():
    s = np.array([-1.0, 0.5, 2.0])
    ipm = make_objective("ipm")
    np.testing.assert_allclose(ipm.real_term(s)[0], s)
    np.testing.assert_allclose(ipm.gen_term(s)[1], -np.ones(3))
    mm = make_objective("minimax")
    # vanilla critic: log D(real) + log(1 - D(fake))
    np.testing.assert_allclose(mm.real_term(s)[0], np.log(sigmoid(s)), rtol=1e-12)
    np.testing.assert_allclose(mm.fake_term(s)[0], np.log(1 - sigmoid(s)), rtol=1e-12)
    # saturating generator minimises log(1 - D); non-saturating minimises -log D
    np.testing.assert_allclose(mm.gen_term(s)[0], np.log(1 - sigmoid(s)), rtol=1e-12)
    ns = make_objective("nonsaturating")
    np.testing.assert_allclose(ns.gen_term(s)[0], -np.log(sigmoid(s)), rtol=1e-12)
    a = make_objective("alpha", 1.0, 1.0, True)
    np.testing.assert_allclose(a.gen_term(s)[0], mm.gen_term(s)[0])


@pytest.mark.parametrize("kind,ad,ag,sat", [("alpha", 0.3, 1.0, True), ("alpha", 0.5, 1.2, False),
                                            ("minimax", 1, 1, True), ("nonsaturating", 1, 1, False),
                                            ("alpha", np.inf, 2.0, True)])
def test_objective_derivatives_finite_difference(kind, ad, ag, sat):
    obj = make_objective(kind, ad, ag, sat)
    h = 1e-6
    for fn in (obj.real_term, obj.fake_term, obj.gen_term):
        fd = (fn(S + h)[0] - fn(S - h)[0]) / (2 * h)
        np.testing.assert_allclose(fn(S)[1], fd, rtol=1e-6, atol=1e-9)


def test_generator_force_direction_pushes_towards_real():
    # every generator loss decreases when the critic logit of a fake sample increases
    for obj in (make_objective("ipm"), make_objective("minimax"), make_objective("nonsaturating"),
                make_objective("alpha", 0.3, 1.0, True), make_objective("alpha", 0.5, 1.2, False)):
        assert np.all(obj.gen_term(S)[1] < 0)


def test_penalty_coefficient_conventions():
    base = {"penalty": "fake", "penalty_weight": 0.4, "penalty_form": "lambda"}
    assert penalty_coefficient(base) == 0.4
    assert penalty_coefficient({**base, "penalty_form": "half_lambda"}) == 0.2
    assert penalty_coefficient({**base, "penalty": "none"}) == 0.0
    # mean_grad: the penalty of the gradient of the batch mean, grad_x (1/n) sum_j f(x_j)
    assert penalty_coefficient({**base, "penalty_form": "mean_grad"}, 100) == pytest.approx(0.4e-4, rel=1e-15)
    with pytest.raises(ValueError, match="number of penalty points"):
        penalty_coefficient({**base, "penalty_form": "mean_grad"})


def test_mean_grad_penalty_equals_the_penalty_of_the_batch_mean_gradient():
    """USD's D_forward_weights: lambda mean_i ||d/dx_i (mean_j f(x_j))||^2, computed directly
    (finite differences of the batch mean) against the critic objective's penalty term."""
    from particlegan.engine import dynamics as dyn
    from particlegan.store.config import resolve_config
    from particlegan.model.particle_critics import mlp_critic_objective

    cfg = resolve_config(overrides=["particles.n=6", "target.n_samples=7", "critic.type=mlp", "critic.widths=[5]",
                                    "critic.activation=tanh", "loss.penalty_weight=1.25",
                                    "loss.penalty_form=mean_grad", "dynamics.critic_steps_startup=0"])
    model, state = dyn.build_model(cfg)
    c, L = model.critic, model.critic.loss
    assert L.lam == pytest.approx(1.25 / 36)
    net = c.net.with_theta(state.w)
    x = state.x.astype(np.float64)
    h = 1e-6

    def mean_f(xx):
        from particlegan.maths import nn
        return float(nn.mlp_apply(net, xx)[:, 0].mean())

    g = np.zeros_like(x)
    for i in range(x.shape[0]):
        for k in range(x.shape[1]):
            e = np.zeros_like(x)
            e[i, k] = h
            g[i, k] = (mean_f(x + e) - mean_f(x - e)) / (2 * h)
    want = 1.25 * np.mean(np.sum(g * g, axis=1))
    with_pen = mlp_critic_objective(net, L.y, x, L.objective, L.penalty, L.lam)[0]
    without = mlp_critic_objective(net, L.y, x, L.objective, "none", 0.0)[0]
    assert without - with_pen == pytest.approx(want, rel=1e-6)
