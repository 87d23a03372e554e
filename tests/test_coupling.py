import numpy as np
import pytest

from particlegan.store.config import resolve_config
from particlegan.model.from_config import make_coupling
from particlegan.model.coupling import (apply_coupling, apply_coupling_members, coupling_matrix, sample_sphere,
                                        universal_mode_rates)
from particlegan.errors import DataError


def _gen(*overrides):
    return resolve_config(overrides=list(overrides))["generator"]


@pytest.mark.parametrize("phi", [0.0, 0.3, 0.99, -0.002])
@pytest.mark.parametrize("norm", ["ntk", "none"])
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_universal_rank_one_apply_equals_dense_product(phi, norm, dtype):
    n = 37
    c = make_coupling(_gen(f"generator.phi={phi}", "generator.g1=1.7", f"generator.normalization={norm}"),
                      n, np.random.default_rng(0))
    F = np.random.default_rng(1).normal(size=(n, 3)).astype(dtype)
    # independent dense kernel of: K_ij = g1 delta_ij + g2 (1 - delta_ij)
    g1, g2 = 1.7, 1.7 * phi
    K = np.where(np.eye(n, dtype=bool), g1, g2) * (1.0 / n if norm == "ntk" else 1.0)
    tol = 1e-12 if dtype == np.float64 else 1e-5
    out = apply_coupling(c, F)
    assert out.dtype == dtype
    np.testing.assert_allclose(out, K @ F.astype(np.float64), rtol=tol, atol=tol)
    np.testing.assert_allclose(coupling_matrix(c), K, rtol=1e-12)


@pytest.mark.parametrize("kernel,norm", [(k, nm) for k in ("universal", "identity", "ntk_relu")
                                         for nm in ("ntk", "none", "mean", "spectral", "interpolated")
                                         if nm not in ("mean", "interpolated") or k == "universal"])
@pytest.mark.parametrize("d", [1, 2, 5])
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_members_apply_is_bitwise_each_members_own(kernel, norm, d, dtype):
    """The ensemble form (all members at once for universal / identity) against the loop."""
    n = 23
    phis, g1s = [0.0, 0.3, 0.99, -0.002], [1.0, 1.7, 0.4, 2.5]
    cs = [make_coupling(_gen(f"generator.kernel={kernel}", f"generator.phi={p}", f"generator.g1={g}",
                             f"generator.normalization={norm}"), n, np.random.default_rng(m))
          for m, (p, g) in enumerate(zip(phis, g1s))]
    F = np.random.default_rng(1).normal(size=(len(cs), n, d)).astype(dtype)
    out = apply_coupling_members(cs, F)
    assert out.dtype == dtype and out.shape == F.shape
    for m, c in enumerate(cs):
        np.testing.assert_array_equal(out[m], apply_coupling(c, F[m]))


def test_universal_eigenmodes():
    n, phi = 12, 0.4
    C = coupling_matrix(make_coupling(_gen(f"generator.phi={phi}"), n, np.random.default_rng(0)))
    ev = np.sort(np.linalg.eigvalsh(C * n))
    np.testing.assert_allclose(ev[-1], 1 + (n - 1) * phi, rtol=1e-12)   # centre of mass
    np.testing.assert_allclose(ev[:-1], 1 - phi, rtol=1e-12)             # N - 1 relative modes


def test_identity_is_uncoupled():
    c = make_coupling(_gen("generator.kernel=identity", "generator.normalization=none"), 5,
                      np.random.default_rng(0))
    F = np.arange(10.0).reshape(5, 2)
    np.testing.assert_array_equal(apply_coupling(c, F), F)


@pytest.mark.parametrize("kind", ["ntk_relu", "ntk_erf"])
def test_ntk_dense_and_matrix_free_apply_agree(kind):
    n = 30
    dense = make_coupling(_gen(f"generator.kernel={kind}", "generator.latent_dim=8"), n, np.random.default_rng(4))
    free = make_coupling(_gen(f"generator.kernel={kind}", "generator.latent_dim=8", "generator.dense_max=1"),
                         n, np.random.default_rng(4))
    assert dense.dense is not None and free.dense is None
    F = np.random.default_rng(2).normal(size=(n, 2))
    np.testing.assert_allclose(apply_coupling(free, F), apply_coupling(dense, F), rtol=1e-10, atol=1e-12)
    C = coupling_matrix(dense)
    np.testing.assert_allclose(C, C.T, atol=1e-14)
    assert np.linalg.eigvalsh(C).min() > -1e-10


def test_relu_ntk_on_sphere_has_the_universal_constants():
    # bias-free one-hidden-layer ReLU NTK on latents of radius sqrt(d_z): Theta(z, z) = 1 and
    # Theta(z, z') -> kappa(0)/kappa(1) = 1/(2 pi) for nearly orthogonal latents (A2.3)
    c = make_coupling(_gen("generator.kernel=ntk_relu", "generator.latent_dim=4096"), 40, np.random.default_rng(0))
    K = c.dense
    np.testing.assert_allclose(np.diag(K), 1.0, rtol=1e-12)
    off = K[~np.eye(40, dtype=bool)]
    np.testing.assert_allclose(off.mean(), 1 / (2 * np.pi), rtol=0.02)


