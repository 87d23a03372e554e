"""Studies of the effective model (sims/, issue 4): quick versions of mode_collapse,
frequency_principle and critical_damping run through the same configs and commands as the
full studies (small N, few steps, one seed); the full studies are marked slow."""
import importlib.util
import math
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from particlegan.sweeps.analysis import load_results, seed_average
from particlegan.cli import main
from particlegan.sweeps.sweep import GridAxis

ROOT = Path(__file__).resolve().parent.parent
QUICK_COLLAPSE = ["--set", "dynamics.eta_d=0.003", "--set", "particles.n=32", "--set", "run.steps=300",
                  "--set", "target.n_samples=500", "--set", "run.record_every=50"]


def _load(rel):
    spec = importlib.util.spec_from_file_location(rel.replace("/", "_"), ROOT / rel)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _sweep(config, out, *args):
    res = CliRunner().invoke(main, ["sweep", str(ROOT / config), "--out", str(out), "--jobs", "1",
                                    "--no-plot", *args])
    assert res.exit_code == 0, res.output
    return {float(r["generator.phi"]): r for r in load_results(out / "results.csv")}


@pytest.mark.trajectory
def test_mode_collapse_and_frequency_principle_quick(tmp_path):
    """Quick A2.8/A2.10 check: with the RBF random-feature critic the ring is covered at phi = 0
    and collapses at phi = 0.3 and 0.98; with ReLU random features (same everything else) the
    cloud still covers all 8 modes at phi = 0.3 and collapses only at phi = 0.98."""
    grid = ["--grid", "generator.phi=0,0.3,0.98", "--seeds", "1"]
    rbf = _sweep("sims/mode_collapse/config.toml", tmp_path / "rbf", *grid, *QUICK_COLLAPSE)
    relu = _sweep("sims/frequency_principle/config.toml", tmp_path / "relu", *grid, *QUICK_COLLAPSE)
    for rows in (rbf, relu):
        assert all(r["status"] == "ok" for r in rows.values())
        assert rows[0.0]["collapse"] < 0.1 and rows[0.0]["modes_covered"] == 8
        assert rows[0.98]["collapse"] > 1.0  # log 8 = 2.08 is total collapse
    assert rbf[0.3]["collapse"] > 0.3
    assert relu[0.3]["collapse"] < 0.1 and relu[0.3]["modes_covered"] == 8
    res = CliRunner().invoke(main, ["plot", "lines", str(tmp_path / "rbf"), "--x", "generator.phi",
                                    "--y", "collapse", "--out", str(tmp_path / "c.png")])
    assert res.exit_code == 0, res.output
    assert (tmp_path / "c.png").read_bytes()[:4] == b"\x89PNG"


@pytest.mark.trajectory
def test_critical_damping_quick(tmp_path):
    """Quick A2.9 check on the study's own config: at lambda = 0.01, 0.1, 1 (lambda_c,rel = 0.1,
    lambda_c,cm = 0.3) both modes converge fastest at 0.1 (U-shape), and the relative mode's
    convergence times agree with the discrete linearised simulator to 10%."""
    study = _load("sims/critical_damping/run_study.py")
    overrides = ["run.steps=3000", "run.snapshots=601"]
    rows = study.run(tmp_path, [0], 1, GridAxis("loss.penalty_weight", (0.01, 0.1, 1.0), "quick"), overrides)
    from particlegan.store.config import resolve_config

    cfg = resolve_config(study.load_base(study.CONFIG, overrides))
    th = study.theory(cfg)
    assert th["cm"]["lambda_c"] == pytest.approx(0.3) and th["rel"]["lambda_c"] == pytest.approx(0.1)
    by_lam = {r["lambda"]: r for r in rows}
    assert all(r["status"] == "ok" for r in rows)
    for mode in ("cm", "rel"):
        times = [by_lam[lam][f"{mode}_time"] for lam in (0.01, 0.1, 1.0)]
        assert times[1] < times[0] and times[1] < times[2], (mode, times)
    for lam, r in by_lam.items():
        assert math.isfinite(r["rel_time"])
        assert r["rel_time"] == pytest.approx(r["rel_time_theory"], rel=0.1), lam


def test_critical_damping_mode_errors_split_the_displacement():
    study = _load("sims/critical_damping/run_study.py")
    y, x0 = study.geometry()
    cm, rel = study.mode_errors(x0[None], y)
    assert cm[0] == pytest.approx(study.SHIFT) and rel[0] == pytest.approx(study.SPLIT)
    assert np.allclose(np.load(ROOT / "sims/critical_damping/target.npy"), y)
    assert np.allclose(np.load(ROOT / "sims/critical_damping/init.npy"), x0)


@pytest.mark.slow
def test_mode_collapse_full_study(tmp_path):
    """The committed mode_collapse sweep (sims/README.md): C rises from < 0.1 at phi <= 0.01 to
    > 1 at phi = 0.98 at every critic learning rate."""
    rows = _sweep("sims/mode_collapse/config.toml", tmp_path, "--grid", "generator.phi=0,0.01,0.03,0.1,0.3,0.98",
                  "--grid", "dynamics.eta_d=0.001,0.003,0.01", "--seeds", "3")
    table = seed_average(load_results(tmp_path / "results.csv"), ["generator.phi", "dynamics.eta_d"], "collapse")
    assert len(rows) == 6 and len(table) == 18
    for cell in table:
        assert cell["n"] == 3
        if cell["generator.phi"] <= 0.01:
            assert cell["mean"] < 0.1
        if cell["generator.phi"] == 0.98:
            assert cell["mean"] > 1.0


@pytest.mark.slow
def test_critical_damping_full_study(tmp_path):
    """The full lambda sweep: measured optima within a factor 1.5 of lambda_c for both modes."""
    study = _load("sims/critical_damping/run_study.py")
    rows = study.run(tmp_path, [0, 1, 2], 2, study.parse_logspace(study.LOGSPACE), [])
    from particlegan.store.config import resolve_config

    summary = study.summarise(rows, resolve_config(study.load_base(study.CONFIG, [])))
    for mode in ("cm", "rel"):
        assert 1 / 1.5 < summary[mode]["opt_measured"] / summary[mode]["lambda_c"] < 1.5


@pytest.mark.trajectory
@pytest.mark.parametrize("beta", [0.0, 2.0])
def test_stabilizer_growth_rate_matches_the_derived_dispersion_relation(beta):
    """Quick version of sims/stabilizer (a): a feature-density wave under the critic's ascent flow
    grows at (1 - beta) rho_0 k^2 K_hat(k) (3%): unstable without the stabiliser, decaying with
    beta = 2."""
    study = _load("sims/stabilizer/run_study.py")
    m, spacing = 150, 20.0 / 150
    k = 2 * np.pi * 4 / (m * spacing)
    params = study.KERNELS["gaussian"]
    rate = study.measured_growth_rate("gaussian", params, beta, k, m=m, spacing=spacing, t_end=4.0, dt=0.1)
    theory = study.predicted_growth_rate("gaussian", params, beta, k, m=m, spacing=spacing)[0]
    assert (rate > 0) == (beta < 1)
    assert rate == pytest.approx(theory, rel=0.03)
