"""Tests of particlegan.engine.empirical_ntk: exactness against finite-difference Jacobians, and the
wide two-layer ReLU generator against the arc-cosine closed form (effective-gan-spec A2.3, A6.9;
ecosystem-anchors section 3)."""
import itertools
import math

import numpy as np
import pytest

from particlegan.engine import empirical_ntk as en
from particlegan.maths import nn

SMALL_GRID = list(itertools.product(("relu", "leaky_relu", "tanh"), (False, True),
                                    ("standard", "ntk"), (1, 2)))


def _fd_jacobian(m, Z, eps=1e-6):
    """J[i, mu, p] by central differences of the forward pass over theta (float64)."""
    J = np.zeros((Z.shape[0], m.d_out, m.n_params))
    theta = m.theta.copy()
    for p in range(m.n_params):
        tp, tm = theta.copy(), theta.copy()
        tp[p] += eps
        tm[p] -= eps
        diff = nn.mlp_apply(m.with_theta(tp), Z) - nn.mlp_apply(m.with_theta(tm), Z)
        J[:, :, p] = diff / (2 * eps)
    return J


@pytest.mark.parametrize("act,bias,par,depth", SMALL_GRID,
                         ids=[f"{a}-{b}-{p}-{d}" for a, b, p, d in SMALL_GRID])
def test_empirical_ntk_equals_fd_jacobian_gram(act, bias, par, depth):
    rng = np.random.default_rng(0)
    m = nn.init_mlp([3] + [6] * depth + [2], act, bias, par, rng, sigma_w=1.2, sigma_b=0.5)
    Z = rng.standard_normal((4, 3))
    J = _fd_jacobian(m, Z)
    expected = np.einsum("imp,jnp->ijmn", J, J)
    scale = np.abs(expected).max()
    for method in en.NTK_METHODS:
        full = en.empirical_ntk(m, Z, method=method)
        assert full.shape == (4, 4, 2, 2)
        np.testing.assert_allclose(full, expected, rtol=1e-6, atol=1e-7 * scale)
        scalar = en.empirical_ntk_scalar(m, Z, method=method)
        np.testing.assert_allclose(scalar, np.einsum("ijmm->ij", expected) / 2, rtol=1e-6,
                                   atol=1e-7 * scale)


def test_float32_generator_gives_float64_kernel():
    rng = np.random.default_rng(1)
    m32 = nn.init_mlp([5, 8, 3], "tanh", True, "ntk", rng, dtype=np.float32)
    m64 = m32.with_theta(m32.theta.astype(np.float64))
    Z = rng.standard_normal((6, 5))
    T32 = en.empirical_ntk_scalar(m32, Z)
    assert T32.dtype == np.float64
    np.testing.assert_array_equal(T32, en.empirical_ntk_scalar(m64, Z))


# ------------------------------------------------------------------- closed form ----
def test_kappa_values_and_derivative():
    assert en.relu_ntk_kappa(1.0) == pytest.approx(2.0, rel=1e-15)
    assert en.relu_ntk_kappa(0.0) == pytest.approx(1 / math.pi, rel=1e-15)
    h = 1e-6
    slope = (en.relu_ntk_kappa(h) - en.relu_ntk_kappa(-h)) / (2 * h)
    assert slope == pytest.approx(1.0, rel=1e-8)
    consts = en.two_layer_relu_constants(sigma_w=1.0)
    assert consts["g1"] == pytest.approx(1.0) and consts["g2"] == pytest.approx(1 / (2 * math.pi))
    assert consts["phi"] == pytest.approx(1 / (2 * math.pi))


@pytest.mark.parametrize("sigma_w", [1.0, 1.5])
def test_closed_form_on_sphere_is_c_kappa(sigma_w):
    rng = np.random.default_rng(2)
    Z = nn.sample_latents(20, 7, "sphere", rng)
    U = Z @ Z.T / 7
    c = sigma_w ** 4 / 2
    np.testing.assert_allclose(en.two_layer_relu_ntk(Z, sigma_w=sigma_w),
                               c * en.relu_ntk_kappa(U), rtol=1e-7, atol=1e-7)
    # cross-check with the particle model's closed-form ntk_relu coupling kernel (arccos near
    # u = 1 turns rounding into ~1e-9 relative differences, hence rtol 1e-8)
    from particlegan.maths.kernels import ntk_matrix
    np.testing.assert_allclose(en.two_layer_relu_ntk(Z, sigma_w=sigma_w, sigma_b=0.3),
                               ntk_matrix(Z, Z, "relu", sigma_w, 0.3), rtol=1e-8)
    np.testing.assert_allclose(np.diag(en.two_layer_relu_ntk(Z, sigma_w=sigma_w)), 2 * c,
                               rtol=1e-14)


