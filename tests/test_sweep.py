"""Sweeps: expansion, run ids, resume, failures, divergence, crash safety, locking, Dask."""
import csv
import json
import math
import os
import subprocess
import sys

import numpy as np
import pytest
from click.testing import CliRunner

from particlegan.cli import main
from particlegan.store.config import config_hash, resolve_config
from particlegan.errors import ConfigError, DataError
from particlegan.progress import Reporter
from particlegan.sweeps.sweep import (GridAxis, SweepLock, load_base, parse_grid, parse_logspace,
                               parse_seeds, plan_sweep, run_sweep)
from sweep_hooks import KillRuns  # tests/sweep_hooks.py: the test-only kill hook

TINY = ["particles.n=16", "run.steps=20", "target.n_samples=64", "critic.features=32",
        "dynamics.critic_steps_startup=5", "observables.mmd_samples=64"]
TINY_ARGS = [a for item in TINY for a in ("--set", item)]
RUN_FILES = ["config.json", "meta.json", "result.npz", "summary.json"]


def tiny_plan(*grids, seeds=(0,), extra=(), **kwargs):
    return plan_sweep(load_base(None, TINY + list(extra)), [parse_grid(g) for g in grids], list(seeds),
                      **kwargs)


def read_csv(path):
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def without_wall_time(rows):
    return [{k: v for k, v in r.items() if k != "wall_time_s"} for r in rows]


# ---------------------------------------------------------------------------------------------
# expansion
# ---------------------------------------------------------------------------------------------
def test_grid_values_are_parsed_like_set_values():
    axis = parse_grid("generator.phi=0, 0.5,1e-2")
    assert axis.key == "generator.phi" and axis.values == (0, 0.5, 0.01)
    assert parse_grid("target.kind=ring,grid").values == ("ring", "grid")
    assert parse_grid("generator.bias=true,false").values == (True, False)
    # commas inside brackets and quotes do not split values
    assert parse_grid("critic.mmd_sigmas=[0.1, 0.2],0.3").values == ([0.1, 0.2], 0.3)
    assert parse_grid('particles.init_path="a,b.npy",c.npy').values == ("a,b.npy", "c.npy")
    assert parse_grid("generator.phi=").values == ()


@pytest.mark.parametrize("item, words", [
    ("generator.phy=0,1", ["generator.phy", "did you mean 'phi'"]),
    ("generatr.phi=0", ["generatr", "did you mean 'generator'"]),
    ("generator.phi", ["section.key=v1,v2"]),
    ("phi=0,1", ["section.key"]),
    ("run.seed=0,1", ["--seeds"]),
    ("generator.phi=0,,1", ["empty value"]),
])
def test_bad_grids_name_the_problem(item, words):
    with pytest.raises(ConfigError) as err:
        parse_grid(item)
    for word in words:
        assert word in str(err.value)
    assert "\n" not in str(err.value)


def test_logspace_is_ten_to_the_linspace():
    axis = parse_logspace("dynamics.eta_d=-3:-1:5")
    np.testing.assert_array_equal(axis.values, 10.0 ** np.linspace(-3, -1, 5))
    assert axis.values[0] == pytest.approx(1e-3) and axis.values[-1] == pytest.approx(0.1)
    assert parse_logspace("loss.penalty_weight=0:0:1").values == (1.0,)
    assert parse_logspace("loss.penalty_weight=0:1:0").values == ()
    for bad in ("dynamics.eta_d=-3:-1", "dynamics.eta_d=a:1:3", "dynamics.eta_d=0:1:2.5",
                "dynamics.eta_dd=0:1:3"):
        with pytest.raises(ConfigError):
            parse_logspace(bad)


def test_seeds_count_list_and_range():
    assert parse_seeds("3") == [0, 1, 2]
    assert parse_seeds(2) == [0, 1]
    assert parse_seeds("3,5,9") == [3, 5, 9]
    assert parse_seeds("7,") == [7]
    assert parse_seeds("2..4") == [2, 3, 4]
    assert parse_seeds("0") == []
    for bad in ("x", "1,1", "-1,2", "-2", "1.5"):
        with pytest.raises(ConfigError):
            parse_seeds(bad)


