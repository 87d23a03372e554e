"""Tests of particlegan.maths.nn: initialisation, forward pass, and every gradient against central
finite differences in float64 (all activations, with/without bias, both parameterisations,
depth 1-3)."""
import itertools
import math

import numpy as np
import pytest

from particlegan.maths import nn
from particlegan.errors import ConfigError
from finite_differences import fd_grad

ACTS = ("relu", "leaky_relu", "tanh")
PARAMS = ("standard", "ntk")
GRID = list(itertools.product(ACTS, (False, True), PARAMS, (1, 2, 3)))
GRID_IDS = [f"{a}-{'bias' if b else 'nobias'}-{p}-depth{d}" for a, b, p, d in GRID]


def _net(act, bias, par, depth, d_in=3, width=5, d_out=2, seed=0):
    rng = np.random.default_rng(seed)
    sizes = [d_in] + [width] * depth + [d_out]
    # sigma_b != 1 so that the bias multiplier is exercised in the ntk parameterisation
    return nn.init_mlp(sizes, act, bias, par, rng, leaky_slope=0.2, sigma_w=1.3, sigma_b=0.7)


def _assert_grad_close(analytic, fd):
    scale = max(1.0, float(np.abs(fd).max()))
    np.testing.assert_allclose(analytic, fd, rtol=1e-6, atol=1e-7 * scale)


def _reference_forward(m, X):
    """Independent forward pass written from the documented equations (loop over layers)."""
    h = np.asarray(X, dtype=np.float64)
    sizes = m.layer_sizes
    pos = 0
    L = len(sizes) - 1
    for k in range(L):
        n_in, n_out = sizes[k], sizes[k + 1]
        W = m.theta[pos:pos + n_in * n_out].reshape(n_out, n_in)
        pos += n_in * n_out
        if m.parameterization == "ntk":
            a, c = m.sigma_w / math.sqrt(n_in), m.sigma_b
        else:
            a, c = 1.0, 1.0
        z = a * np.einsum("oi,ni->no", W, h)
        if m.bias and (m.output_bias or k < L - 1):
            z = z + c * m.theta[pos:pos + n_out]
            pos += n_out
        if k < L - 1:
            if m.activation == "relu":
                h = np.where(z > 0, z, 0.0)
            elif m.activation == "leaky_relu":
                h = np.where(z > 0, z, m.leaky_slope * z)
            else:
                h = np.tanh(z)
        else:
            h = z
    assert pos == m.theta.size
    return h


# --------------------------------------------------------------------------------- init ----
@pytest.mark.parametrize("bias", [False, True])
def test_parameter_count_and_views(bias):
    m = nn.init_mlp([4, 6, 3, 2], "tanh", bias, "ntk", np.random.default_rng(1))
    expected = 4 * 6 + 6 * 3 + 3 * 2 + ((6 + 3 + 2) if bias else 0)
    assert m.n_params == expected == nn.count_params([4, 6, 3, 2], bias)
    # weight/bias accessors are views into the flat vector
    m.weight(1)[0, 0] = 123.0
    assert 123.0 in m.theta
    assert (m.bias_vector(0) is None) == (not bias)
    # the tensor slices tile theta in order
    slices = m.tensor_slices()
    assert slices[0].start == 0 and slices[-1].stop == m.n_params
    assert all(a.stop == b.start for a, b in zip(slices[:-1], slices[1:]))
    assert len(slices) == (6 if bias else 3)


def test_standard_init_is_fan_in_uniform():
    rng = np.random.default_rng(2)
    m = nn.init_mlp([400, 300, 1], "relu", True, "standard", rng)
    W0, b0 = m.weight(0), m.bias_vector(0)
    bound = 1 / math.sqrt(400)
    assert np.abs(W0).max() <= bound and np.abs(b0).max() <= bound
    # variance of U(-a, a) is a^2/3
    assert abs(W0.var() / (bound ** 2 / 3) - 1) < 0.02
    W1 = m.weight(1)
    assert np.abs(W1).max() <= 1 / math.sqrt(300)


def test_ntk_init_is_standard_normal():
    m = nn.init_mlp([300, 400, 2], "relu", True, "ntk", np.random.default_rng(3))
    assert abs(m.theta.mean()) < 0.01 and abs(m.theta.var() - 1) < 0.01


