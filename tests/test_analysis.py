"""Analysis helpers: results tables, seed averages, convergence times, oscillation fits."""
import math

import numpy as np
import pytest

from particlegan.sweeps.analysis import (add_convergence_times, convergence_time, critical_penalties, load_results,
                                  load_run, oscillation_fit, seed_average)
from particlegan.store.config import resolve_config
from particlegan.errors import DataError

CSV = """run_id,generator.phi,target.kind,seed,collapse,mmd2,steps,status,wall_time_s,error
000000000001,0.0,ring,0,0.5,1e-3,20,ok,0.1,
000000000002,0.0,ring,1,0.7,,20,ok,0.1,
000000000003,0.5,ring,0,1.5,2e-3,20,diverged,0.1,
000000000004,0.5,ring,1,,,,failed,,DataError: no file 'x.npy'
000000000005,0.5,ring,2,2.5,inf,20,ok,0.2,
"""


@pytest.fixture
def results_dir(tmp_path):
    (tmp_path / "results.csv").write_text(CSV)
    return tmp_path


def test_load_results_types(results_dir):
    rows = load_results(results_dir)
    assert len(rows) == 5
    assert rows[0]["run_id"] == "000000000001"  # digits, but an id: kept as text
    assert rows[0]["generator.phi"] == 0.0 and isinstance(rows[0]["seed"], float)
    assert rows[0]["target.kind"] == "ring" and rows[0]["status"] == "ok"
    assert math.isnan(rows[1]["mmd2"]) and rows[4]["mmd2"] == math.inf
    assert rows[3]["error"] == "DataError: no file 'x.npy'" and math.isnan(rows[3]["collapse"])
    assert load_results(results_dir / "results.csv") == rows


def test_load_results_errors(tmp_path):
    with pytest.raises(DataError, match="no results table"):
        load_results(tmp_path)
    (tmp_path / "results.csv").write_text("a,b\n1,2\n")
    with pytest.raises(DataError, match="not a sweep results table"):
        load_results(tmp_path)


def test_seed_average_groups_and_skips_failed_and_nan(results_dir):
    rows = load_results(results_dir)
    avg = seed_average(rows, ["generator.phi"], "collapse")
    assert [a["generator.phi"] for a in avg] == [0.0, 0.5]
    assert avg[0]["n"] == 2 and avg[0]["mean"] == pytest.approx(0.6)
    assert avg[0]["std"] == pytest.approx(np.std([0.5, 0.7], ddof=1))
    assert avg[0]["sem"] == pytest.approx(avg[0]["std"] / math.sqrt(2))
    assert avg[1]["n"] == 2 and avg[1]["values"] == [1.5, 2.5]  # the failed run is left out
    mmd = seed_average(rows, ["generator.phi"], "mmd2")
    assert mmd[0]["n"] == 1 and math.isnan(mmd[0]["sem"])      # the nan is left out
    assert mmd[1]["mean"] == math.inf                            # inf is kept
    overall = seed_average(rows, [], "collapse")
    assert len(overall) == 1 and overall[0]["n"] == 4
    with pytest.raises(DataError, match="no column 'nope'"):
        seed_average(rows, ["nope"], "collapse")


@pytest.mark.parametrize("values, expected", [
    ([5.0, 3.0, 0.5, 0.2, 0.1], 20.0),        # drops below once and stays
    ([0.5, 0.5, 2.0, 0.5, 0.1], 30.0),        # dips, comes back up, then stays below
    ([0.1, 0.2, 0.3, 0.4, 0.5], 0.0),         # below from the start
    ([5.0, 4.0, 3.0, 2.0, 1.0], math.inf),    # ends at the threshold: not below
    ([0.5, 0.5, 0.5, 0.5, 2.0], math.inf),    # leaves at the end
    ([0.5, np.nan, 0.5, 0.5, 0.5], 20.0),     # nan counts as not converged
])
def test_convergence_time_on_hand_made_series(values, expected):
    assert convergence_time([0, 10, 20, 30, 40], values, threshold=1.0) == expected