def test_plan_is_the_cartesian_product_times_seeds_in_a_fixed_order():
    plan = tiny_plan("generator.phi=0,0.25,0.5", "dynamics.update=alternating,simultaneous", seeds=[3, 5])
    assert len(plan.runs) == 3 * 2 * 2
    points = [(r.params["generator.phi"], r.params["dynamics.update"], r.seed) for r in plan.runs]
    assert points[:3] == [(0.0, "alternating", 3), (0.0, "alternating", 5), (0.0, "simultaneous", 3)]
    assert points[-1] == (0.5, "simultaneous", 5)
    assert len({r.run_id for r in plan.runs}) == 12
    for run in plan.runs:
        assert run.cfg["generator"]["phi"] == run.params["generator.phi"]
        assert run.cfg["run"]["seed"] == run.seed and run.cfg["particles"]["n"] == 16
        assert isinstance(run.params["generator.phi"], float)  # resolved value, not the raw 0


def test_run_ids_are_the_ids_of_particlegan_run():
    plan = tiny_plan("generator.phi=0,0.5", seeds=[0, 1])
    again = tiny_plan("generator.phi=0,0.5", seeds=[0, 1])
    assert [r.run_id for r in plan.runs] == [r.run_id for r in again.runs]
    # the same config given to `particlegan run` has the same id, so the run is found again
    cfg = resolve_config(overrides=TINY + ["generator.phi=0.5"], seed=1)
    assert config_hash(cfg) == plan.runs[3].run_id
    assert plan.runs[2].run_id != plan.runs[3].run_id  # only the seed differs
    assert plan.runs[0].run_id != plan.runs[2].run_id


def test_runs_resolving_to_the_same_config_are_kept_once():
    plan = tiny_plan("particles.n=16,16.0,24")
    assert [r.params["particles.n"] for r in plan.runs] == [16, 24]


def test_empty_and_oversized_sweeps_are_refused():
    with pytest.raises(ConfigError, match="expands to no runs: 'generator.phi=' has no values"):
        tiny_plan("generator.phi=")
    with pytest.raises(ConfigError, match="no seeds"):
        tiny_plan("generator.phi=0", seeds=[])
    with pytest.raises(ConfigError, match=r"6 runs, more than --max-runs 5.*--force"):
        tiny_plan("generator.phi=0,0.1,0.2", seeds=[0, 1], max_runs=5)
    assert len(tiny_plan("generator.phi=0,0.1,0.2", seeds=[0, 1], max_runs=5, force=True).runs) == 6


def test_bad_values_fail_before_any_run_naming_the_point():
    with pytest.raises(ConfigError) as err:
        tiny_plan("generator.phi=0,2.0", "dynamics.eta_g=0.5")
    msg = str(err.value)
    assert "generator.phi=2.0" in msg and "outside the PSD range" in msg and "seed=0" in msg
    with pytest.raises(ConfigError, match="dynamics.eta_d must be > 0"):
        tiny_plan("dynamics.eta_d=0.1,-1")
    with pytest.raises(ConfigError, match="swept twice"):
        plan_sweep({}, [parse_grid("generator.phi=0"), GridAxis("generator.phi", (0.5,), "x")], [0])
    with pytest.raises(ConfigError, match="both swept and set"):
        tiny_plan("generator.phi=0", fixed_keys=["generator.phi"])


def test_cli_bad_grid_exits_2_without_creating_anything(tmp_path):
    out = tmp_path / "sw"
    res = CliRunner().invoke(main, ["sweep", "--grid", "generator.phi=0,2", "--out", str(out)] + TINY_ARGS)
    assert res.exit_code == 2
    assert "generator.phi" in res.output and "Traceback" not in res.output
    assert not out.exists()
    res = CliRunner().invoke(main, ["sweep", "--grid", "generator.phi=0,0.1,0.2", "--seeds", "2",
                                    "--max-runs", "5", "--out", str(out)])
    assert res.exit_code == 2 and "--max-runs 5" in res.output and not out.exists()


def test_sweep_module_imports_no_numerics():
    # a spawned worker imports this module before its initializer limits the thread counts
    code = "import particlegan.sweeps.sweep, sys; print(sorted({'numpy', 'numba', 'scipy'} & set(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


# ---------------------------------------------------------------------------------------------
# lock
# ---------------------------------------------------------------------------------------------
def _dead_pid():
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_lock_is_exclusive_and_released(tmp_path):
    with SweepLock(tmp_path) as lock:
        assert (tmp_path / ".lock").read_text().split()[0] == str(os.getpid())
        with pytest.raises(DataError) as err:
            SweepLock(tmp_path).acquire()
        assert f"pid {os.getpid()}" in str(err.value) and ".lock" in str(err.value)
        assert lock.held
    assert not (tmp_path / ".lock").exists()


def test_stale_lock_of_a_dead_process_is_taken_over(tmp_path):
    import socket

    (tmp_path / ".lock").write_text(f"{_dead_pid()} {socket.gethostname()}\n")
    with SweepLock(tmp_path):
        assert (tmp_path / ".lock").read_text().split()[0] == str(os.getpid())
    # a lock held from another host cannot be checked: refused
    (tmp_path / ".lock").write_text(f"{_dead_pid()} some-other-host\n")
    with pytest.raises(DataError, match="some-other-host"):
        SweepLock(tmp_path).acquire()


