"""Batched ensembles (particlegan.engine.ensemble): every member bitwise its own run."""
import json

import numpy as np
import pytest

from particlegan.engine.ensemble import ENSEMBLE_VARYING, ensemble_key, ensemble_refusal, simulate_ensemble
from particlegan.engine.simulate import result_arrays, simulate
from particlegan.store.config import resolve_config

TINY = ["particles.n=24", "run.steps=30", "run.record_every=5", "target.n_samples=150",
        "critic.features=48", "dynamics.critic_steps_startup=10", "observables.mmd_samples=100"]

# mixed phi, eta_D, penalty weight (0 included), critic weight decay and width, seeds
GRID = [dict(phi=0.0, eta_d=0.01, lam=1.0, wd=0.0, sigma=0.2, seed=0),
        dict(phi=0.1, eta_d=0.003, lam=0.5, wd=0.01, sigma=0.3, seed=1),
        dict(phi=0.3, eta_d=0.02, lam=0.0, wd=0.0, sigma=0.2, seed=2),
        dict(phi=0.98, eta_d=0.001, lam=2.0, wd=0.001, sigma=0.25, seed=3)]


def member_cfgs(*extra, grid=GRID):
    return [resolve_config(overrides=TINY + list(extra) + [
        f"generator.phi={p['phi']}", f"dynamics.eta_d={p['eta_d']}", f"loss.penalty_weight={p['lam']}",
        f"critic.weight_decay={p['wd']}", f"critic.sigma={p['sigma']}", f"run.seed={p['seed']}"]) for p in grid]


def assert_same_as_alone(results, cfgs):
    for res, cfg in zip(results, cfgs):
        alone = simulate(cfg)
        assert (res.status, res.steps, res.diverged_step, res.diverged_reason) == \
            (alone.status, alone.steps, alone.diverged_step, alone.diverged_reason)
        a, b = result_arrays(res), result_arrays(alone)
        assert a.keys() == b.keys()
        for key in b:
            assert a[key].dtype == b[key].dtype
            np.testing.assert_array_equal(a[key], b[key], err_msg=key)  # bitwise (NaN-equal)
        assert res.summary() == alone.summary()


@pytest.mark.parametrize("backend", ["numpy", "cpu"])
@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("extra", [[], ["critic.optimizer=adam", "critic.amsgrad=true", "critic.adam_reset=true"],
                                   ["critic.optimizer=momentum", "dynamics.update=simultaneous",
                                    "critic.type=relu_features"],
                                   ["loss.penalty=real", "generator.normalization=mean", "target.kind=grid"],
                                   ["loss.penalty=none", "generator.kernel=ntk_relu"]])
def test_members_equal_their_own_runs(backend, dtype, extra):
    cfgs = member_cfgs(f"run.backend={backend}", f"run.dtype={dtype}", *extra)
    results = simulate_ensemble(cfgs)
    assert [r.extra["ensemble_size"] for r in results] == [4] * 4
    assert_same_as_alone(results, cfgs)


@pytest.mark.parametrize("backend", ["numpy", "cpu"])
def test_a_diverging_member_is_frozen_and_the_others_go_on(backend):
    grid = [dict(GRID[0]), dict(GRID[1], phi=0.0), dict(GRID[2])]
    cfgs = member_cfgs(f"run.backend={backend}", grid=grid)
    # member 1 runs away (huge particle step); member 2's critic blows up (huge eta_D)
    cfgs[1] = resolve_config(cfgs[1], ["dynamics.eta_g=1e9"])
    cfgs[2] = resolve_config(cfgs[2], ["dynamics.eta_d=1e300"])
    results = simulate_ensemble(cfgs)
    assert [r.status for r in results] == ["ok", "diverged", "diverged"]
    assert results[0].steps == 30 and results[1].diverged_reason == "runaway"
    assert results[2].diverged_step < 30
    assert_same_as_alone(results, cfgs)


def test_ensemble_key_groups_runs_that_differ_only_in_varying_keys():
    cfgs = member_cfgs()
    assert len({ensemble_key(c) for c in cfgs}) == 1
    assert ensemble_key(resolve_config(cfgs[0], ["critic.features=64"])) != ensemble_key(cfgs[0])
    other = "cpu" if cfgs[0]["run"]["backend"] == "numpy" else "numpy"
    assert ensemble_key(resolve_config(cfgs[0], [f"run.backend={other}"])) != ensemble_key(cfgs[0])
    for sec, key in ENSEMBLE_VARYING:
        assert key in cfgs[0][sec]  # every varying key is a real config key
    with pytest.raises(ValueError, match="cannot share an ensemble"):
        simulate_ensemble([cfgs[0], resolve_config(cfgs[1], ["particles.n=20"])])


@pytest.mark.parametrize("extra, why", [
    (["critic.optimizer=cg"], "cg"), (["loss.penalty=interpolates"], "interpolates"),
    (["critic.type=mlp"], "critic.type"), (["critic.type=kernel", "loss.penalty=none"], "critic.type"),
    (["loss.kind=nonsaturating"], "IPM"), (["schedule.kind=kid"], "schedule"),
    (["model.type=neural", "critic.type=mlp"], "model.type")])
def test_runs_that_cannot_be_members_say_why(extra, why):
    cfg = resolve_config(overrides=TINY + extra)
    assert why in ensemble_refusal(cfg)
    assert ensemble_key(cfg) is None
    with pytest.raises(ValueError, match=why):
        simulate_ensemble([cfg, cfg])


def test_ensemble_runs_store_like_single_runs(tmp_path):
    from particlegan.engine.simulate import run_ensemble_to_dirs, run_to_dir

    cfgs = member_cfgs()[:2]
    run_ensemble_to_dirs(cfgs, [tmp_path / "e0", tmp_path / "e1"])
    for i, cfg in enumerate(cfgs):
        run_to_dir(cfg, tmp_path / f"s{i}")
        for name in ("config.json", "result.npz", "summary.json"):
            assert (tmp_path / f"e{i}" / name).read_bytes() == (tmp_path / f"s{i}" / name).read_bytes(), name
        meta = json.loads((tmp_path / f"e{i}" / "meta.json").read_text())
        assert meta["ensemble_size"] == 2 and meta["status"] == "ok"


def test_a_failing_ensemble_leaves_no_partial_run(tmp_path, monkeypatch):
    from particlegan.engine import ensemble
    from particlegan.engine.simulate import run_ensemble_to_dirs

    def boom(*a, **k):
        raise RuntimeError("boom")

    monkeypatch.setattr(ensemble, "simulate_ensemble", boom)
    with pytest.raises(RuntimeError):
        run_ensemble_to_dirs(member_cfgs()[:2], [tmp_path / "a" / "e0", tmp_path / "a" / "e1"])
    assert not (tmp_path / "a").exists()