def test_sphere_latents_radius():
    z = sample_sphere(10, 7, np.random.default_rng(0))
    np.testing.assert_allclose(np.sum(z * z, axis=1), 7.0)


def test_user_matrix(tmp_path):
    rng = np.random.default_rng(0)
    B = rng.normal(size=(6, 6))
    K = B @ B.T
    np.save(tmp_path / "k.npy", K)
    c = make_coupling(_gen("generator.kernel=matrix", f"generator.matrix_path={tmp_path / 'k.npy'}"), 6, rng)
    F = rng.normal(size=(6, 2))
    np.testing.assert_allclose(apply_coupling(c, F), K @ F / 6, rtol=1e-12)
    np.save(tmp_path / "asym.npy", B)
    with pytest.raises(DataError, match="not symmetric"):
        make_coupling(_gen("generator.kernel=matrix", f"generator.matrix_path={tmp_path / 'asym.npy'}"), 6, rng)
    np.save(tmp_path / "neg.npy", -K)
    with pytest.raises(DataError, match="positive semi-definite"):
        make_coupling(_gen("generator.kernel=matrix", f"generator.matrix_path={tmp_path / 'neg.npy'}"), 6, rng)
    with pytest.raises(DataError, match="shape"):
        make_coupling(_gen("generator.kernel=matrix", f"generator.matrix_path={tmp_path / 'k.npy'}"), 5, rng)


def test_mean_normalisation_averages_the_collective_term():
    """normalization 'mean': C = (g1 - g2) I + (g2/N) 1 1^T; eigenvalues g1 (centre of mass) and
    g1 - g2 (relative modes), independent of N; apply_coupling = C F."""
    n = 7
    cfg = resolve_config(overrides=[f"particles.n={n}", "generator.g1=1.5", "generator.phi=0.4",
                                    "generator.normalization=mean"])
    c = make_coupling(cfg["generator"], n, np.random.default_rng(0))
    C = coupling_matrix(c)
    want = (1.5 - 0.6) * np.eye(n) + (0.6 / n) * np.ones((n, n))
    np.testing.assert_allclose(C, want, rtol=1e-15)
    ev = np.linalg.eigvalsh(C)
    np.testing.assert_allclose(ev[-1], 1.5, rtol=1e-12)
    np.testing.assert_allclose(ev[:-1], 0.9, rtol=1e-12)
    F = np.random.default_rng(1).standard_normal((n, 3))
    np.testing.assert_allclose(apply_coupling(c, F), C @ F, rtol=1e-12, atol=1e-15)


def test_mean_normalisation_is_for_the_universal_kernel_only():
    from particlegan.errors import ConfigError

    with pytest.raises(ConfigError, match="generator.normalization = 'mean'"):
        resolve_config(overrides=["generator.kernel=identity", "generator.normalization=mean"])


@pytest.mark.parametrize("phi", [0.0, 0.3, 0.99, -0.1])
def test_spectral_normalisation_divides_by_the_largest_eigenvalue_universal(phi):
    """'spectral': C = K / lambda_max(K); lambda_max from numpy's eigvalsh of the dense (A-2)
    kernel (independent of the closed form g1 + (N - 1) g2)."""
    n = 9
    cfg = resolve_config(overrides=[f"particles.n={n}", "generator.g1=1.5", f"generator.phi={phi}",
                                    "generator.normalization=spectral"])
    c = make_coupling(cfg["generator"], n, np.random.default_rng(0))
    K = np.where(np.eye(n, dtype=bool), 1.5, 1.5 * phi)
    want = K / np.linalg.eigvalsh(K)[-1]
    np.testing.assert_allclose(coupling_matrix(c), want, rtol=1e-12, atol=1e-15)
    assert np.linalg.eigvalsh(coupling_matrix(c))[-1] == pytest.approx(1.0, rel=1e-12)
    F = np.random.default_rng(1).standard_normal((n, 2))
    np.testing.assert_allclose(apply_coupling(c, F), want @ F, rtol=1e-12, atol=1e-14)
    cm, rel = universal_mode_rates(c)
    ev = np.linalg.eigvalsh(want)
    assert sorted([cm, rel]) == pytest.approx([ev[0], ev[-1]], rel=1e-12)


def test_spectral_normalisation_dense_ntk_and_matrix(tmp_path):
    n = 12
    cfg = resolve_config(overrides=[f"particles.n={n}", "generator.kernel=ntk_relu", "generator.latent_dim=5",
                                    "generator.normalization=spectral"])
    c = make_coupling(cfg["generator"], n, np.random.default_rng(3))
    assert np.linalg.eigvalsh(coupling_matrix(c))[-1] == pytest.approx(1.0, rel=1e-12)
    A = np.random.default_rng(4).standard_normal((n, n))
    np.save(tmp_path / "k.npy", A @ A.T)
    c = make_coupling(_gen("generator.kernel=matrix", f"generator.matrix_path={tmp_path / 'k.npy'}",
                           "generator.normalization=spectral"), n, np.random.default_rng(0))
    np.testing.assert_allclose(coupling_matrix(c), A @ A.T / np.linalg.eigvalsh(A @ A.T)[-1], rtol=1e-12)


