"""Learned-feature critic (particlegan.model.feature_critic): the interaction energy against a direct
double loop and the biased MMD^2 of particlegan.maths.mmd, every gradient against central finite
differences, cpu backend against numpy."""
import numpy as np
import pytest

from particlegan.model import feature_critic as fc
from particlegan.model.from_config import build_learned_critic
from particlegan.maths import nn
from particlegan.backends import get_backend
from particlegan.store.config import resolve_config
from particlegan.maths.kernels import kernel_matrix
from particlegan.maths.mmd import mmd2_biased

KERNELS = ["gaussian", "energy", "riesz"]


def _critic(kind, beta=0.0, stabilizer="real", dim=2, seed=0):
    cfg = resolve_config(overrides=["critic.type=learned_features", "loss.penalty=none",
                                    f"critic.feature_kernel={kind}", f"critic.beta={beta}",
                                    f"critic.stabilizer={stabilizer}", "critic.width=8", "critic.depth=2",
                                    "critic.feature_dim=3", "critic.activation=tanh",
                                    "critic.mmd_sigmas=[0.5, 2.0]", "critic.riesz_eps=0.3"])
    return build_learned_critic(cfg["critic"], dim, np.random.default_rng(seed))


def _data(seed=1, n=7, m=9, d=2):
    rng = np.random.default_rng(seed)
    return rng.normal(size=(n, d)), rng.normal(size=(m, d)) + 0.5


@pytest.mark.parametrize("kind", KERNELS)
def test_interaction_energy_is_half_the_biased_mmd2_and_a_direct_loop(kind):
    critic, theta = _critic(kind)
    x, y = _data()
    net = critic.net.with_theta(theta)
    u, v = nn.mlp_apply(net, x), nn.mlp_apply(net, y)
    k = kernel_matrix  # reference Gram matrices
    e = fc.interaction_energy(u, v, critic.kernel, get_backend("numpy"))
    loop = 0.0
    for a in u:
        for b in u:
            loop += k(a[None], b[None], critic.kernel)[0, 0] / (2 * len(u) ** 2)
        for b in v:
            loop -= k(a[None], b[None], critic.kernel)[0, 0] / (len(u) * len(v))
    for a in v:
        for b in v:
            loop += k(a[None], b[None], critic.kernel)[0, 0] / (2 * len(v) ** 2)
    assert e == pytest.approx(loop, rel=1e-10, abs=1e-13)
    ref = 0.5 * mmd2_biased(k(u, u, critic.kernel), k(v, v, critic.kernel), k(u, v, critic.kernel))
    assert e == pytest.approx(ref, rel=1e-10, abs=1e-13)


@pytest.mark.parametrize("kind", KERNELS)
@pytest.mark.parametrize("beta, stabilizer", [(0.0, "real"), (1.5, "real"), (2.0, "symmetric")])
def test_critic_objective_gradient_matches_finite_differences(kind, beta, stabilizer):
    critic, theta = _critic(kind, beta, stabilizer)
    x, y = _data()
    backend = get_backend("numpy")
    value, grad = fc.learned_critic_objective(critic, theta, x, y, backend, weight_decay=0.01)
    rng = np.random.default_rng(3)
    h = 1e-6
    for idx in rng.choice(len(theta), size=12, replace=False):
        tp, tm = theta.copy(), theta.copy()
        tp[idx] += h
        tm[idx] -= h
        fd = (fc.learned_critic_objective(critic, tp, x, y, backend, 0.01)[0]
              - fc.learned_critic_objective(critic, tm, x, y, backend, 0.01)[0]) / (2 * h)
        assert grad[idx] == pytest.approx(fd, rel=1e-5, abs=1e-8)
    # the value: E - S - wd/2 |theta|^2 written out with Gram matrices
    net = critic.net.with_theta(theta)
    u, v = nn.mlp_apply(net, x), nn.mlp_apply(net, y)
    Kuu, Kvv = kernel_matrix(u, u, critic.kernel), kernel_matrix(v, v, critic.kernel)
    expect = 0.5 * mmd2_biased(Kuu, Kvv, kernel_matrix(u, v, critic.kernel)) - 0.5 * beta * Kvv.mean()
    if stabilizer == "symmetric":
        expect -= 0.5 * beta * Kuu.mean()
    expect -= 0.005 * theta @ theta
    assert value == pytest.approx(expect, rel=1e-10, abs=1e-12)


