"""Run a simulation and store it: the loop, recording, snapshots and the run directory.

A run directory holds::

    config.json     full resolved config (defaults included): rerun with `particlegan run config.json`
    result.npz      observable time series (key per observable, plus `step`), particle snapshots
                    (`snapshots` (S, N, d), `snapshot_steps` (S,)), target sample, final particles
    summary.json    final observables + status ("ok" | "diverged") + steps
    meta.json       versions, seed, backend, wall time, status, run id
    particles.png   target and particles at several times

Every file is written atomically; result.npz is bitwise reproducible (same config, seed, backend).
"""
from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from . import dynamics as dyn
from .checkpoint import load_checkpoint, save_checkpoint
from .config import canonical_json, config_hash
from .observables import SERIES_KEYS, make_mmd_reference, measure
from .progress import Reporter, null_reporter
from .storage import atomic_save_npz, atomic_write_bytes, atomic_write_json, ensure_dir, versions

SUMMARY_KEYS = ("collapse", "modes_covered", "hq_fraction", "mmd2", "radius_gyration",
                "critic_grad_norm", "com_error")


@dataclass
class SimResult:
    """Outcome of :func:`simulate`.

    series : observable name -> (R,) array, plus "step" (R,) int array.
    snapshots : (S, N, d) particle positions at ``snapshot_steps``.
    status : "ok" or "diverged";  diverged_step : first step whose update was non-finite or ran
        away (max |x_i| above ``run.divergence_bound`` (1 + max |y|));  diverged_reason : which.
    final_state : last finite :class:`particlegan.dynamics.State`.
    """

    series: dict[str, np.ndarray]
    snapshots: np.ndarray
    snapshot_steps: np.ndarray
    status: str
    steps: int
    final_state: dyn.State
    model: dyn.Model
    diverged_step: int | None = None
    diverged_reason: str | None = None
    wall_time: float = 0.0
    extra: dict = field(default_factory=dict)

    def summary(self) -> dict:
        """Final observables (last recorded values), status and number of steps taken."""
        out = {k: float(self.series[k][-1]) for k in SUMMARY_KEYS}
        out["status"] = self.status
        out["steps"] = int(self.steps)
        if self.diverged_step is not None:
            out["diverged_step"] = int(self.diverged_step)
            out["diverged_reason"] = self.diverged_reason
        return out


def snapshot_schedule(steps: int, n_snapshots: int) -> np.ndarray:
    """Evenly spaced snapshot steps in [0, steps], unique and sorted (int64)."""
    return np.unique(np.round(np.linspace(0, steps, n_snapshots)).astype(np.int64))