def test_cli_refuses_a_locked_directory(tmp_path):
    out = tmp_path / "sw"
    out.mkdir()
    with SweepLock(out):
        res = CliRunner().invoke(main, ["sweep", "--grid", "generator.phi=0", "--out", str(out),
                                        "--in-process"] + TINY_ARGS)
    assert res.exit_code == 2
    assert res.output.count("\n") == 1 and "in use by another sweep" in res.output
    assert not (out / "runs").exists()


def test_dask_without_the_extra_is_a_config_error(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "distributed", None)  # import fails as if not installed
    with pytest.raises(ConfigError, match=r"pip install 'particlegan\[dask\]'"):
        run_sweep(tiny_plan("generator.phi=0"), tmp_path / "sw", dask="local")
    assert not (tmp_path / "sw").exists()


# ---------------------------------------------------------------------------------------------
# execution
# ---------------------------------------------------------------------------------------------
def test_workers_run_numba_single_threaded():
    from particlegan.sweeps.sweep import _process_pool, worker_thread_settings

    with _process_pool(1) as pool:
        settings = pool.submit(worker_thread_settings).result(timeout=120)
    assert settings["pid"] != os.getpid()
    assert settings["NUMBA_NUM_THREADS"] == "1" and settings["OMP_NUM_THREADS"] == "1"
    assert settings["numba_threads"] == 1


@pytest.fixture(scope="module")
def pool_sweep(tmp_path_factory):
    """Four tiny runs on two worker processes, through the CLI."""
    out = tmp_path_factory.mktemp("pool") / "sw"
    res = CliRunner().invoke(main, ["sweep", "--grid", "generator.phi=0,0.5", "--seeds", "2", "--jobs", "2",
                                    "--no-plot", "--out", str(out)] + TINY_ARGS)
    assert res.exit_code == 0, res.output
    return out, res.output


def test_sweep_stores_runs_like_particlegan_run(pool_sweep, tmp_path):
    out, output = pool_sweep
    assert "4 runs: 4 ok, 0 diverged, 0 failed" in output and "results.csv" in output
    rows = read_csv(out / "results.csv")
    fixed = [item.split("=")[0] for item in TINY]  # every --set key has its column
    assert list(rows[0]) == ["run_id", "generator.phi", *fixed, "seed", "collapse", "modes_covered", "hq_fraction",
                             "mmd2", "radius_gyration", "critic_grad_norm", "com_error", "steps", "status",
                             "wall_time_s", "error"]
    assert [(r["generator.phi"], r["seed"]) for r in rows] == [("0.0", "0"), ("0.0", "1"), ("0.5", "0"),
                                                               ("0.5", "1")]
    assert {r["status"] for r in rows} == {"ok"} and {r["error"] for r in rows} == {""}
    definition = json.loads((out / "sweep.json").read_text())
    assert definition["seeds"] == [0, 1] and definition["grids"][0]["key"] == "generator.phi"
    assert [r["run_id"] for r in definition["runs"]] == [r["run_id"] for r in rows]
    assert not (out / ".lock").exists()
    for row in rows:
        run_dir = out / "runs" / row["run_id"]
        assert sorted(os.listdir(run_dir)) == RUN_FILES
        summary = json.loads((run_dir / "summary.json").read_text())
        assert float(row["collapse"]) == summary["collapse"] and int(row["steps"]) == summary["steps"] == 20
        stored = json.loads((run_dir / "config.json").read_text())["config"]
        assert config_hash(stored) == row["run_id"]
    # a worker's run is bitwise the run `particlegan run` makes in this process
    from particlegan.engine.simulate import run_to_dir

    cfg = resolve_config(overrides=TINY + ["generator.phi=0.5"], seed=1)
    run_to_dir(cfg, tmp_path / "single")
    assert ((tmp_path / "single" / "result.npz").read_bytes()
            == (out / "runs" / rows[3]["run_id"] / "result.npz").read_bytes())


def test_results_do_not_depend_on_the_number_of_workers(pool_sweep, tmp_path):
    out, _ = pool_sweep
    plan = tiny_plan("generator.phi=0,0.5", seeds=[0, 1], fixed_keys=[o.split("=")[0] for o in TINY])
    report = run_sweep(plan, tmp_path / "serial", in_process=True)
    assert report.n_ok == 4
    assert without_wall_time(read_csv(tmp_path / "serial" / "results.csv")) == \
        without_wall_time(read_csv(out / "results.csv"))