def _per_neuron_contributions(m, Z):
    """t_k(i, j) with Theta_ij = mean_k t_k(i, j) + sigma_b^2 [bias] for the two-layer ReLU net.

    Written directly from the network: G^mu(z) = s_w/sqrt(m) sum_k V_mu,k relu(a_k(z)),
    a_k(z) = s_w w_k.z/sqrt(d_z) + s_b b_k; the hidden neurons are i.i.d., so the spread of t_k
    over k gives the Monte-Carlo standard error of each entry.
    """
    sw, sb = m.sigma_w, (m.sigma_b if m.bias else 0.0)
    dz = Z.shape[1]
    W, V = m.weight(0), m.weight(1)
    a = sw * Z @ W.T / math.sqrt(dz)
    if m.bias:
        a = a + sb * m.bias_vector(0)
    act = np.maximum(a, 0.0)                                     # (n, m)
    on = (a > 0).astype(float)
    s1 = sw ** 2 * (Z @ Z.T) / dz + sb ** 2                       # (n, n)
    v2 = np.mean(V ** 2, axis=0)                                  # (m,) averaged over outputs
    t = sw ** 2 * act.T[:, :, None] * act.T[:, None, :]
    t += sw ** 2 * v2[:, None, None] * on.T[:, :, None] * on.T[:, None, :] * s1[None]
    return t, sb ** 2                                            # (m, n, n), constant


@pytest.mark.parametrize("bias", [False, True])
def test_wide_two_layer_relu_matches_closed_form(bias):
    width, dz, n = 4096, 256, 32
    rng = np.random.default_rng(3)
    m = nn.init_mlp([dz, width, 2], "relu", bias, "ntk", rng, sigma_w=1.0, sigma_b=0.5)
    Z = nn.sample_latents(n, dz, "sphere", rng)
    T = en.empirical_ntk_scalar(m, Z)
    t, const = _per_neuron_contributions(m, Z)
    np.testing.assert_allclose(T, t.mean(axis=0) + const, rtol=1e-10, atol=1e-12)
    closed = en.two_layer_relu_ntk(Z, sigma_w=1.0, sigma_b=0.5 if bias else 0.0)
    se = t.std(axis=0) / math.sqrt(width)
    assert np.all(np.abs(T - closed) <= 5 * se + 1e-9)          # entry-wise, within MC error
    if not bias:
        s = en.ntk_summary(T)
        ref = en.two_layer_relu_constants(1.0)
        assert abs(s["g1"] / ref["g1"] - 1) < 0.10
        assert abs(s["g2"] / ref["g2"] - 1) < 0.10
        assert abs(s["phi"] / ref["phi"] - 1) < 0.10
        # off-diagonal spread ~ c kappa'(0) std(u) = c/sqrt(d_z) (plus MC noise)
        predicted = ref["slope_at_0"] / math.sqrt(dz) / ref["g2"]
        assert abs(s["offdiag_rel_spread"] / predicted - 1) < 0.25


def test_wide_net_output_coordinates_decouple():
    """Theta^{mu nu} -> delta^{mu nu}: cross-output blocks are Monte-Carlo small."""
    rng = np.random.default_rng(4)
    m = nn.init_mlp([64, 4096, 3], "relu", False, "ntk", rng)
    Z = nn.sample_latents(8, 64, "sphere", rng)
    full = en.empirical_ntk(m, Z)
    diag_blocks = np.stack([full[:, :, k, k] for k in range(3)])
    cross = full[:, :, 0, 1]
    assert np.abs(cross).max() < 0.1 * np.abs(diag_blocks).mean()
    np.testing.assert_allclose(en.empirical_ntk_scalar(m, Z), diag_blocks.mean(axis=0), rtol=1e-12)


# ----------------------------------------------------------------------- summary ----
def test_ntk_summary_on_universal_kernel():
    n, g1, phi = 6, 2.0, 0.3
    K = g1 * ((1 - phi) * np.eye(n) + phi * np.ones((n, n)))
    s = en.ntk_summary(K)
    assert s["g1"] == pytest.approx(g1) and s["g2"] == pytest.approx(g1 * phi)
    assert s["phi"] == pytest.approx(phi)
    assert s["offdiag_std"] == pytest.approx(0.0, abs=1e-15)
    K[0, 1] = K[1, 0] = g1 * phi + 0.6          # two off-diagonal entries raised by 0.6
    s = en.ntk_summary(K)
    off = np.full(n * (n - 1), g1 * phi)
    off[:2] += 0.6
    assert s["g2"] == pytest.approx(off.mean())
    assert s["offdiag_std"] == pytest.approx(off.std())
    assert s["offdiag_rel_spread"] == pytest.approx(off.std() / off.mean())
    with pytest.raises(ValueError):
        en.ntk_summary(np.ones((1, 1)))