@pytest.mark.parametrize("kind", KERNELS)
def test_witness_gradient_is_minus_n_times_the_energy_gradient(kind):
    """grad f(x_i) = -N dE/dx_i: the particles descend the feature-space distance."""
    critic, theta = _critic(kind)
    x, y = _data()
    backend = get_backend("numpy")
    values, grad = fc.learned_critic_values_and_grads(critic, theta, x, y, backend)
    net = critic.net.with_theta(theta)

    def energy(xx):
        return fc.interaction_energy(nn.mlp_apply(net, xx), nn.mlp_apply(net, y), critic.kernel, backend)

    h = 1e-6
    for i in range(len(x)):
        for a in range(x.shape[1]):
            xp, xm = x.copy(), x.copy()
            xp[i, a] += h
            xm[i, a] -= h
            fd = (energy(xp) - energy(xm)) / (2 * h)
            assert grad[i, a] == pytest.approx(-len(x) * fd, rel=1e-5, abs=1e-8)
    u, v = nn.mlp_apply(net, x), nn.mlp_apply(net, y)
    f_ref = kernel_matrix(u, v, critic.kernel).mean(axis=1) - kernel_matrix(u, u, critic.kernel).mean(axis=1)
    assert np.allclose(values, f_ref, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("kind", KERNELS)
@pytest.mark.parametrize("dtype, rtol", [(np.float64, 1e-10), (np.float32, 2e-4)])
def test_cpu_backend_matches_numpy(kind, dtype, rtol):
    critic, theta = _critic(kind, beta=1.5)
    x, y = _data(n=40, m=50)
    theta, x, y = theta.astype(dtype), x.astype(dtype), y.astype(dtype)
    critic = fc.LearnedFeatureCritic(net=critic.net.with_theta(theta), kernel=critic.kernel,
                                     beta=critic.beta, stabilizer=critic.stabilizer)
    out = {}
    for name in ("numpy", "cpu"):
        b = get_backend(name)
        out[name] = (fc.learned_critic_objective(critic, theta, x, y, b),
                     fc.learned_critic_values_and_grads(critic, theta, x, y, b))
    (vn, gn), (fn, dn) = out["numpy"]
    (vc, gc), (fcpu, dc) = out["cpu"]
    assert vc == pytest.approx(vn, rel=rtol, abs=rtol)
    for a, b in ((gc, gn), (fcpu, fn), (dc, dn)):
        assert np.allclose(a, b, rtol=rtol, atol=rtol * np.abs(b).max())


def test_config_refuses_penalties_and_non_ipm_losses():
    from particlegan.errors import ConfigError

    with pytest.raises(ConfigError, match="learned_features"):
        resolve_config(overrides=["critic.type=learned_features"])  # default penalty 'fake'
    with pytest.raises(ConfigError, match="learned_features"):
        resolve_config(overrides=["critic.type=learned_features", "loss.penalty=none", "loss.kind=minimax"])
    with pytest.raises(ConfigError, match="critic.beta"):
        resolve_config(overrides=["critic.type=learned_features", "loss.penalty=none", "critic.beta=-1"])


LEARNED_RING = ["critic.type=learned_features", "loss.penalty=none", "critic.width=32", "critic.depth=2",
                "critic.mmd_sigmas=[0.2]", "critic.riesz_eps=0.05", "particles.n=32", "target.n_samples=128",
                "dynamics.eta_d=0.01", "dynamics.eta_g=1", "run.record_every=25"]


def _ring_run(kind, beta, steps=150, seed=0):
    from particlegan.engine.simulate import simulate

    cfg = resolve_config(overrides=LEARNED_RING + [f"critic.feature_kernel={kind}", f"critic.beta={beta}",
                                                   f"run.steps={steps}"], seed=seed)
    res = simulate(cfg)
    assert res.status == "ok"
    return res.series


@pytest.mark.trajectory
def test_stabilized_learned_gaussian_feature_flow_covers_the_ring():
    """With the stabiliser (beta = 2) particles descending the learned feature-space distance
    reach all 8 ring modes and MMD^2 falls from 0.78 to below 0 within 150 steps. Robust, so one
    seed suffices: measured on seeds 0..7 (AVX2) and 0..3 (generic SSE code) every run ends
    with 8 modes and MMD^2 between -0.032 and -0.0095."""
    series = _ring_run("gaussian", 2.0)
    assert series["mmd2"][-1] < series["mmd2"][0] / 10
    assert series["modes_covered"][-1] == 8


@pytest.mark.trajectory
def test_plain_learned_gaussian_feature_flow_descends_over_seeds():
    """Without the stabiliser the learned Gaussian flow is seed- and rounding-sensitive (one of
    8 seeds stalls at MMD^2 0.15 with 3 modes; seed 2 ends with 5 modes), so the claim is a mean
    over seeds 0..3: measured mean final MMD^2 0.012 (start 0.78) and 7.25 modes, the same with
    generic code. Bounds: mean MMD^2 below 1/5 of the start (it would take several stalled
    seeds to break) and at least 5 modes on average (the worst 4 of the 8 measured seeds give 5.0)."""
    runs = [_ring_run("gaussian", 0.0, seed=s) for s in range(4)]
    assert np.mean([r["mmd2"][-1] for r in runs]) < np.mean([r["mmd2"][0] for r in runs]) / 5
    assert np.mean([r["modes_covered"][-1] for r in runs]) >= 5


RIESZ_SEEDS = range(8)


@pytest.mark.trajectory
def test_stabilizer_improves_the_learned_riesz_flow_over_seeds():
    """Riesz feature kernel, 60 steps, seeds 0..7, with and without the stabiliser beta = 2.

    One trajectory of this flow is chaotic (its final MMD^2 moved from 0.09 to 0.025 between two
    CPUs), so the test compares seed means. Measured (mean over the 8 seeds; per-seed std):
    MMD^2 0.068 (0.028) -> 0.025 (0.013) and modes covered 3.5 (1.6) -> 6.4 (0.7) with AVX2
    code; 0.076 -> 0.022 and 3.25 -> 6.6 with generic (SSE) numpy/BLAS/numba code. The bounds
    leave 3 standard errors of the difference below the measured gap (se 0.011 for MMD^2, 0.62
    for modes): gap > 0.01 in MMD^2 and > 1 mode."""
    plain = [_ring_run("riesz", 0.0, steps=60, seed=s) for s in RIESZ_SEEDS]
    stab = [_ring_run("riesz", 2.0, steps=60, seed=s) for s in RIESZ_SEEDS]

    def mean(runs, key):
        return float(np.mean([r[key][-1] for r in runs]))

    assert mean(plain, "mmd2") - mean(stab, "mmd2") > 0.01
    assert mean(stab, "modes_covered") - mean(plain, "modes_covered") > 1.0


@pytest.mark.trajectory
def test_learned_feature_critic_runs_in_the_neural_engine():
    from particlegan.engine.simulate import simulate

    cfg = resolve_config(overrides=LEARNED_RING + ["model.type=neural", "generator.width=64", "run.steps=40",
                                                   "run.record_every=10", "critic.beta=2"])
    res = simulate(cfg)
    assert res.status == "ok" and np.all(np.isfinite(res.series["mmd2"]))
    assert res.series["mmd2"][-1] < res.series["mmd2"][0]