@pytest.mark.parametrize("act,bias,par,depth", GRID, ids=GRID_IDS)
def test_forward_matches_reference(act, bias, par, depth):
    m = _net(act, bias, par, depth)
    X = np.random.default_rng(4).standard_normal((7, 3))
    out, _ = nn.mlp_forward(m, X)
    np.testing.assert_allclose(out, _reference_forward(m, X), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("act", ACTS)
def test_dtype_is_kept_and_float32_agrees(act, dtype):
    m64 = _net(act, True, "ntk", 2)
    m = nn.init_mlp(m64.layer_sizes, act, True, "ntk", np.random.default_rng(0), sigma_w=1.3,
                    sigma_b=0.7, dtype=dtype)
    X = np.random.default_rng(5).standard_normal((6, 3))
    out, cache = nn.mlp_forward(m, X)
    g_theta, g_x = nn.mlp_backward(m, cache, np.ones_like(out))
    assert out.dtype == dtype and g_theta.dtype == dtype and g_x.dtype == dtype
    out64, cache64 = nn.mlp_forward(m64, X)
    g64, gx64 = nn.mlp_backward(m64, cache64, np.ones_like(out64))
    tol = 1e-4 if dtype == np.float32 else 1e-12
    np.testing.assert_allclose(out, out64, rtol=tol, atol=tol)
    np.testing.assert_allclose(g_theta, g64, rtol=tol, atol=tol)
    np.testing.assert_allclose(g_x, gx64, rtol=tol, atol=tol)


# ---------------------------------------------------------------------- gradients (FD) ----
@pytest.mark.parametrize("act,bias,par,depth", GRID, ids=GRID_IDS)
def test_mlp_backward_matches_finite_differences(act, bias, par, depth):
    m = _net(act, bias, par, depth)
    rng = np.random.default_rng(6)
    X = rng.standard_normal((5, 3))
    R = rng.standard_normal((5, 2))          # grad_out: loss = sum(R * out)
    out, cache = nn.mlp_forward(m, X)
    g_theta, g_x = nn.mlp_backward(m, cache, R)
    fd_theta = fd_grad(lambda th: float(np.sum(R * nn.mlp_apply(m.with_theta(th), X))), m.theta)
    fd_x = fd_grad(lambda x: float(np.sum(R * nn.mlp_apply(m, x))), X)
    _assert_grad_close(g_theta, fd_theta)
    _assert_grad_close(g_x, fd_x)


@pytest.mark.parametrize("act", ACTS)
def test_generator_force_pullback_is_jacobian_transpose(act):
    """grad_theta = J^T F: per-sample Jacobian (itself checked by FD) contracted with forces."""
    m = _net(act, True, "ntk", 2)
    rng = np.random.default_rng(7)
    Z = rng.standard_normal((4, 3))
    F = rng.standard_normal((4, 2))
    J = nn.mlp_jacobian(m, Z)                                    # (n, d, P)
    for i in range(4):
        for mu in range(2):
            fd = fd_grad(lambda th: float(nn.mlp_apply(m.with_theta(th), Z[i:i + 1])[0, mu]),
                          m.theta)
            _assert_grad_close(J[i, mu], fd)
    out, cache = nn.mlp_forward(m, Z)
    g_theta, _ = nn.mlp_backward(m, cache, F)
    np.testing.assert_allclose(g_theta, np.einsum("imp,im->p", J, F), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("act,bias,par,depth", GRID, ids=GRID_IDS)
def test_critic_input_grad_matches_finite_differences(act, bias, par, depth):
    m = _net(act, bias, par, depth, d_out=1)
    X = np.random.default_rng(8).standard_normal((5, 3))
    g = nn.critic_input_grad(m, X)
    for i in range(X.shape[0]):
        fd = fd_grad(lambda x: float(nn.mlp_apply(m, x[None, :])[0, 0]), X[i])
        _assert_grad_close(g[i], fd)
    values, g2 = nn.critic_values_and_input_grads(m, X)
    np.testing.assert_array_equal(g, g2)
    np.testing.assert_allclose(values, nn.mlp_apply(m, X)[:, 0], rtol=0, atol=0)


def _penalty_reference(m, X, w, form):
    """P(theta) from the (FD-checked) first-order input gradients and the documented formula."""
    g = nn.critic_input_grad(m, X)
    s = np.sum(g * g, axis=1)
    if form == "sq":
        return float(np.sum(w * s))
    return float(np.sum(w * (np.sqrt(s + 1e-12) - 1.0) ** 2))


@pytest.mark.parametrize("form", ["sq", "gp"])
@pytest.mark.parametrize("act,bias,par,depth", GRID, ids=GRID_IDS)
def test_penalty_param_grad_matches_finite_differences(act, bias, par, depth, form):
    m = _net(act, bias, par, depth, d_out=1)
    rng = np.random.default_rng(9)
    X = rng.standard_normal((4, 3))
    w = rng.uniform(0.2, 1.5, 4)
    value, grad = nn.penalty_and_param_grad(m, X, w, form)
    assert value == pytest.approx(_penalty_reference(m, X, w, form), rel=1e-12, abs=1e-14)
    fd = fd_grad(lambda th: _penalty_reference(m.with_theta(th), X, w, form), m.theta)
    _assert_grad_close(grad, fd)


def test_gp_penalty_gradient_near_unit_norm_and_scalar_weight():
    """The gp form with ||g|| ~ 1 (small derivative) and a scalar weight broadcast to all points."""
    m = _net("tanh", True, "ntk", 2, d_out=1, seed=11)
    X = np.random.default_rng(12).standard_normal((6, 3))
    g = nn.critic_input_grad(m, X)
    m = m.with_theta(m.theta / math.sqrt(np.mean(np.sum(g * g, axis=1))))  # rough normalisation
    value, grad = nn.penalty_and_param_grad(m, X, 0.25, "gp")
    w = np.full(6, 0.25)
    assert value == pytest.approx(_penalty_reference(m, X, w, "gp"), rel=1e-12)
    fd = fd_grad(lambda th: _penalty_reference(m.with_theta(th), X, w, "gp"), m.theta)
    _assert_grad_close(grad, fd)


def test_relu_penalty_has_no_bias_gradient():
    """relu'' = 0 a.e.: grad_x f does not depend on the biases (away from kinks)."""
    m = _net("relu", True, "standard", 2, d_out=1)
    X = np.random.default_rng(13).standard_normal((5, 3))
    _, grad = nn.penalty_and_param_grad(m, X, np.ones(5), "sq")
    bias_idx = np.concatenate([np.arange(s.start, s.stop) for s in m.tensor_slices()[1::2]])
    assert np.all(grad[bias_idx] == 0)
    assert np.any(grad != 0)


# ------------------------------------------------------- dropout, no output bias ----
def _masked(m, n, seed=5, rate=0.4):
    rates = [rate] * (m.n_layers - 1)
    rates[0] = 0.0  # a layer without dropout next to layers with it
    return nn.dropout_masks(m, n, rates, np.random.default_rng(seed))


@pytest.mark.parametrize("act", ACTS)
def test_dropout_forward_matches_masked_reference_and_input_grads_match_fd(act):
    m = _net(act, True, "standard", 3, d_out=1)
    X = np.random.default_rng(21).standard_normal((4, 3))
    masks = _masked(m, 4)
    assert masks[0] is None and all(mk.shape == (4, 5) for mk in masks[1:])
    # independent forward: h_{k+1} = m_k * act(z_k), written from the equations
    h = X
    for k in range(m.n_layers):
        z = h @ m.weight(k).T + m.bias_vector(k)
        h = z if k == m.n_layers - 1 else nn._act(m, z) * (1.0 if masks[k] is None else masks[k])
    cp = nn.critic_pass(m, X, masks)
    np.testing.assert_allclose(cp.values, h[:, 0], rtol=1e-13)
    fd = np.stack([fd_grad(lambda xi: nn.mlp_forward(m, np.vstack([X[:i], xi[None], X[i + 1:]]),
                                                       masks)[0][i, 0], X[i]) for i in range(4)])
    _assert_grad_close(cp.grads, fd)


@pytest.mark.parametrize("form", ["sq", "gp"])
@pytest.mark.parametrize("act", ACTS)
def test_dropout_penalty_param_grad_matches_finite_differences(act, form):
    """The double backward carries the masks: m_k act'(z_k) in the tangent and m_k act'' in zbar."""
    m = _net(act, True, "ntk", 3, d_out=1, seed=2)
    X = np.random.default_rng(22).standard_normal((4, 3))
    masks = _masked(m, 4)
    w = np.random.default_rng(23).uniform(0.2, 1.5, 4)

    def P(theta):
        g = nn.critic_pass(m.with_theta(theta), X, masks).grads
        s = np.sum(g * g, axis=1)
        return float(np.sum(w * (s if form == "sq" else (np.sqrt(s + 1e-12) - 1.0) ** 2)))

    value, grad = nn.penalty_and_param_grad(m, None, w, form, cp=nn.critic_pass(m, X, masks))
    assert value == pytest.approx(P(m.theta), rel=1e-12)
    _assert_grad_close(grad, fd_grad(P, m.theta))


def test_dropout_masks_statistics_and_errors():
    m = _net("relu", True, "standard", 2, width=400, d_out=1)
    masks = nn.dropout_masks(m, 500, [0.2, 0.0], np.random.default_rng(0))
    assert masks[1] is None
    dropped = float(np.mean(masks[0] == 0))
    # 2e5 Bernoulli(0.2) draws: std of the fraction 9e-4, margin 5 std
    assert abs(dropped - 0.2) < 5e-3
    assert set(np.unique(masks[0])) == {0.0, 1.25}
    with pytest.raises(ValueError, match="2 hidden layers"):
        nn.dropout_masks(m, 3, [0.1], np.random.default_rng(0))


@pytest.mark.parametrize("act", ACTS)
def test_no_output_bias_layout_and_gradients(act):
    rng = np.random.default_rng(4)
    m = nn.init_mlp([3, 5, 4, 1], act, True, "standard", rng, output_bias=False)
    assert m.n_params == 3 * 5 + 5 + 5 * 4 + 4 + 4 * 1 == nn.count_params([3, 5, 4, 1], True, False)
    assert m.bias_vector(2) is None and m.bias_vector(1).shape == (4,)
    assert sum(s.stop - s.start for s in m.tensor_slices()) == m.n_params
    X = rng.standard_normal((6, 3))
    G = rng.standard_normal((6, 1))
    out, cache = nn.mlp_forward(m, X)
    np.testing.assert_allclose(out, _reference_forward(m, X), rtol=1e-13)
    grad, _ = nn.mlp_backward(m, cache, G)
    _assert_grad_close(grad, fd_grad(lambda th: float(np.sum(nn.mlp_apply(m.with_theta(th), X) * G)),
                                      m.theta))


def test_weighted_param_grad_is_the_backward_of_per_sample_weights():
    m = _net("tanh", True, "standard", 2, d_out=1, seed=7)
    X = np.random.default_rng(24).standard_normal((6, 3))
    c = np.random.default_rng(25).standard_normal(6)
    out, cache = nn.mlp_forward(m, X)
    want, _ = nn.mlp_backward(m, cache, c[:, None])
    np.testing.assert_allclose(nn.weighted_param_grad(m, nn.critic_pass(m, X), c), want, rtol=1e-12, atol=1e-15)


# --------------------------------------------------------------------------- latents ----
def test_sphere_latents_have_radius_sqrt_dim():
    z = nn.sample_latents(200, 16, "sphere", np.random.default_rng(14))
    assert z.shape == (200, 16)
    np.testing.assert_allclose(np.sum(z * z, axis=1) / 16, 1.0, rtol=1e-12)
    # uniform direction: mean close to 0, second moment isotropic (E z z^T = I)
    assert np.abs(z.mean(axis=0)).max() < 0.3
    assert abs(np.mean(z * z) - 1) < 1e-12


def test_gaussian_latents_moments():
    z = nn.sample_latents(20000, 3, "gaussian", np.random.default_rng(15), dtype=np.float32)
    assert z.dtype == np.float32
    assert np.abs(z.mean(axis=0)).max() < 0.03
    assert np.abs(np.cov(z.T) - np.eye(3)).max() < 0.05


# ------------------------------------------------------------------------------ errors ----
@pytest.mark.parametrize("kwargs,key", [
    (dict(activation="sigmoid"), "activation"),
    (dict(parameterization="mup"), "parameterization"),
    (dict(layer_sizes=[3]), "layer_sizes"),
    (dict(layer_sizes=[3, 0, 1]), "layer_sizes"),
    (dict(sigma_w=0.0), "sigma_w"),
    (dict(sigma_b=-1.0), "sigma_b"),
    (dict(dtype=np.int64), "dtype"),
])
def test_init_errors_name_the_key(kwargs, key):
    args = dict(layer_sizes=[3, 4, 1], activation="relu", bias=True, parameterization="ntk",
                rng=np.random.default_rng(0), config_prefix="critic")
    args.update(kwargs)
    with pytest.raises(ConfigError, match=rf"critic\.{key}"):
        nn.init_mlp(**args)


def test_latent_and_penalty_errors():
    with pytest.raises(ConfigError, match="generator.latent"):
        nn.sample_latents(4, 3, "uniform", np.random.default_rng(0))
    m = _net("relu", False, "ntk", 1, d_out=1)
    with pytest.raises(ConfigError, match="penalty form"):
        nn.penalty_and_param_grad(m, np.zeros((2, 3)), 1.0, "l1")
    with pytest.raises(ValueError):
        nn.critic_input_grad(_net("relu", False, "ntk", 1, d_out=2), np.zeros((2, 3)))
    with pytest.raises(ValueError):
        nn.mlp_forward(m, np.zeros((2, 4)))