def test_convergence_time_edge_cases():
    assert convergence_time([], [], 1.0) == math.inf
    with pytest.raises(ValueError):
        convergence_time([0, 1], [0.5], 1.0)


@pytest.mark.parametrize("gamma, omega, noise", [(0.05, 0.7, 0.02), (0.01, 0.2, 0.05), (0.2, 1.5, 0.02),
                                                 (0.003, 0.05, 0.05), (-0.005, 0.3, 0.02)])
def test_oscillation_fit_recovers_damping_and_frequency(gamma, omega, noise):
    rng = np.random.default_rng(7)
    t = np.arange(0.0, 200.0, 0.5)
    e = 2.0 * np.exp(-gamma * t) * np.cos(omega * t + 0.8) + 0.3 + noise * rng.standard_normal(t.size)
    fit = oscillation_fit(t, e)
    # tolerance: 2% of omega, and gamma to 5% of the larger of gamma and 0.01 omega
    assert fit.omega == pytest.approx(omega, rel=0.02)
    assert fit.gamma == pytest.approx(gamma, abs=0.05 * max(abs(gamma), 0.01 * omega))
    assert fit.amplitude == pytest.approx(2.0, rel=0.05) and fit.offset == pytest.approx(0.3, abs=0.02)
    assert fit.phase == pytest.approx(0.8, abs=0.05)
    assert fit.rmse == pytest.approx(noise, rel=0.2)
    np.testing.assert_allclose(fit(t), e, atol=6 * noise)


def test_oscillation_fit_skips_the_transient():
    rng = np.random.default_rng(3)
    t = np.arange(0.0, 300.0, 1.0)  # integer steps, like recorded observables
    e = 0.8 * np.exp(-0.02 * t) * np.cos(0.25 * t - 1.0) + 3.0 * np.exp(-t / 4.0) \
        + 0.01 * rng.standard_normal(t.size)
    fit = oscillation_fit(t, e, transient=30.0)
    assert fit.t0 == 30.0 and fit.n == 270
    assert fit.omega == pytest.approx(0.25, rel=0.02) and fit.gamma == pytest.approx(0.02, rel=0.05)
    assert fit.amplitude == pytest.approx(0.8 * math.exp(-0.02 * 30), rel=0.05)
    assert fit.damping_ratio == pytest.approx(0.02 / math.hypot(0.02, 0.25), rel=0.05)
    assert fit.period == pytest.approx(2 * math.pi / 0.25, rel=0.02)


def test_oscillation_fit_needs_data():
    with pytest.raises(DataError, match="at least 8"):
        oscillation_fit(np.arange(20.0), np.cos(np.arange(20.0)), transient=15)


