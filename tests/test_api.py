"""The Python API (particlegan.run / grid_sweep / resolve / load_run / load_sweep) and the tutorial."""
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import particlegan as pg
from particlegan.errors import ConfigError
from particlegan.engine.simulate import simulate

ROOT = Path(__file__).resolve().parents[1]
SMALL = {"particles": {"n": 24}, "target": {"n_samples": 100}, "critic": {"features": 32},
         "dynamics": {"critic_steps_startup": 5}, "run": {"steps": 10, "record_every": 2}}


def test_import_is_light():
    """Sweep workers import particlegan before limiting their threads: no numpy at import."""
    code = "import sys, particlegan; print('numpy' in sys.modules, callable(particlegan.run))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["False", "True"]


def test_run_from_a_partial_dict_equals_the_cli_path(tmp_path):
    mem = pg.run(SMALL, seed=3)
    disk = pg.run(SMALL, seed=3, out=tmp_path / "r")
    assert mem.config == disk.config == pg.resolve(SMALL, seed=3)
    for k in mem.series:
        assert np.array_equal(mem.series[k], disk.series[k])
    assert np.array_equal(mem.snapshots, disk.snapshots) and mem.snapshots.shape[1:] == (24, 2)
    assert mem.summary == disk.summary and disk.path == tmp_path / "r" and disk.meta["run_id"]
    assert np.array_equal(pg.load_run(tmp_path / "r").final_particles, mem.final_particles)


@pytest.mark.parametrize("config,fragment", [
    ({"generator": {"phi": 5}}, "generator.phi"),
    ({"run": {"steps": -3}}, "run.steps"),
    ({"runn": {}}, "did you mean 'run'"),
])
def test_bad_configs_are_refused(config, fragment):
    with pytest.raises(ConfigError, match=fragment):
        pg.run(config)


def test_simulate_refuses_partial_or_invalidly_edited_configs():
    with pytest.raises(ConfigError, match="full resolved config; model.type is missing"):
        simulate({"run": {"steps": 3}})
    cfg = pg.resolve(SMALL)
    cfg["generator"]["phi"] = 5.0
    with pytest.raises(ConfigError, match="generator.phi"):
        simulate(cfg)
    cfg = pg.resolve(SMALL)
    cfg["generator"]["phi"] = 0.5  # a valid edit runs
    assert simulate(cfg).status == "ok"


def test_load_run_refuses_a_non_run(tmp_path):
    from particlegan.errors import DataError

    with pytest.raises(DataError, match="not a finished run directory"):
        pg.load_run(tmp_path)


def test_sweep_and_its_table(tmp_path):
    rep = pg.grid_sweep(SMALL, grid={"generator.phi": [0.0, 0.5]}, seeds=2, overrides=["run.steps=6"],
                   out=tmp_path / "s", in_process=True)
    assert rep.n_ok == 4
    plain = pg.load_sweep(tmp_path / "s", as_frame=False)
    assert list(plain["generator.phi"]) == [0.0, 0.0, 0.5, 0.5] and set(plain["run.steps"]) == {6.0}
    assert plain["collapse"].dtype == np.float64
    pd = pytest.importorskip("pandas")
    frame = pg.load_sweep(tmp_path / "s")
    assert isinstance(frame, pd.DataFrame) and len(frame) == 4
    assert np.array_equal(frame["collapse"].to_numpy(), plain["collapse"])


def test_to_xarray():
    xr = pytest.importorskip("xarray")
    run = pg.run(SMALL)
    ds = run.to_xarray()
    assert isinstance(ds, xr.Dataset)
    assert np.array_equal(ds["collapse"].values, run.series["collapse"])
    assert ds["snapshots"].shape == run.snapshots.shape


def test_tutorial_runs(tmp_path):
    res = subprocess.run([sys.executable, str(ROOT / "sims" / "tutorial" / "tutorial.py"), str(tmp_path),
                          "--quick"], capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    assert "6 runs: 6 ok" in res.stdout and (tmp_path / "collapse_vs_phi.png").stat().st_size > 0