def test_spectral_normalisation_refuses_matrix_free_kernels():
    from particlegan.errors import ConfigError

    with pytest.raises(ConfigError, match="generator.normalization = 'spectral' needs the kernel held densely"):
        resolve_config(overrides=["particles.n=20", "generator.kernel=ntk_relu", "generator.dense_max=10",
                                  "generator.normalization=spectral"])


@pytest.mark.parametrize("phi,c", [(p, c) for p in (0.0, 0.3, 0.977, -0.1) for c in (0.0, 2.5, 8.0, 20.0)
                                   if 1 + c * p > 0])  # (-0.1, 20): refused, test below
def test_interpolated_normalisation_sets_the_relative_rate_and_keeps_the_centre_of_mass(phi, c):
    """'interpolated': C = g1 [a I + ((1 - a)/N) 1 1^T], a = (g1 - g2)/(g1 + c g2), built here
    from the projectors on the centre of mass and the relative modes (not from scale/collective);
    its spectrum is g1 once and g1 a N - 1 times (numpy's eigvalsh)."""
    n, g1 = 9, 1.5
    cfg = resolve_config(overrides=[f"particles.n={n}", f"generator.g1={g1}", f"generator.phi={phi}",
                                    "generator.normalization=interpolated", f"generator.interp_c={c}"])
    cpl = make_coupling(cfg["generator"], n, np.random.default_rng(0))
    g2 = g1 * phi
    a = (g1 - g2) / (g1 + c * g2)
    P = np.ones((n, n)) / n                       # projector on the centre of mass
    want = g1 * (P + a * (np.eye(n) - P))
    np.testing.assert_allclose(coupling_matrix(cpl), want, rtol=1e-12, atol=1e-15)
    ev = np.linalg.eigvalsh(want)
    np.testing.assert_allclose(sorted([g1, g1 * a]), [ev[0], ev[-1]], rtol=1e-12)
    assert universal_mode_rates(cpl) == pytest.approx((g1, g1 * a), rel=1e-12)
    F = np.random.default_rng(1).standard_normal((n, 3))
    np.testing.assert_allclose(apply_coupling(cpl, F), want @ F, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("phi", [0.0, 0.4, 0.977])
def test_interpolated_normalisation_ends_at_mean_and_spectral(phi):
    """c = 0 is 'mean', c = N - 1 is g1 x 'spectral' (the two readings it interpolates)."""
    n, g1 = 11, 1.5

    def matrix(norm, *extra):
        cfg = resolve_config(overrides=[f"particles.n={n}", f"generator.g1={g1}", f"generator.phi={phi}",
                                        f"generator.normalization={norm}", *extra])
        return coupling_matrix(make_coupling(cfg["generator"], n, np.random.default_rng(0)))

    np.testing.assert_allclose(matrix("interpolated", "generator.interp_c=0"), matrix("mean"), rtol=1e-12)
    np.testing.assert_allclose(matrix("interpolated", f"generator.interp_c={n - 1}"), g1 * matrix("spectral"),
                               rtol=1e-12)


def test_interpolated_normalisation_refuses_other_kernels_and_a_vanishing_denominator():
    from particlegan.errors import ConfigError

    with pytest.raises(ConfigError, match="generator.normalization = 'interpolated' is defined"):
        resolve_config(overrides=["generator.kernel=identity", "generator.normalization=interpolated"])
    with pytest.raises(ConfigError, match="generator.interp_c"):
        resolve_config(overrides=["particles.n=100", "generator.phi=-0.01", "generator.normalization=interpolated",
                                  "generator.interp_c=150"])
    with pytest.raises(ConfigError, match="generator.interp_c"):
        resolve_config(overrides=["generator.normalization=interpolated", "generator.interp_c=-1"])


def test_mode_rates_of_every_normalisation_match_the_dense_spectrum():
    n = 6
    for norm in ("ntk", "none", "mean", "spectral", "interpolated"):
        cfg = resolve_config(overrides=[f"particles.n={n}", "generator.phi=0.25", f"generator.normalization={norm}",
                                        "generator.interp_c=3"])
        c = make_coupling(cfg["generator"], n, np.random.default_rng(0))
        ev = np.linalg.eigvalsh(coupling_matrix(c))
        cm, rel = universal_mode_rates(c)
        assert cm == pytest.approx(ev[-1], rel=1e-12) and rel == pytest.approx(ev[0], rel=1e-12)
        np.testing.assert_allclose(ev[:-1], rel, rtol=1e-12)