def test_critical_penalties_follow_the_a29_formula():
    cfg = resolve_config(overrides=["dynamics.eta_g=0.01", "dynamics.eta_d=0.1", "particles.n=100",
                                    "generator.phi=0.5", "critic.sigma=0.2"])
    lam = critical_penalties(cfg)
    kappa_cm, kappa_rel = (1 + 99 * 0.5) / 100, 0.5 / 100
    n_c = cfg["dynamics"]["critic_steps"]  # the critic learns n_c * eta_D per particle step
    assert lam["cm"] == pytest.approx(0.2 * math.sqrt(0.01 * kappa_cm / (n_c * 0.1)))
    assert lam["rel"] == pytest.approx(0.2 * math.sqrt(0.01 * kappa_rel / (n_c * 0.1)))
    one_step = critical_penalties(resolve_config(cfg, ["dynamics.critic_steps=1"]))
    assert one_step["cm"] == pytest.approx(math.sqrt(n_c) * lam["cm"])
    isolated = critical_penalties(cfg, point_mass=1 / 100)  # h_eff = h / N
    assert isolated["rel"] == pytest.approx(10 * lam["rel"])
    assert critical_penalties(resolve_config(cfg, ["critic.optimizer=adam"])) is None
    with pytest.raises(DataError, match="point_mass"):
        critical_penalties(cfg, point_mass=0.0)
    half = critical_penalties(resolve_config(cfg, ["loss.penalty_form=half_lambda"]))
    assert half["cm"] == pytest.approx(2 * lam["cm"])
    frozen = critical_penalties(resolve_config(cfg, ["generator.phi=1.0"]))
    assert math.isnan(frozen["rel"]) and frozen["cm"] > 0
    assert critical_penalties(resolve_config(cfg, ["loss.penalty=none"])) is None
    assert critical_penalties(resolve_config(cfg, ["generator.kernel=identity"])) is None
    # kappa follows the normalisation: 'none' (K), 'mean' (g1, g1 - g2), 'spectral' (K / (1 + 99 phi))
    for norm, cm, rel in (("none", 1 + 99 * 0.5, 0.5), ("mean", 1.0, 0.5), ("spectral", 1.0, 0.5 / (1 + 99 * 0.5))):
        got = critical_penalties(resolve_config(cfg, [f"generator.normalization={norm}"]))
        assert got["cm"] == pytest.approx(lam["cm"] * math.sqrt(cm / kappa_cm)), norm
        assert got["rel"] == pytest.approx(lam["rel"] * math.sqrt(rel / kappa_rel)), norm
    # mean_grad: lambda / N^2 multiplies E||grad f||^2, so lambda_c is N^2 times the lambda form's
    mg = critical_penalties(resolve_config(cfg, ["loss.penalty_form=mean_grad"]))
    assert mg["cm"] == pytest.approx(100 ** 2 * lam["cm"])


def test_load_run_and_convergence_times_of_a_sweep(tmp_path):
    from particlegan.engine.simulate import run_to_dir

    cfg = resolve_config(overrides=["particles.n=16", "run.steps=20", "run.record_every=5",
                                    "target.n_samples=64", "critic.features=32",
                                    "dynamics.critic_steps_startup=5", "observables.mmd_samples=64"])
    run_to_dir(cfg, tmp_path / "runs" / "abc")
    data = load_run(tmp_path / "runs" / "abc")
    np.testing.assert_array_equal(data["step"], [0, 5, 10, 15, 20])
    assert data["config"] == cfg and data["summary"]["steps"] == 20 and data["meta"]["seed"] == 0
    assert data["snapshots"].shape[1:] == (16, 2)
    rows = [{"run_id": "abc", "status": "ok"}, {"run_id": "gone", "status": "failed"}]
    level = float(np.max(data["mmd2"])) + 1.0  # always below: converged at step 0
    add_convergence_times(rows, tmp_path, "mmd2", level)
    assert rows[0]["convergence_time"] == 0.0 and math.isnan(rows[1]["convergence_time"])
    with pytest.raises(DataError, match="no result.npz"):
        load_run(tmp_path / "runs" / "gone")


def test_first_crossing_and_same_side_fraction_on_hand_made_maps():
    from particlegan.sweeps.analysis import first_crossing, same_side_fraction

    nan = float("nan")
    assert first_crossing([0.0, 0.1, 0.5, 0.9], [0.1, nan, 3.0, 4.6], 2.0) == 0.5
    assert first_crossing([0.9, 0.0, 0.5], [4.6, 0.1, 1.0], 2.0) == 0.9  # sorted by x
    assert np.isnan(first_crossing([0.0, 0.5], [0.1, 2.0], 2.0))        # C = 2 is not above
    a = {(1, 0): 0.1, (1, 1): 3.0, (2, 0): 2.5, (3, 0): nan}
    b = {(1, 0): 0.5, (1, 1): 1.0, (2, 0): 4.0, (3, 0): 1.0, (4, 0): 0.0}
    assert same_side_fraction(a, b, 2.0) == (2 / 3, 3)
    frac, n = same_side_fraction({(9, 9): 1.0}, b, 2.0)
    assert n == 0 and np.isnan(frac)