def test_rerun_skips_finished_runs_and_redoes_unfinished_ones(tmp_path):
    out = tmp_path / "sw"
    args = ["sweep", "--grid", "generator.phi=0,0.5", "--seeds", "2", "--in-process", "--no-plot",
            "--out", str(out)] + TINY_ARGS
    assert CliRunner().invoke(main, args).exit_code == 0
    rows = read_csv(out / "results.csv")
    metas = {r["run_id"]: out / "runs" / r["run_id"] / "meta.json" for r in rows}
    stamps = {k: p.stat().st_mtime_ns for k, p in metas.items()}
    unfinished = rows[1]["run_id"]
    metas[unfinished].unlink()  # as if killed before it finished
    (out / "runs" / unfinished / "summary.json").unlink()
    res = CliRunner().invoke(main, args)
    assert res.exit_code == 0, res.output
    assert "4 runs: 4 ok" in res.output and "3 already finished" in res.output
    for run_id, path in metas.items():
        if run_id == unfinished:
            assert path.exists()
        else:
            assert path.stat().st_mtime_ns == stamps[run_id]  # not run again
    assert without_wall_time(read_csv(out / "results.csv")) == without_wall_time(rows)


def test_results_csv_gains_one_complete_row_per_finished_run_without_being_rewritten(tmp_path):
    # O(1) per record: the table is appended to (same inode, never reread), each state parseable
    seen = []
    path = tmp_path / "sw" / "results.csv"

    class Checking(Reporter):
        def advance(self, n=1):
            super().advance(n)
            seen.append((len(read_csv(path)), path.stat().st_ino, path.read_bytes()))

    report = run_sweep(tiny_plan("generator.phi=0,0.25,0.5"), tmp_path / "sw", in_process=True,
                       reporter=Checking(enabled=False))
    assert report.n_ok == 3 and [n for n, _, _ in seen] == [1, 2, 3]
    assert len({ino for _, ino, _ in seen}) == 1  # appended in place, not replaced by a new file
    for (_, _, before), (_, _, after) in zip(seen, seen[1:]):
        assert after.startswith(before) and after.count(b"\n") == before.count(b"\n") + 1
    assert len(read_csv(path)) == 3


def test_appended_rows_are_put_in_plan_order_when_the_sweep_ends(tmp_path):
    from particlegan.sweeps.sweep import ResultsAppender

    plan = tiny_plan("generator.phi=0,0.25,0.5")
    outcomes = {}
    table = ResultsAppender(tmp_path / "results.csv", plan, outcomes)
    for run in reversed(plan.runs):  # finished in reverse order
        outcomes[run.run_id] = {"status": "failed", "summary": None, "wall_time_s": 1.0, "error": "x, \"y\""}
        table.append(run, outcomes[run.run_id])
    rows = read_csv(tmp_path / "results.csv")
    assert [r["run_id"] for r in rows] == [r.run_id for r in reversed(plan.runs)]
    assert rows[0]["error"] == 'x, "y"'  # quoted like the csv module quotes
    table.close(outcomes)
    assert [r["run_id"] for r in read_csv(tmp_path / "results.csv")] == [r.run_id for r in plan.runs]


def test_a_failing_run_is_recorded_and_the_others_finish(tmp_path):
    good = tmp_path / "init.npy"
    np.save(good, np.random.default_rng(0).normal(size=(16, 2)) * 0.1)
    missing = tmp_path / "missing.npy"
    out = tmp_path / "sw"
    res = CliRunner().invoke(main, ["sweep", "--set", "particles.init=file",
                                    "--grid", f"particles.init_path={missing},{good}", "--seeds", "2",
                                    "--in-process", "--no-plot", "--out", str(out)] + TINY_ARGS)
    assert res.exit_code == 1, res.output
    assert "4 runs: 2 ok, 0 diverged, 2 failed" in res.output
    rows = read_csv(out / "results.csv")
    assert [r["status"] for r in rows] == ["failed", "failed", "ok", "ok"]
    assert "missing.npy" in rows[0]["error"] and "\n" not in rows[0]["error"]
    assert rows[0]["collapse"] == "" and rows[2]["error"] == ""
    assert not (out / "runs" / rows[0]["run_id"] / "meta.json").exists()


