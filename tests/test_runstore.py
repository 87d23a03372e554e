"""The run store: particlegan ls, filters, changed parameters; sweep --dry-run and fixed columns."""
import json
import re

import pytest
from click.testing import CliRunner

from particlegan.cli import main
from particlegan.errors import ConfigError
from particlegan.sweeps.runstore import changed_parameters, list_runs

TINY = ["particles.n=16", "run.steps=6", "target.n_samples=64", "critic.features=32",
        "dynamics.critic_steps_startup=3", "observables.mmd_samples=64"]
SETS = [a for o in TINY for a in ("--set", o)]


@pytest.fixture(scope="module")
def sweep_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("store") / "sw"
    res = CliRunner().invoke(main, ["sweep", *SETS, "--grid", "generator.phi=0,0.5", "--seeds", "2",
                                    "--in-process", "--no-plot", "--out", str(out)])
    assert res.exit_code == 0, res.output
    return out


def test_changed_parameters_against_the_defaults():
    from particlegan.store.config import resolve_config

    cfg = resolve_config(overrides=["generator.phi=0.5", "run.seed=3"])
    assert changed_parameters(cfg) == {"generator.phi": 0.5}  # the seed is shown on its own


def test_list_and_filter(sweep_dir):
    recs = list_runs(sweep_dir)
    assert len(recs) == 4 and {r["status"] for r in recs} == {"ok"}
    assert {r["params"]["particles.n"] for r in recs} == {16}
    half = list_runs(sweep_dir, ["generator.phi=0.5", "seed=1"])
    assert len(half) == 1 and half[0]["params"]["generator.phi"] == 0.5 and half[0]["seed"] == 1
    c = half[0]["summary"]["collapse"]
    assert list_runs(sweep_dir, [f"collapse={c!r}"]) == half
    assert list_runs(sweep_dir / "runs" / half[0]["run_id"])[0]["run_id"] == half[0]["run_id"]
    with pytest.raises(ConfigError, match="--where nonsense"):
        list_runs(sweep_dir, ["nonsense=1"])


def test_ls_cli_table_and_json(sweep_dir):
    res = CliRunner().invoke(main, ["ls", str(sweep_dir), "--where", "generator.phi=0.5", "--col", "mmd2"])
    assert res.exit_code == 0
    lines = res.output.splitlines()
    assert lines[0].startswith("all runs:") and "generator.phi=0.5" in lines[0]
    assert lines[1].split()[:4] == ["run_id", "status", "seed", "mmd2"] and lines[-1] == "2 run(s)"
    res = CliRunner().invoke(main, ["ls", str(sweep_dir), "--json"])
    objs = [json.loads(line) for line in res.output.splitlines()]
    assert len(objs) == 4 and all(o["status"] == "ok" for o in objs)
    bad = CliRunner().invoke(main, ["ls", str(sweep_dir / "nope")])
    assert bad.exit_code == 2 and bad.output.count("\n") == 1


def test_results_csv_carries_the_fixed_parameters(sweep_dir):
    header = (sweep_dir / "results.csv").read_text().splitlines()[0].split(",")
    assert header[:2] == ["run_id", "generator.phi"]
    assert header[2:8] == [o.split("=")[0] for o in TINY] and header[8] == "seed"
    assert json.loads((sweep_dir / "sweep.json").read_text())["fixed"] == header[2:8]


def test_dry_run_prints_the_plan_and_writes_nothing(sweep_dir, tmp_path):
    res = CliRunner().invoke(main, ["sweep", *SETS, "--grid", "generator.phi=0,0.5,0.9", "--seeds", "2",
                                    "--jobs", "2", "--dry-run", "--out", str(sweep_dir)])
    assert res.exit_code == 0
    assert "6 runs = 3 generator.phi x 2 seeds" in res.output
    # the estimate's value depends on this machine's speed (a first numba compile included): its form only
    assert re.search(r"4 already finished, 2 to run: about \d+:\d\d:\d\d on 2 worker\(s\)", res.output)
    assert json.loads((sweep_dir / "sweep.json").read_text())["n_runs"] == 4  # untouched
    fresh = CliRunner().invoke(main, ["sweep", *SETS, "--grid", "generator.phi=0", "--dry-run",
                                      "--out", str(tmp_path / "new")])
    assert "0 already finished, 1 to run: time unknown" in fresh.output and not (tmp_path / "new").exists()


def test_dry_run_refuses_a_bad_jobs_count_as_the_sweep_does(sweep_dir):
    res = CliRunner().invoke(main, ["sweep", *SETS, "--grid", "generator.phi=0,0.5", "--jobs", "0", "--dry-run",
                                    "--out", str(sweep_dir)])
    assert res.exit_code == 2 and "--jobs must be >= 1, got 0" in res.output
    assert "Traceback" not in res.output
