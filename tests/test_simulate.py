import json
import os
import subprocess
import sys

import numpy as np
import pytest

from particlegan.store.config import resolve_config
from particlegan.engine.simulate import run_to_dir, simulate

TINY = ["particles.n=24", "run.steps=30", "run.record_every=5", "target.n_samples=200",
        "critic.features=64", "dynamics.critic_steps_startup=10", "observables.mmd_samples=100"]


def tiny(*extra):
    return resolve_config(overrides=TINY + list(extra))


def test_run_directory_contents(tmp_path):
    from particlegan.plots.plotting import write_run_figures

    cfg = tiny()
    summary = run_to_dir(cfg, tmp_path / "r", figures=write_run_figures)
    files = sorted(os.listdir(tmp_path / "r"))
    assert files == ["config.json", "meta.json", "particles.png", "result.npz", "summary.json"]
    for key in ("collapse", "modes_covered", "hq_fraction", "mmd2", "status", "steps"):
        assert key in summary
    assert summary["status"] == "ok" and summary["steps"] == 30
    stored = json.loads((tmp_path / "r" / "config.json").read_text())
    assert stored["config"] == cfg                       # full resolved config, defaults included
    meta = json.loads((tmp_path / "r" / "meta.json").read_text())
    assert meta["seed"] == 0 and {"numpy", "numba", "particlegan"} <= set(meta["versions"])
    with np.load(tmp_path / "r" / "result.npz") as z:
        np.testing.assert_array_equal(z["step"], np.arange(0, 31, 5))
        assert z["snapshots"].shape[1:] == (24, 2)
        assert z["snapshot_steps"][0] == 0 and z["snapshot_steps"][-1] == 30
    assert (tmp_path / "r" / "particles.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # the library draws only when asked: the same run without a figures callback
    run_to_dir(cfg, tmp_path / "bare")
    assert "particles.png" not in os.listdir(tmp_path / "bare")
    with np.load(tmp_path / "r" / "result.npz") as a, np.load(tmp_path / "bare" / "result.npz") as b:
        assert all(np.array_equal(a[k], b[k]) for k in a.files)


@pytest.mark.parametrize("extra", [[], ["critic.type=relu_features", "loss.kind=alpha", "loss.alpha_d=0.3"],
                                   ["critic.type=kernel", "loss.penalty=none", "critic.memory=3",
                                    "critic.ridge=0.5"],
                                   ["loss.penalty=interpolates", "dynamics.update=simultaneous"],
                                   ["generator.kernel=ntk_relu", "loss.kind=nonsaturating"]])
def test_same_seed_gives_bitwise_identical_results(tmp_path, extra):
    cfg = tiny(*extra)
    run_to_dir(cfg, tmp_path / "a")
    run_to_dir(cfg, tmp_path / "b")
    assert (tmp_path / "a" / "result.npz").read_bytes() == (tmp_path / "b" / "result.npz").read_bytes()
    run_to_dir(tiny(*extra, "run.seed=1"), tmp_path / "c")
    assert (tmp_path / "a" / "result.npz").read_bytes() != (tmp_path / "c" / "result.npz").read_bytes()


@pytest.mark.parametrize("bound, reason", [(1e6, "runaway"), (0.0, "non-finite")])
def test_divergence_stops_with_last_good_state(bound, reason):
    """Without the runaway bound the particles grow until an observable (radius of gyration,
    centre-of-mass error) or the state overflows: either stops the run as "non-finite ..."."""
    res = simulate(tiny("dynamics.eta_d=1e6", f"run.divergence_bound={bound}"))
    assert res.status == "diverged" and res.diverged_reason.startswith(reason)
    assert res.diverged_step is not None and res.steps == res.diverged_step
    assert np.all(np.isfinite(res.final_state.x))
    if bound:  # the kept state is inside the bound: its observables are finite
        assert np.max(np.abs(res.final_state.x)) <= bound * (1 + np.max(np.abs(res.model.y)))
        assert all(np.all(np.isfinite(v)) for v in res.series.values())
    summary = res.summary()
    assert summary["status"] == "diverged" and summary["diverged_reason"] == res.diverged_reason
    json.dumps(summary, allow_nan=False)  # valid JSON: non-finite values are null + named
    for key, kind in summary.get("non_finite", {}).items():
        assert summary[key] is None and kind in ("nan", "inf", "-inf")


def test_a_converging_run_is_not_flagged_as_runaway():
    res = simulate(tiny())
    assert res.status == "ok" and res.diverged_reason is None and "diverged_reason" not in res.summary()


# decays at steps 6, 12, 18, 24 of TINY (p > 0.01 in every test); every = 3 does not divide the
# checkpoint step 20, so the resumed run needs the stored lr_scale, schedule memory and KID stream
LEARNED = ["critic.type=learned_features", "loss.penalty=none", "critic.width=16", "critic.beta=1.5",
           "critic.optimizer=adam", "dynamics.eta_d=1e-3"]
# dropout masks and the USD penalty convention: the masks come from the checkpointed noise stream
DROPOUT = ["critic.type=mlp", "critic.widths=[8, 16]", "critic.dropout=[0.3, 0.1]", "critic.output_bias=false",
           "critic.optimizer=adam", "critic.amsgrad=true", "critic.adam_reset=true", "loss.penalty_form=mean_grad",
           "dynamics.eta_d=1e-3"]
KID_SCHEDULE = ["schedule.kind=kid", "schedule.every=3", "schedule.window=2", "schedule.patience=1",
                "schedule.p_threshold=0.01", "observables.kid=true"]


@pytest.mark.parametrize("extra", [[], ["critic.type=kernel", "loss.penalty=none", "critic.memory=2"],
                                   ["loss.penalty=interpolates"], KID_SCHEDULE,
                                   KID_SCHEDULE + ["critic.type=kernel", "loss.penalty=none", "critic.memory=2",
                                                   "critic.ridge=0.5"],
                                   KID_SCHEDULE + ["model.type=neural", "generator.width=32"],
                                   LEARNED, LEARNED + ["model.type=neural", "generator.width=32"],
                                   DROPOUT, DROPOUT + ["model.type=neural", "generator.width=32"]])
def test_checkpoint_resume_is_bitwise_identical(tmp_path, extra):
    from particlegan.engine.checkpoint import load_checkpoint
    from particlegan.store.config import config_hash

    cfg = tiny("run.checkpoint_every=10", *extra)
    run_to_dir(cfg, tmp_path / "full")
    assert not (tmp_path / "full" / "checkpoint.npz").exists()    # removed when complete
    # simulate a kill after the step-20 checkpoint: run a truncated copy that leaves its checkpoint
    part = tmp_path / "part"
    part.mkdir()
    import shutil

    from particlegan.engine.simulate import simulate as sim

    sim(cfg, checkpoint_path=part / "checkpoint.npz")               # writes checkpoints at 10, 20
    assert load_checkpoint(part / "checkpoint.npz", config_hash(cfg))["step"] == 20
    shutil.copy(tmp_path / "full" / "config.json", part / "config.json")
    from particlegan.engine.simulate import resume_run

    resume_run(part)
    assert (part / "result.npz").read_bytes() == (tmp_path / "full" / "result.npz").read_bytes()
    if "schedule.kind=kid" in extra:  # the schedule really acted before and after the checkpoint
        with np.load(tmp_path / "full" / "result.npz") as z:
            scale, step = z["lr_scale"], z["step"]
            assert "kid" in z.files and np.all(np.isfinite(z["kid"]))
        assert scale[step < 20].min() < 1.0 and scale[step > 20].min() < scale[step <= 20].min()


def test_sigkill_then_resume_matches_uninterrupted_run(sigkill_resume):
    """Kill a CLI particle run after its first checkpoint; `run --resume` reproduces the
    uninterrupted result.npz bitwise (shared body: conftest.sigkill_resume)."""
    sigkill_resume(TINY[:-1] + ["run.steps=400", "run.checkpoint_every=20", "particles.n=64"])


@pytest.mark.trajectory
def test_physics_sanity_default_ring_coverage_vs_collapse():
    """Default config (ring, N = 256, universal kernel): phi = 0 covers all 8 modes with C ~ 0;
    phi = 0.99 (same everything else) collapses: C near log 8 and most modes empty.

    Margins measured on seeds 0..3 with generic (SSE) numpy/BLAS code: phi = 0 gives 8 modes,
    C <= 0.001, hq 0.86-0.89; phi = 0.99 gives C 1.42-2.08 and 0-2 modes covered."""
    free = simulate(resolve_config()).summary()
    assert free["status"] == "ok"
    assert free["modes_covered"] == 8 and free["collapse"] < 0.05 and free["hq_fraction"] > 0.7
    locked = simulate(resolve_config(overrides=["generator.phi=0.99"])).summary()
    assert locked["status"] == "ok"
    assert locked["collapse"] > 1.0 and locked["modes_covered"] <= 3


@pytest.mark.parametrize("extra", [[], ["critic.type=kernel", "loss.penalty=none"],
                                   ["generator.kernel=ntk_relu", "generator.dense_max=1"]])
def test_numpy_and_cpu_backends_give_the_same_run(extra):
    """A whole short run on the numba cpu backend matches the numpy reference (float64):
    observables agree to 1e-8 relative (summation order differs, nothing else)."""
    a = simulate(tiny(*extra))
    b = simulate(tiny(*extra, "run.backend=cpu"))
    np.testing.assert_allclose(b.final_state.x, a.final_state.x, rtol=1e-8, atol=1e-10)
    for k in ("collapse", "mmd2", "critic_grad_norm", "radius_gyration"):
        np.testing.assert_allclose(b.series[k], a.series[k], rtol=1e-8, atol=1e-10)


def test_cpu_backend_is_bitwise_identical_across_thread_counts(tmp_path):
    """Same config + seed + backend: identical result.npz with 1 or 2 numba threads."""
    args = [a for o in TINY + ["run.backend=cpu"] for a in ("--set", o)]
    blobs = []
    for threads in ("1", "2"):
        env = {**os.environ, "NUMBA_NUM_THREADS": threads}
        out = tmp_path / f"t{threads}"
        res = subprocess.run([sys.executable, "-m", "particlegan", "run", *args, "--out", str(out), "--no-plot"],
                             capture_output=True, text=True, timeout=300, env=env)
        assert res.returncode == 0, res.stderr
        blobs.append((out / "result.npz").read_bytes())
    assert blobs[0] == blobs[1]


@pytest.mark.parametrize("bad", ["object", "wrong_columns", "empty"])
def test_bad_data_file_leaves_no_partial_run_directory(tmp_path, bad):
    from click.testing import CliRunner

    from particlegan.cli import main

    arrays = {"object": np.array([{"a": 1}], dtype=object), "wrong_columns": np.zeros((5, 3)),
              "empty": np.zeros((0, 2))}
    path = tmp_path / f"{bad}.npy"
    np.save(path, arrays[bad], allow_pickle=True)
    (tmp_path / "keep").mkdir()
    result = CliRunner().invoke(main, ["run", "--out", str(tmp_path / "keep" / "new" / "run"), "--set",
                                       "target.kind=file", "--set", f"target.path={path}", "--no-plot"])
    assert result.exit_code == 2 and result.output.startswith("error:") and "Traceback" not in result.output
    assert str(path.name) in result.output
    assert list((tmp_path / "keep").iterdir()) == []  # the folders made for the run are gone too


def test_kid_observable_is_recorded_only_when_on_and_changes_nothing_else(tmp_path):
    off = run_to_dir(tiny(), tmp_path / "off")
    on = run_to_dir(tiny("observables.kid=true", "observables.kid_subsets=3"), tmp_path / "on")
    assert "kid" not in off and "lr_scale" not in off
    assert np.isfinite(on["kid"]) and on["kid_std"] >= 0 and "lr_scale" not in on
    with np.load(tmp_path / "off" / "result.npz") as a, np.load(tmp_path / "on" / "result.npz") as b:
        assert set(b.files) - set(a.files) == {"kid", "kid_std"}
        for k in a.files:                     # the KID subsets come after everything else drawn
            np.testing.assert_array_equal(a[k], b[k])
        assert len(b["kid"]) == len(b["step"]) and b["kid"][-1] == on["kid"]
        # first row, by hand: the observables stream after the MMD reference subsample, then
        # KID of the initial particles (N = 24 < kid_subset_size: subsets of 24 rows)
        from particlegan.engine.dynamics import seed_streams
        from particlegan.engine.observables import kid_observable

        rng = seed_streams(0)["observables"]
        rng.choice(200, 100, replace=False)          # make_mmd_reference: mmd_samples of n_samples
        first = kid_observable(b["snapshots"][0], b["target_samples"], 3, 200, rng)
        assert (first["kid"], first["kid_std"]) == (b["kid"][0], b["kid_std"][0])


def test_kid_schedule_decays_when_the_particles_cannot_improve():
    """eta_G ~ 0: the particles stay put, every three-sample test has p ~ 1/2 > 0.1 and fails.
    every = 1, window = 2, patience = 2: the memory fills at steps 0, 1; steps 2, 3 fail ->
    decay at 3 (memory keeps 2 entries, so testing goes on), then a decay every 2 steps."""
    res = simulate(tiny("dynamics.eta_g=1e-9", "schedule.floor=0", "run.record_every=1",
                        "schedule.kind=kid", "schedule.every=1", "schedule.window=2", "schedule.patience=2"))
    step, scale = res.series["step"], res.series["lr_scale"]
    expected = 0.5 ** np.maximum(0, (step - 1) // 2)
    np.testing.assert_array_equal(scale[step < 30], expected[step < 30])
    assert res.summary()["lr_scale"] == scale[-1] < 1e-4


def test_kid_schedule_with_improving_tests_keeps_the_rates(monkeypatch):
    """Scripted p = 0 (always a significant improvement): no decay, and the run equals the
    schedule-free run bitwise in every common series; a floor stops the decay otherwise."""
    from particlegan.maths import mmd

    class Always:
        def __init__(self, p):
            self.p = p

    monkeypatch.setattr(mmd, "three_sample_test_from_sums", lambda a, b: Always(0.0))
    sched = ["schedule.kind=kid", "schedule.every=1", "schedule.window=2", "run.record_every=1"]
    on, off = simulate(tiny(*sched)), simulate(tiny("run.record_every=1"))
    assert np.all(on.series["lr_scale"] == 1.0)
    for k, v in off.series.items():
        np.testing.assert_array_equal(on.series[k], v)
    monkeypatch.setattr(mmd, "three_sample_test_from_sums", lambda a, b: Always(0.9))
    floored = simulate(tiny(*sched, "schedule.patience=1", "schedule.floor=0.25"))
    assert floored.series["lr_scale"].min() == 0.25 and floored.series["lr_scale"][0] == 1.0


@pytest.mark.parametrize("extra", [[], ["critic.type=kernel", "loss.penalty=none", "critic.memory=3",
                                        "critic.ridge=0.5"],
                                   ["critic.optimizer=adam", "dynamics.eta_d=1e-3"],
                                   ["model.type=neural", "generator.width=32"],
                                   ["model.type=neural", "generator.width=32", "generator.optimizer=adam",
                                    "critic.optimizer=momentum"], LEARNED])
def test_lr_scale_scales_eta_g_and_eta_d_in_both_engines(extra):
    """A state with lr_scale = 1/2 steps exactly like the config with eta_G and eta_D halved."""
    import dataclasses

    from particlegan.engine import dynamics as engine

    base = tiny("dynamics.critic_steps_startup=0", *extra)
    half = dict(base, dynamics=dict(base["dynamics"], eta_g=base["dynamics"]["eta_g"] / 2,
                                    eta_d=base["dynamics"]["eta_d"] / 2))
    m1, s1 = engine.build_model(base, engine.seed_streams(0))
    m2, s2 = engine.build_model(half, engine.seed_streams(0))
    # same start (the start-up critic update of a fixed-kernel critic already reads eta_D)
    s1 = dataclasses.replace(s1, lr_scale=0.5)
    s2 = dataclasses.replace(s2, kernel_state=s1.kernel_state)
    for _ in range(3):
        (s1, g1), (s2, g2) = engine.outer_step(m1, s1), engine.outer_step(m2, s2)
        np.testing.assert_array_equal(s1.x, s2.x)
        np.testing.assert_array_equal(g1, g2)
        if s1.w is not None:
            np.testing.assert_array_equal(s1.w, s2.w)
    if s1.kernel_state is not None:
        np.testing.assert_array_equal(s1.kernel_state.coefs, s2.kernel_state.coefs)
    # the scale is not sticky: back at 1, the step is the configured one again
    m3, s3 = engine.build_model(base, engine.seed_streams(0))
    s3 = dataclasses.replace(s3, **{k: getattr(s1, k) for k in ("x", "w", "critic_opt", "kernel_state", "gen", "noise")})
    np.testing.assert_array_equal(engine.outer_step(m1, dataclasses.replace(s1, lr_scale=1.0))[0].x,
                                  engine.outer_step(m3, s3)[0].x)


def test_optional_series_in_sweep_table_and_run_plot(tmp_path):
    """results.csv gets kid/kid_std/lr_scale columns only when some run records them (empty cells
    for the runs that do not); `plot run` adds KID and learning-rate panels when present."""
    import csv

    from particlegan.sweeps.sweep import load_base, parse_grid, plan_sweep, run_sweep

    plan = plan_sweep(load_base(None, TINY), [parse_grid("observables.kid=false,true")], [0])
    run_sweep(plan, tmp_path / "s", in_process=True)
    with open(tmp_path / "s" / "results.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert list(rows[0])[list(rows[0]).index("com_error") + 1:] == ["kid", "kid_std", "steps", "status",
                                                                    "wall_time_s", "error"]
    assert rows[0]["kid"] == "" and float(rows[1]["kid"]) == pytest.approx(
        json.loads((tmp_path / "s" / "runs" / rows[1]["run_id"] / "summary.json").read_text())["kid"])
    import matplotlib.pyplot as plt

    from particlegan.sweeps.analysis import load_run
    from particlegan.plots.plotting import plot_run_overview

    run_to_dir(tiny("observables.kid=true", "schedule.kind=kid", "schedule.every=2", "schedule.window=2"),
               tmp_path / "r")
    titles = [ax.get_title() for ax in plot_run_overview(load_run(tmp_path / "r")).axes]
    assert "KID" in titles and any("learning-rate factor" in t for t in titles)
    plain = [ax.get_title() for ax in plot_run_overview(load_run(tmp_path / "s" / "runs" / rows[0]["run_id"])).axes]
    assert "KID" not in plain and not any("learning-rate" in t for t in plain)
    plt.close("all")


# ---- hardening: divergence keeps a finite critic, overwrites, resume edge cases, memory ------
def _cli(*args):
    from click.testing import CliRunner

    from particlegan.cli import main

    return CliRunner().invoke(main, [str(a) for a in args])


def test_start_up_divergence_keeps_the_last_finite_critic_and_valid_json(tmp_path):
    """eta_D = 1e12 blows the critic up during its start-up steps: the run stops at step 0 as
    diverged, result.npz holds the last finite critic weights, summary.json is standard JSON."""
    res = _cli("run", *[a for o in TINY for a in ("--set", o)], "--set", "dynamics.eta_d=1e12",
               "--set", "dynamics.critic_steps_startup=100", "--out", tmp_path / "r", "--no-plot")
    assert res.exit_code == 3 and "status diverged (non-finite)" in res.output
    with np.load(tmp_path / "r" / "result.npz") as z:
        assert np.all(np.isfinite(z["critic_weights"])) and np.any(z["critic_weights"] != 0)
        assert np.all(np.isfinite(z["final_particles"]))
    text = (tmp_path / "r" / "summary.json").read_text()
    summary = json.loads(text, parse_constant=lambda c: pytest.fail(f"bare {c} in summary.json"))
    assert summary["status"] == "diverged" and summary["steps"] == 0


def test_a_step_whose_critic_update_is_not_finite_is_discarded():
    """ascend_critic returns the parameters before the first non-finite update."""
    from particlegan.model.critics import ascend_critic
    from particlegan.model.optimizers import make_optimizer

    grads = iter([np.ones(3), np.ones(3), np.full(3, np.inf), np.ones(3)])
    sgd = make_optimizer("sgd", 0.5)
    w, finite, _ = ascend_critic(sgd, sgd.init(), np.zeros(3), 4, lambda w: next(grads))
    assert not finite and np.array_equal(w, np.ones(3))


def test_an_infinite_observable_marks_the_run(tmp_path):
    """Targets scaled to 1e200: the distances overflow, so the run is not 'ok'."""
    np.save(tmp_path / "big.npy", 1e200 * np.random.default_rng(0).normal(size=(50, 2)))
    res = _cli("run", "--set", "target.kind=file", "--set", f"target.path={tmp_path / 'big.npy'}",
               "--set", "run.steps=5", "--out", tmp_path / "r", "--no-plot")
    assert res.exit_code == 3 and "non-finite observable" in res.output
    summary = json.loads((tmp_path / "r" / "summary.json").read_text())
    assert summary["status"] == "diverged" and summary["diverged_reason"].startswith("non-finite observable")
    assert any(summary[k] is None for k in summary["non_finite"])


def test_out_onto_a_different_run_is_refused_unless_forced(tmp_path):
    sets = [a for o in TINY for a in ("--set", o)]
    out = tmp_path / "r"
    assert _cli("run", *sets, "--out", out).exit_code == 0
    assert (out / "particles.png").exists()
    assert _cli("run", *sets, "--out", out, "--no-plot").exit_code == 0  # the same run again: fine
    res = _cli("run", *sets, "--seed", 1, "--out", out, "--no-plot")
    assert res.exit_code == 2 and "already holds a different run" in res.output and "--force" in res.output
    assert res.output.count("\n") == 1
    res = _cli("run", *sets, "--seed", 1, "--out", out, "--no-plot", "--force")
    assert res.exit_code == 0
    assert json.loads((out / "config.json").read_text())["config"]["run"]["seed"] == 1
    assert not (out / "particles.png").exists()  # nothing of the old run is left beside the new one
    (out / "notes.txt").write_text("mine")
    res = _cli("run", *sets, "--out", out, "--no-plot", "--force")
    assert res.exit_code == 2 and "notes.txt" in res.output and (out / "notes.txt").exists()


def test_resume_refuses_a_run_without_checkpoints_and_cleans_temp_files(tmp_path):
    cfg = tiny()
    d = tmp_path / "r"
    d.mkdir()
    (d / "config.json").write_text(__import__("particlegan.store.config", fromlist=["x"]).canonical_json(cfg) + "\n")
    res = _cli("run", "--resume", d)
    assert res.exit_code == 2 and "no checkpoint to resume from (run.checkpoint_every = 0)" in res.output
    # with checkpoints configured, a run killed before its first one starts over; stale temp files go
    cfg = tiny("run.checkpoint_every=10")
    (d / "config.json").write_text(__import__("particlegan.store.config", fromlist=["x"]).canonical_json(cfg) + "\n")
    (d / ".checkpoint.npz.abc123.tmp").write_bytes(b"half")
    assert _cli("run", "--resume", d, "--no-plot").exit_code == 0
    assert not list(d.glob(".*.tmp")) and (d / "meta.json").exists()


@pytest.mark.parametrize("damage", ["shape", "nan", "step"])
def test_a_damaged_checkpoint_is_refused_in_one_line(tmp_path, damage):
    from particlegan.engine.checkpoint import _JSON_KEY
    from particlegan.store.config import canonical_json
    from particlegan.store.storage import atomic_save_npz

    cfg = tiny("run.checkpoint_every=10")
    d = tmp_path / "r"
    d.mkdir()
    simulate(cfg, checkpoint_path=d / "checkpoint.npz")
    (d / "config.json").write_text(canonical_json(cfg) + "\n")
    with np.load(d / "checkpoint.npz") as z:
        arrays = {k: z[k] for k in z.files}
    if damage == "shape":
        arrays["x"] = arrays["x"][:5]
    elif damage == "nan":
        arrays["x"] = np.full_like(arrays["x"], np.nan)
    else:
        scalars = json.loads(arrays[_JSON_KEY].tobytes().decode())
        scalars["step"] = 10 ** 6
        arrays[_JSON_KEY] = np.frombuffer(json.dumps(scalars).encode(), dtype=np.uint8)
    atomic_save_npz(d / "checkpoint.npz", arrays)
    res = _cli("run", "--resume", d)
    assert res.exit_code == 2 and "checkpoint" in res.output and "unusable" in res.output
    assert res.output.count("\n") == 1 and "Traceback" not in res.output


def test_a_memory_error_is_a_one_line_error_leaving_no_run_directory(tmp_path, monkeypatch):
    import particlegan.engine.dynamics as dyn

    def boom(*a, **k):
        raise MemoryError

    monkeypatch.setattr(dyn, "build_model", boom)
    res = _cli("run", *[a for o in TINY for a in ("--set", o)], "--out", tmp_path / "r", "--no-plot")
    assert res.exit_code == 2 and res.output.startswith("error: out of memory") and res.output.count("\n") == 1
    assert not (tmp_path / "r").exists()


def test_meta_json_records_provenance(tmp_path):
    """meta.json: git commit and modified flag of this checkout, host, CPU, threads, command
    line, start time (compared with git, socket and the command actually run)."""
    import socket

    from particlegan.store.storage import COMMAND_ENV

    out = tmp_path / "r"
    env = {**os.environ, "NUMBA_NUM_THREADS": "1"}
    env.pop(COMMAND_ENV, None)
    args = [sys.executable, "-m", "particlegan", "run", "--set", "run.steps=3", *[a for o in TINY[:1] for a in ("--set", o)],
            "--no-plot", "--out", str(out)]
    subprocess.run(args, check=True, capture_output=True, env=env, timeout=120)
    meta = json.loads((out / "meta.json").read_text())
    assert meta["command"].startswith("particlegan run --set run.steps=3") and meta["command"].endswith(str(out))
    assert meta["host"] == socket.gethostname() and meta["cpu"] and meta["cpu_count"] == os.cpu_count()
    assert meta["threads"]["NUMBA_NUM_THREADS"] == "1" and meta["threads"]["numba_threads"] == 1
    assert meta["started_at"] <= meta["finished_at"]
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    head = subprocess.run(["git", "-C", root, "rev-parse", "HEAD"], capture_output=True, text=True)
    import particlegan

    if head.returncode == 0 and particlegan.__file__.startswith(root):  # imported from this checkout
        assert meta["git"]["commit"] == head.stdout.strip()
        dirty = subprocess.run(["git", "-C", root, "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True).stdout.strip()
        assert meta["git"]["modified"] == bool(dirty)


def test_images_against_an_mlp_critic_record_cosine_observables_and_draw_image_grids(tmp_path):
    # a miniature of the paper's MNIST setting: 4 x 4 "images" from an IDX file, MLP critic
    import struct

    from particlegan.plots.plotting import write_run_figures
    from particlegan.engine.simulate import run_to_dir

    imgs = np.random.default_rng(0).integers(0, 256, size=(12, 4, 4)).astype(np.uint8)
    idx = tmp_path / "imgs-idx3-ubyte"
    idx.write_bytes(bytes([0, 0, 8, 3]) + b"".join(struct.pack(">I", n) for n in imgs.shape) + imgs.tobytes())
    cfg = resolve_config(overrides=["target.kind=idx", f"target.path={idx}", "target.dim=16", "target.n_samples=10",
                                    'target.normalize="mnist"', "particles.n=10", "critic.type=mlp",
                                    "critic.widths=[8, 8]", "run.steps=5", "observables.cosine=true",
                                    "observables.mmd_samples=10", "dynamics.critic_steps_startup=2"])
    run_to_dir(cfg, tmp_path / "r", figures=write_run_figures)
    summary = json.loads((tmp_path / "r" / "summary.json").read_text())
    assert 0 <= summary["collapse_cos"] <= np.log(10) + 1e-9 and 1 <= summary["targets_hit"] <= 10
    with np.load(tmp_path / "r" / "result.npz") as res:
        assert len(res["collapse_cos"]) == len(res["step"])
    from matplotlib.image import imread
    img = imread(tmp_path / "r" / "particles.png")
    assert img.shape[1] > 2 * img.shape[0]  # two rows of ten images, not a scatter panel