@pytest.mark.filterwarnings("ignore::RuntimeWarning")  # the overflow that makes the run diverge
def test_a_diverging_run_is_counted_as_diverged(tmp_path):
    # a huge critic learning rate blows the critic weights up (a huge eta_g does not: the random-
    # feature critic has bounded gradients and the particles just fly to where it is flat)
    out = tmp_path / "sw"
    res = CliRunner().invoke(main, ["sweep", "--grid", "dynamics.eta_d=0.01,1e6", "--in-process", "--no-plot",
                                    "--out", str(out)] + TINY_ARGS)
    assert res.exit_code == 0, res.output  # a diverged run is a result, not a failure
    assert "2 runs: 1 ok, 1 diverged, 0 failed" in res.output
    rows = read_csv(out / "results.csv")
    assert [r["status"] for r in rows] == ["ok", "diverged"]
    assert int(rows[1]["steps"]) < 20 and math.isfinite(float(rows[1]["collapse"]))


def test_a_killed_worker_is_retried_once(tmp_path):
    plan = tiny_plan("generator.phi=0,0.25,0.5")
    once, always, spared = (r.run_id for r in plan.runs)
    report = run_sweep(plan, tmp_path / "sw", jobs=2, run_reporter=KillRuns([once], [always]))
    rows = {r["run_id"]: r for r in read_csv(tmp_path / "sw" / "results.csv")}
    assert rows[once]["status"] == "ok" and rows[spared]["status"] == "ok"
    assert rows[always]["status"] == "failed" and "died twice" in rows[always]["error"]
    assert report.n_ok == 2 and report.n_failed == 1 and report.n_retried >= 2
    # the killed run left a partial directory (config.json, no meta.json)
    assert (tmp_path / "sw" / "runs" / always / "config.json").exists()
    assert not (tmp_path / "sw" / "runs" / always / "meta.json").exists()
    # the retried run is the same run as an undisturbed one
    clean = run_sweep(tiny_plan("generator.phi=0"), tmp_path / "clean", in_process=True)
    assert clean.n_ok == 1
    assert ((tmp_path / "clean" / "runs" / once / "result.npz").read_bytes()
            == (tmp_path / "sw" / "runs" / once / "result.npz").read_bytes())


@pytest.fixture
def dask_address(request):
    """'local' (the sweep starts its own LocalCluster) or the address of a cluster started here."""
    pytest.importorskip("distributed")
    if request.param == "local":
        yield "local"
        return
    import distributed

    with distributed.LocalCluster(n_workers=1, threads_per_worker=1, processes=True, dashboard_address=None,
                                  silence_logs=50) as cluster:
        yield cluster.scheduler_address


@pytest.mark.parametrize("dask_address", ["local", "address"], indirect=True)
def test_dask_gives_the_same_results_as_the_process_pool(pool_sweep, tmp_path, dask_address):
    out, _ = pool_sweep
    environ = dict(os.environ)
    res = CliRunner().invoke(main, ["sweep", "--grid", "generator.phi=0,0.5", "--seeds", "2", "--jobs", "2",
                                    "--dask", dask_address, "--no-plot", "--out", str(tmp_path / "dask")]
                             + TINY_ARGS)
    assert res.exit_code == 0, res.output
    assert "4 runs: 4 ok" in res.output
    assert without_wall_time(read_csv(tmp_path / "dask" / "results.csv")) == \
        without_wall_time(read_csv(out / "results.csv"))
    if dask_address == "local":
        assert dict(os.environ) == environ  # the cluster's variables do not leak into the caller


def test_a_lost_dask_worker_is_retried_once(tmp_path):
    pytest.importorskip("distributed")
    plan = tiny_plan("generator.phi=0,0.5")
    killed, spared = (r.run_id for r in plan.runs)
    report = run_sweep(plan, tmp_path / "sw", jobs=2, dask="local",
                       run_reporter=KillRuns([killed]))  # dies on its first attempt only
    rows = {r["run_id"]: r for r in read_csv(tmp_path / "sw" / "results.csv")}
    assert rows[killed]["status"] == "ok" and rows[spared]["status"] == "ok"
    assert report.n_ok == 2 and report.n_retried >= 1


# ---------------------------------------------------------------------------------------------
# hardening: orphaned workers, data-file identity, a different sweep in the same directory
# ---------------------------------------------------------------------------------------------
def _children(pid):
    """pids whose parent is ``pid`` (Linux /proc)."""
    out = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as fh:
                    fields = fh.read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == pid and fields[0] != "Z":
                out.append(int(entry))
    return out


def _alive(pid):
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