def simulate(cfg: dict, reporter: Reporter | None = None, checkpoint_path: str | Path | None = None,
             resume: bool = False) -> SimResult:
    """Run the particle model described by the resolved config ``cfg``.

    Stops early with status "diverged" when an update produces NaN/inf in the particles or the
    critic, or when the particles run away (max |x_i| > run.divergence_bound (1 + max |y|));
    the last good state is kept (and recorded as the final row).

    With ``checkpoint_path`` and ``run.checkpoint_every`` > 0 a checkpoint is written atomically
    every that many steps; ``resume=True`` continues from it. A resumed run produces exactly the
    arrays of an uninterrupted one.
    """
    reporter = reporter or null_reporter()
    t0 = time.perf_counter()
    streams = dyn.seed_streams(cfg["run"]["seed"])
    engine = simulation_engine(cfg)
    model, state = engine.build_model(cfg, streams)
    ocfg = cfg["observables"]
    mmd_ref = make_mmd_reference(model.y, ocfg["mmd_sigma"], ocfg["mmd_samples"],
                                 streams["observables"], model.backend)
    target_mean = model.target.samples.mean(axis=0)
    steps, every = cfg["run"]["steps"], cfg["run"]["record_every"]
    ckpt_every = cfg["run"]["checkpoint_every"] if checkpoint_path is not None else 0
    run_id = config_hash(cfg)
    snap_steps = snapshot_schedule(steps, cfg["run"]["snapshots"])
    series: dict[str, list] = {k: [] for k in ("step", *SERIES_KEYS)}
    snapshots, snapshot_taken = [], []
    if resume:
        ck = load_checkpoint(checkpoint_path, run_id)
        state = restore_state(model, state, ck)
        series.update(ck["series"])
        snapshots, snapshot_taken = ck["snapshots"], ck["snapshot_taken"]

    def record(st: dyn.State, grad: np.ndarray) -> None:
        with np.errstate(over="ignore", invalid="ignore"):  # a last good state may be huge: inf, no warning
            obs = measure(st.x, model.target.centres, model.target.sigma, ocfg["hq_sigmas"], mmd_ref,
                          model.backend, target_mean)
            obs["critic_grad_norm"] = float(np.sqrt(np.mean(np.sum(grad.astype(np.float64) ** 2, axis=1))))
        series["step"].append(st.step)
        for k in SERIES_KEYS:
            series[k].append(obs[k])

    status, diverged_step, diverged_reason = "ok", None, None
    bound = cfg["run"]["divergence_bound"] * (1.0 + float(np.max(np.abs(model.y))))
    reporter.start(total=steps, label="run")
    reporter.advance(state.step)
    while state.step < steps:
        if ckpt_every and state.step % ckpt_every == 0 and state.step > 0 and not (
                resume and state.step == ck["step"]):
            save_checkpoint(checkpoint_path, run_id, state, model.noise_rng, series, snapshots,
                            snapshot_taken,
                            extra=(engine.checkpoint_payload(model, state)
                                   if hasattr(engine, "checkpoint_payload") else None))
        if state.step in snap_steps:
            snapshots.append(state.x.copy())
            snapshot_taken.append(state.step)
        new_state, grad = engine.outer_step(model, state)
        if state.step % every == 0:
            record(state, grad)
        if not engine.state_is_finite(new_state) or not np.all(np.isfinite(grad)):
            status, diverged_step, diverged_reason = "diverged", state.step, "non-finite"
            break
        if bound > 0 and float(np.max(np.abs(new_state.x))) > bound:
            status, diverged_step, diverged_reason = "diverged", state.step, "runaway"
            break
        state = new_state
        reporter.advance(1)
    reporter.finish()
    # final row: the last finite state, with the critic gradient at that state
    _, grad = engine.particle_forces(model, state)
    if not series["step"] or series["step"][-1] != state.step:
        record(state, grad)
    if not snapshot_taken or snapshot_taken[-1] != state.step:
        snapshots.append(state.x.copy())
        snapshot_taken.append(state.step)
    arrays = {k: np.asarray(v, dtype=np.int64 if k == "step" else np.float64) for k, v in series.items()}
    return SimResult(series=arrays, snapshots=np.stack(snapshots), snapshot_steps=np.asarray(snapshot_taken),
                     status=status, steps=state.step, final_state=state, model=model,
                     diverged_step=diverged_step, diverged_reason=diverged_reason,
                     wall_time=time.perf_counter() - t0)


def simulation_engine(cfg: dict):
    """Module implementing build_model / outer_step / particle_forces / state_is_finite for
    ``model.type``: :mod:`particlegan.dynamics` (particle) or :mod:`particlegan.neural_model`."""
    if cfg["model"]["type"] == "neural":
        from . import neural_model

        return neural_model
    return dyn


def restore_state(model: dyn.Model, fresh: dyn.State, ck: dict) -> dyn.State:
    """State of a checkpoint (``ck`` from :func:`load_checkpoint`) on the rebuilt ``model``."""
    from .critics import KernelCriticState

    if simulation_engine(model.cfg) is not dyn:
        return simulation_engine(model.cfg).restore_state(model, fresh, ck)
    model.noise_rng.bit_generator.state = ck["noise_rng"]
    kstate = None
    if ck["kernel_snapshots"] is not None:
        kstate = KernelCriticState(ck["kernel_snapshots"], ck["kernel_coefs"])
    opt = fresh.critic_opt
    if opt is not None:
        opt.load_state_dict(ck["opt"])
    return dataclasses.replace(fresh, step=ck["step"], x=ck["x"], w=ck["w"], kernel_state=kstate,
                               critic_opt=opt)