@pytest.mark.skipif(not os.path.isdir("/proc/self"), reason="needs Linux /proc")
def test_workers_exit_when_the_sweep_is_killed_and_the_rerun_completes(tmp_path):
    """kill -9 of `particlegan sweep --jobs 2`: no worker is alive 10 s later, and rerunning the
    sweep skips the runs that had finished and completes the others. (The long run must outlast
    the two short ones and the workers' start-up: 20000 steps of this tiny run take seconds.)"""
    import signal
    import time

    out = tmp_path / "sw"
    fixed = [a for item in TINY if not item.startswith("run.steps") for a in ("--set", item)]
    args = [sys.executable, "-m", "particlegan", "sweep", *fixed, "--grid", "run.steps=4,5,20000",
            "--jobs", "2", "--no-plot", "--out", str(out)]
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    workers = []
    while time.time() < deadline and proc.poll() is None:
        rows = read_csv(out / "results.csv") if (out / "results.csv").exists() else []
        workers = _children(proc.pid)
        if len(rows) >= 2 and len(workers) >= 2:
            break
        time.sleep(0.05)
    assert proc.poll() is None, "the sweep ended before it could be killed; make the long run longer"
    assert len(rows) == 2
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    time.sleep(10)
    assert [w for w in workers if _alive(w)] == []
    res = subprocess.run(args, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    assert "3 runs: 3 ok" in res.stdout and "2 already finished and skipped" in res.stdout


def test_changed_data_file_changes_the_run_ids_so_the_rerun_redoes_them(tmp_path):
    rng = np.random.default_rng(0)
    data = tmp_path / "target.npy"
    np.save(data, rng.normal(size=(64, 2)))
    base = ["target.kind=file", f"target.path={data}"]
    first = run_sweep(tiny_plan("generator.phi=0,0.5", extra=base), tmp_path / "sw", jobs=1, in_process=True)
    assert first.n_ok == 2
    np.save(data, rng.normal(size=(64, 2)) + 1.0)
    plan = tiny_plan("generator.phi=0,0.5", extra=base)
    assert {r.run_id for r in plan.runs}.isdisjoint(first.outcomes)
    assert plan.runs[0].cfg["target"]["path_sha256"] == __import__("hashlib").sha256(data.read_bytes()).hexdigest()
    again = run_sweep(plan, tmp_path / "sw2", jobs=1, in_process=True)
    assert again.n_skipped == 0 and again.n_ok == 2


def test_relative_data_paths_are_relative_to_the_config_file(tmp_path, monkeypatch):
    cfg_dir = tmp_path / "study"
    cfg_dir.mkdir()
    np.save(cfg_dir / "y.npy", np.random.default_rng(1).normal(size=(40, 2)))
    (cfg_dir / "c.toml").write_text('[target]\nkind = "file"\npath = "y.npy"\n')
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    plan = plan_sweep(load_base(cfg_dir / "c.toml", TINY), [], [0])
    assert plan.runs[0].cfg["target"]["path"] == str(cfg_dir / "y.npy")
    from particlegan.store.config import config_from_sources

    assert config_from_sources(cfg_dir / "c.toml", TINY) == plan.runs[0].cfg


def test_a_different_sweep_in_the_same_directory_is_refused_or_replaced(tmp_path):
    out = tmp_path / "sw"
    run_sweep(tiny_plan("generator.phi=0,0.5"), out, jobs=1, in_process=True)
    other = tiny_plan("generator.phi=0,0.9")
    with pytest.raises(DataError, match=r"holds a different sweep \(2 runs, 1 of them in this one of 2\).*--replace"):
        run_sweep(other, out, jobs=1, in_process=True)
    assert json.loads((out / "sweep.json").read_text())["grids"][0]["values"] == [0, 0.5]
    rep = run_sweep(other, out, jobs=1, in_process=True, replace=True)
    assert rep.n_skipped == 1 and rep.n_ok == 2
    listed = {r["run_id"] for r in read_csv(out / "results.csv")}
    assert listed == {d.name for d in (out / "runs").iterdir()} == {r.run_id for r in other.runs}
    res = CliRunner().invoke(main, ["sweep", *TINY_ARGS, "--grid", "generator.phi=0.1", "--out", str(out),
                                    "--in-process", "--no-plot"])
    assert res.exit_code == 2 and "different sweep" in res.output and res.output.count("\n") == 1


def test_dask_cluster_of_separate_processes_with_a_relative_out(tmp_path):
    """A real `dask scheduler` and `dask worker` started as processes in another directory: the
    sweep with a relative --out writes its runs where the client is (paths are made absolute
    before work is sent), and a rerun skips them all."""
    pytest.importorskip("distributed")
    import shutil
    import time

    if shutil.which("dask") is None:
        pytest.skip("no dask command line")
    cluster_dir, client_dir = tmp_path / "cluster", tmp_path / "client"
    cluster_dir.mkdir()
    client_dir.mkdir()
    sched_file = cluster_dir / "scheduler.json"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    procs = [subprocess.Popen(["dask", "scheduler", "--scheduler-file", str(sched_file), "--port", "0",
                               "--host", "127.0.0.1", "--dashboard-address", ":0", "--no-dashboard"],
                              cwd=cluster_dir, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)]
    try:
        deadline = time.time() + 60
        while not sched_file.exists() and time.time() < deadline:
            time.sleep(0.1)
        address = json.loads(sched_file.read_text())["address"]
        procs.append(subprocess.Popen(["dask", "worker", "--scheduler-file", str(sched_file), "--nworkers", "1",
                                       "--nthreads", "1", "--no-dashboard", "--host", "127.0.0.1"],
                                      cwd=cluster_dir, env=env, stdout=subprocess.DEVNULL,
                                      stderr=subprocess.DEVNULL))
        args = [sys.executable, "-m", "particlegan", "sweep", *TINY_ARGS, "--grid", "generator.phi=0,0.5",
                "--dask", address, "--no-plot", "--out", "sw"]
        first = subprocess.run(args, cwd=client_dir, capture_output=True, text=True, timeout=300)
        assert first.returncode == 0, first.stderr
        assert "2 runs: 2 ok" in first.stdout
        assert len(list((client_dir / "sw" / "runs").iterdir())) == 2 and not (cluster_dir / "sw").exists()
        again = subprocess.run(args, cwd=client_dir, capture_output=True, text=True, timeout=300)
        assert again.returncode == 0 and "2 already finished and skipped" in again.stdout
        assert not list((client_dir / "sw").glob(".dask_probe_*"))
    finally:
        for p in reversed(procs):
            p.terminate()
        for p in procs:
            try:
                p.wait(timeout=20)
            except subprocess.TimeoutExpired:
                p.kill()


def test_probe_file_tells_whether_a_worker_sees_the_directory(tmp_path):
    from particlegan.sweeps.sweep import probe_file

    (tmp_path / "p").write_text("abc")
    assert probe_file(str(tmp_path / "p"), "abc")
    assert not probe_file(str(tmp_path / "p"), "xyz") and not probe_file(str(tmp_path / "none"), "abc")


# ---------------------------------------------------------------------------------------------
# batched ensembles (--batch)
# ---------------------------------------------------------------------------------------------
def result_bytes(out):
    return {r["run_id"]: (out / "runs" / r["run_id"] / "result.npz").read_bytes()
            for r in read_csv(out / "results.csv")}


def test_batched_sweep_stores_every_run_bitwise_as_alone(pool_sweep, tmp_path):
    # 4 runs in groups of up to 3 on 2 workers: the groups are capped at ceil(4 / 2) = 2 members
    out, _ = pool_sweep
    batched = tmp_path / "batched"
    res = CliRunner().invoke(main, ["sweep", "--grid", "generator.phi=0,0.5", "--seeds", "2", "--jobs", "2",
                                    "--batch", "3", "--no-plot", "--out", str(batched)] + TINY_ARGS)
    assert res.exit_code == 0, res.output
    assert "4 runs: 4 ok, 0 diverged, 0 failed" in res.output
    assert without_wall_time(read_csv(batched / "results.csv")) == without_wall_time(read_csv(out / "results.csv"))
    assert result_bytes(batched) == result_bytes(out)
    for row in read_csv(batched / "results.csv"):
        run_dir = batched / "runs" / row["run_id"]
        assert sorted(os.listdir(run_dir)) == RUN_FILES
        assert json.loads((run_dir / "meta.json").read_text())["ensemble_size"] == 2
        assert (run_dir / "config.json").read_bytes() == (out / "runs" / row["run_id"] / "config.json").read_bytes()


@pytest.mark.parametrize("value", ["0", "-2", "x", "2.5"])
def test_bad_batch_is_one_line_exit_2(tmp_path, value):
    res = CliRunner().invoke(main, ["sweep", "--grid", "generator.phi=0,0.5", "--batch", value, "--in-process",
                                    "--no-plot", "--out", str(tmp_path / "sw")] + TINY_ARGS)
    assert res.exit_code == 2 and "--batch" in res.output and value in res.output
    assert "Traceback" not in res.output and not (tmp_path / "sw").exists()


def test_parse_batch():
    from particlegan.sweeps.sweep import parse_batch

    assert parse_batch("auto") == "auto" and parse_batch("7") == 7 and parse_batch(1) == 1
    for bad in (0, "0", True, "1.0", None):
        with pytest.raises(ConfigError, match="--batch"):
            parse_batch(bad)


def test_groups_share_array_shapes_and_checkpointed_runs_stay_single(tmp_path):
    from particlegan.sweeps.sweep import _Task, group_tasks

    plan = tiny_plan("generator.phi=0,0.5", "particles.n=16,24", seeds=[0, 1, 2])
    tasks = [_Task(r) for r in plan.runs]
    (tmp_path / plan.runs[0].run_id).mkdir()
    (tmp_path / plan.runs[0].run_id / "checkpoint.npz").write_bytes(b"")
    grouped = group_tasks(tasks, 6, 1, tmp_path)  # groups of 5 (n = 16, one checkpointed) and 6
    assert sorted(r.run_id for t in grouped for r in (t.group or [t.run])) == sorted(r.run_id for r in plan.runs)
    singles = [t for t in grouped if t.group is None]
    assert [t.run.run_id for t in singles] == [plan.runs[0].run_id]
    for t in grouped:
        if t.group is not None:
            assert len(t.group) in (5, 6) and t.run is t.group[0]
            assert len({r.cfg["particles"]["n"] for r in t.group}) == 1  # one shape per group
    # two workers: no group larger than half its runs, so that neither worker idles
    assert max(len(t.group or [t.run]) for t in group_tasks(tasks, 64, 2, tmp_path)) == 3
    assert max(len(t.group or [t.run]) for t in group_tasks(tasks, 2, 1, tmp_path)) == 2
    assert group_tasks(tasks, 1, 1, tmp_path) == tasks


def test_auto_group_size_fits_the_features_in_cache():
    from particlegan.sweeps.sweep import ENSEMBLE_CACHE_BYTES, auto_group_size

    cfg = resolve_config(overrides=["particles.n=128", "critic.features=512"])
    assert auto_group_size(cfg) == ENSEMBLE_CACHE_BYTES // (128 * 512 * 8) == 8
    cfg32 = resolve_config(overrides=["particles.n=128", "critic.features=512", "run.dtype=float32"])
    assert auto_group_size(cfg32) == 16
    small = resolve_config(overrides=["particles.n=16", "critic.features=32"])
    assert auto_group_size(small) == 64  # capped


def test_a_failing_ensemble_reruns_its_members_alone(tmp_path, monkeypatch):
    import particlegan.engine.simulate as simulate_mod

    def broken(*args, **kwargs):
        raise RuntimeError("ensemble broke")

    monkeypatch.setattr(simulate_mod, "run_ensemble_to_dirs", broken)
    plan = tiny_plan("generator.phi=0,0.5", seeds=[0, 1])
    report = run_sweep(plan, tmp_path / "sw", in_process=True, batch=4)
    assert report.n_ok == 4 and report.n_failed == 0
    for row in read_csv(tmp_path / "sw" / "results.csv"):
        assert row["status"] == "ok"
        assert "ensemble_size" not in json.loads((tmp_path / "sw" / "runs" / row["run_id"] / "meta.json").read_text())
    clean = run_sweep(plan, tmp_path / "clean", in_process=True)
    assert clean.n_ok == 4 and result_bytes(tmp_path / "sw") == result_bytes(tmp_path / "clean")


def test_a_group_task_that_raises_is_retried_member_by_member(tmp_path, monkeypatch):
    import particlegan.sweeps.sweep as sweep_mod

    calls = []

    def broken(cfgs, run_dirs, figures, in_worker):
        calls.append(len(cfgs))
        raise MemoryError("no room for the group")

    monkeypatch.setattr(sweep_mod, "execute_group", broken)
    plan = tiny_plan("generator.phi=0,0.5", seeds=[0])
    report = run_sweep(plan, tmp_path / "sw", in_process=True, batch=2)
    assert calls == [2] and report.n_ok == 2 and report.n_retried == 2
    assert [r["status"] for r in read_csv(tmp_path / "sw" / "results.csv")] == ["ok", "ok"]


def test_a_diverging_member_is_recorded_while_its_group_finishes(tmp_path):
    out = tmp_path / "sw"
    with np.errstate(over="ignore", invalid="ignore"):
        res = CliRunner().invoke(main, ["sweep", "--grid", "dynamics.eta_d=0.01,1e6", "--batch", "2",
                                        "--in-process", "--no-plot", "--out", str(out)] + TINY_ARGS)
    assert res.exit_code == 0, res.output
    assert "2 runs: 1 ok, 1 diverged, 0 failed" in res.output
    rows = read_csv(out / "results.csv")
    assert [r["status"] for r in rows] == ["ok", "diverged"] and int(rows[0]["steps"]) == 20
    assert int(rows[1]["steps"]) < 20 and math.isfinite(float(rows[1]["collapse"]))
    assert json.loads((out / "runs" / rows[1]["run_id"] / "meta.json").read_text())["ensemble_size"] == 2