def result_arrays(res: SimResult) -> dict[str, np.ndarray]:
    """Arrays stored in result.npz (deterministic content only: no times, no paths)."""
    arrays = dict(res.series)
    arrays["snapshots"] = res.snapshots
    arrays["snapshot_steps"] = res.snapshot_steps
    arrays["final_particles"] = res.final_state.x
    arrays["target_samples"] = res.model.target.samples
    arrays["mode_centres"] = res.model.target.centres
    if res.final_state.w is not None:
        arrays["critic_weights"] = res.final_state.w
    if getattr(res.final_state, "theta_g", None) is not None:  # neural generator parameters
        arrays["generator_theta"] = res.final_state.theta_g
    return arrays


def write_run(res: SimResult, cfg: dict, out_dir: str | Path, plot: bool = True) -> dict:
    """Write config.json, result.npz, summary.json, meta.json and particles.png into ``out_dir``."""
    out = ensure_dir(out_dir)
    atomic_write_bytes(out / "config.json", (canonical_json(cfg) + "\n").encode())
    atomic_save_npz(out / "result.npz", result_arrays(res))
    summary = res.summary()
    atomic_write_json(out / "summary.json", summary)
    if plot:
        from .plotting import plot_particles

        plot_particles(res, out / "particles.png")
    meta = {
        "run_id": config_hash(cfg),
        "versions": versions(),
        "seed": cfg["run"]["seed"],
        "backend": cfg["run"]["backend"],
        "dtype": cfg["run"]["dtype"],
        "status": res.status,
        "steps": res.steps,
        "wall_time_s": res.wall_time,
        "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    if res.diverged_step is not None:
        meta["diverged_step"] = res.diverged_step
        meta["diverged_reason"] = res.diverged_reason
    atomic_write_json(out / "meta.json", meta)  # written last: its presence marks a finished run
    return summary


def run_to_dir(cfg: dict, out_dir: str | Path, reporter: Reporter | None = None, plot: bool = True,
               resume: bool = False) -> dict:
    """Simulate ``cfg`` and store it in ``out_dir``; returns the summary dict.

    The resolved config is written first, so a killed run can be resumed with
    :func:`resume_run` when ``run.checkpoint_every`` > 0. The checkpoint is removed once the
    run's files are complete.
    """
    from .errors import ParticleGANError

    new_dirs = [p for p in (Path(out_dir), *Path(out_dir).parents) if not p.exists()]
    out = ensure_dir(out_dir)
    if not resume:
        atomic_write_bytes(out / "config.json", (canonical_json(cfg) + "\n").encode())
    ckpt = out / "checkpoint.npz"
    try:
        # divergence is detected explicitly (NaN/inf, runaway): numpy's overflow warnings would be noise
        with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
            res = simulate(cfg, reporter, checkpoint_path=ckpt, resume=resume)
    except ParticleGANError:
        if not resume:  # bad input found while building the model: leave nothing behind
            _remove_partial_run(out, new_dirs)
        raise
    summary = write_run(res, cfg, out, plot=plot)
    if ckpt.exists():
        ckpt.unlink()
    return summary


def _remove_partial_run(out: Path, new_dirs: list[Path]) -> None:
    """Remove the config.json/checkpoint of a run that never started, and the folders made for it."""
    for name in ("config.json", "checkpoint.npz"):
        (out / name).unlink(missing_ok=True)
    for d in new_dirs:  # deepest first
        try:
            d.rmdir()
        except OSError:
            break


def resume_run(run_dir: str | Path, reporter: Reporter | None = None, plot: bool = True) -> dict:
    """Continue the killed run in ``run_dir`` from its checkpoint (or finish a fresh one).

    Raises DataError when the directory holds no config.json or the run already finished.
    """
    from .config import config_from_json
    from .errors import DataError

    d = Path(run_dir)
    if not (d / "config.json").exists():
        raise DataError(f"'{d}' is not a run directory (no config.json)")
    if (d / "meta.json").exists():
        raise DataError(f"run '{d}' already finished (meta.json exists); nothing to resume")
    cfg = config_from_json(d / "config.json")
    return run_to_dir(cfg, d, reporter, plot=plot, resume=(d / "checkpoint.npz").exists())
