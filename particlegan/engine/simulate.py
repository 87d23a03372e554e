"""Run a simulation and store it: the loop, recording, snapshots and the run directory.

A run directory holds::

    config.json     full resolved config (defaults included): rerun with `particlegan run config.json`
    result.npz      observable time series (key per observable, plus `step`), particle snapshots
                    (`snapshots` (S, N, d), `snapshot_steps` (S,)), target sample, final particles
    summary.json    final observables + status ("ok" | "diverged") + steps
    meta.json       versions, seed, backend, wall time, status, run id
    particles.png   target and particles at several times (drawn by the figures callback the
                    CLI passes, plots.plotting.write_run_figures; not by this module)

Optional series exist only in runs that record them (never as NaN columns): ``kid`` and
``kid_std`` with ``observables.kid = true``, ``lr_scale`` (factor on eta_G and eta_D) with
``schedule.kind = "kid"``; they are then also in summary.json (see :func:`optional_series_keys`).

Every file is written atomically; result.npz is bitwise reproducible (same config, seed, backend).
"""
from __future__ import annotations

import dataclasses
import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from particlegan.engine import dynamics as dyn
from particlegan.engine.checkpoint import load_checkpoint, restore_state, save_checkpoint
from particlegan.store.config import canonical_json, config_hash
from particlegan.engine.observables import (COSINE_KEYS, KID_KEYS, SERIES_KEYS, cosine_observables, kid_observable,
                          make_mmd_reference, measure)
from particlegan.progress import Reporter, null_reporter
from particlegan.store.storage import atomic_save_npz, atomic_write_bytes, atomic_write_json, ensure_dir, provenance

SUMMARY_KEYS = ("collapse", "modes_covered", "hq_fraction", "mmd2", "radius_gyration",
                "critic_grad_norm", "com_error")
OPTIONAL_SERIES_KEYS = (*KID_KEYS, "lr_scale", *COSINE_KEYS)  # recorded only when switched on by the config


def optional_series_keys(cfg: dict) -> tuple[str, ...]:
    """Optional series (and summary entries) a run of the resolved ``cfg`` records, in
    :data:`OPTIONAL_SERIES_KEYS` order: ``kid``, ``kid_std`` (``observables.kid``),
    ``lr_scale`` (``schedule.kind != "none"``) and the cosine observables of data targets
    (``observables.cosine``: collapse_cos, quality_cos, spread_cos, targets_hit)."""
    on = set(KID_KEYS) if cfg["observables"]["kid"] else set()
    if cfg["schedule"]["kind"] != "none":
        on.add("lr_scale")
    if cfg["observables"]["cosine"]:
        on.update(COSINE_KEYS)
    return tuple(k for k in OPTIONAL_SERIES_KEYS if k in on)


def make_lr_schedule(cfg: dict):
    """Learning-rate schedule of the ``schedule`` section, or None for ``kind = "none"``.

    ``kind = "kid"``: :class:`particlegan.maths.mmd.KIDLearningRateSchedule` (P1.8) on lr_G0 =
    ``dynamics.eta_g``; its ``lr_ratio`` scales both eta_G and eta_D (the spec ties lr_D to lr_G).
    """
    sec = cfg["schedule"]
    if sec["kind"] == "none":
        return None
    from particlegan.maths.mmd import KIDLearningRateSchedule

    return KIDLearningRateSchedule.from_config(sec, cfg["dynamics"]["eta_g"])


@dataclass
class SimResult:
    """Outcome of :func:`simulate`.

    series : observable name -> (R,) array, plus "step" (R,) int array.
    snapshots : (S, N, d) particle positions at ``snapshot_steps``.
    status : "ok" or "diverged";  diverged_step : first step whose update was non-finite or ran
        away (max |x_i| above ``run.divergence_bound`` (1 + max |y|));  diverged_reason : which.
    final_state : last finite :class:`particlegan.engine.dynamics.State`.
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
    started_at: str = ""  # local time the run started, ISO 8601
    extra: dict = field(default_factory=dict)

    def summary(self) -> dict:
        """Final observables (last recorded values, optional series included when recorded),
        status and number of steps taken.

        A value that is NaN or infinite is stored as None (JSON null) and named in
        ``non_finite`` ({key: "nan" | "inf" | "-inf"}), so summary.json stays valid JSON.
        """
        out, non_finite = {}, {}
        for k in (*SUMMARY_KEYS, *(k for k in OPTIONAL_SERIES_KEYS if k in self.series)):
            v = float(self.series[k][-1])
            if math.isfinite(v):
                out[k] = v
            else:
                out[k] = None
                non_finite[k] = "nan" if math.isnan(v) else ("inf" if v > 0 else "-inf")
        if non_finite:
            out["non_finite"] = non_finite
        out["status"] = self.status
        out["steps"] = int(self.steps)
        if self.diverged_step is not None:
            out["diverged_step"] = int(self.diverged_step)
            out["diverged_reason"] = self.diverged_reason
        return out


def require_resolved(cfg) -> None:
    """Refuse (ConfigError) a config that is not a full, valid resolved config: a partial dict,
    or a resolved one edited to an invalid value (phi = 5, steps = -3). Build configs with
    :func:`particlegan.store.config.resolve_config` or use :func:`particlegan.run`."""
    from particlegan.store.config import resolve_config
    from particlegan.errors import ConfigError

    checked = resolve_config(cfg)  # names the bad key of an edited config
    for sec, table in checked.items():
        for key, value in table.items():
            if not isinstance(cfg.get(sec), dict) or key not in cfg[sec]:
                raise ConfigError(f"simulate() needs a full resolved config; {sec}.{key} is missing "
                                  "(resolve it with particlegan.store.config.resolve_config, or call "
                                  "particlegan.run(config_dict) which does)")
            if cfg[sec][key] != value:
                raise ConfigError(f"simulate() needs a resolved config: {sec}.{key} = {cfg[sec][key]!r} "
                                  f"resolves to {value!r} (resolve it with resolve_config)")


def rms_norm(grad: np.ndarray) -> float:
    """sqrt(mean_i ||g_i||^2) of (N, d) gradients, in float64; rescaled by max |g| when the
    squares overflow, so that a huge but finite gradient gives a finite norm."""
    g = grad.astype(np.float64)
    norm = float(np.sqrt(np.mean(np.sum(g ** 2, axis=1))))
    if math.isinf(norm) and np.all(np.isfinite(g)):
        scale = float(np.max(np.abs(g)))
        norm = scale * float(np.sqrt(np.mean(np.sum((g / scale) ** 2, axis=1))))
    return norm


def snapshot_schedule(steps: int, n_snapshots: int) -> np.ndarray:
    """Evenly spaced snapshot steps in [0, steps], unique and sorted (int64)."""
    return np.unique(np.round(np.linspace(0, steps, n_snapshots)).astype(np.int64))


class RunRecorder:
    """The bookkeeping of one run's loop, shared by :func:`simulate` and the ensembles of
    :mod:`particlegan.engine.ensemble`: observable rows every ``run.record_every`` steps,
    particle snapshots, the divergence checks and the final row.

    Built after the model (it draws the MMD reference from the ``observables`` stream, then the
    KID subsets of every row, in that order).
    """

    def __init__(self, cfg: dict, model, obs_rng: np.random.Generator):
        self.cfg, self.model, self.obs_rng = cfg, model, obs_rng
        self.ocfg = ocfg = cfg["observables"]
        self.mmd_ref = make_mmd_reference(model.y, ocfg["mmd_sigma"], ocfg["mmd_samples"], obs_rng, model.backend)
        self.target_mean = model.target.samples.mean(axis=0)
        self.every = cfg["run"]["record_every"]
        self.snap_steps = snapshot_schedule(cfg["run"]["steps"], cfg["run"]["snapshots"])
        self.optional = optional_series_keys(cfg)
        self.series: dict[str, list] = {k: [] for k in ("step", *SERIES_KEYS, *self.optional)}
        self.snapshots, self.snapshot_taken = [], []
        self.status, self.diverged_step, self.diverged_reason = "ok", None, None
        self.bound = cfg["run"]["divergence_bound"] * (1.0 + float(np.max(np.abs(model.y))))

    def record(self, st, grad: np.ndarray) -> None:
        """Append the observables of state ``st`` (critic gradients ``grad`` (N, d) at st.x)."""
        m, ocfg = self.model, self.ocfg
        with np.errstate(over="ignore", invalid="ignore"):  # a last good state may be huge: inf, no warning
            obs = measure(st.x, m.target.centres, m.target.sigma, ocfg["hq_sigmas"], self.mmd_ref,
                          m.backend, self.target_mean)
            obs["critic_grad_norm"] = rms_norm(grad)
            if ocfg["kid"]:
                obs.update(kid_observable(st.x, m.y, ocfg["kid_subsets"], ocfg["kid_subset_size"], self.obs_rng))
            if ocfg["cosine"]:
                obs.update(cosine_observables(st.x, m.target.centres))
        obs["lr_scale"] = float(st.lr_scale)
        self.series["step"].append(st.step)
        for k in (*SERIES_KEYS, *self.optional):
            self.series[k].append(obs[k])

    def diverge(self, step: int, reason: str) -> None:
        self.status, self.diverged_step, self.diverged_reason = "diverged", step, reason

    def before_step(self, st) -> None:
        """Take the snapshot of state ``st`` when its step is on the schedule."""
        if st.step in self.snap_steps:
            self.snapshots.append(st.x.copy())
            self.snapshot_taken.append(st.step)

    def after_step(self, st, new_x: np.ndarray, grad: np.ndarray, new_finite: bool) -> bool:
        """Record the row of ``st`` when due and check the step st -> (particles ``new_x``;
        ``new_finite``: the new state is finite). Returns True when the run goes on, False once
        it diverged (non-finite observable, non-finite state or gradients, runaway)."""
        if st.step % self.every == 0:
            self.record(st, grad)
            bad = [k for k in SERIES_KEYS if not math.isfinite(self.series[k][-1])]
            if bad:  # e.g. targets so large that a distance overflows: the numbers are meaningless
                self.diverge(st.step, f"non-finite observable {', '.join(bad)}")
                return False
        if not new_finite or not np.all(np.isfinite(grad)):
            self.diverge(st.step, "non-finite")
            return False
        if self.bound > 0 and float(np.max(np.abs(new_x))) > self.bound:
            self.diverge(st.step, "runaway")
            return False
        return True

    def result(self, state, grad: np.ndarray, t0: float, started_at: str) -> SimResult:
        """The run's :class:`SimResult`, ending on the last finite ``state`` (its row and
        snapshot added when not yet taken; ``grad``: the critic gradients at that state)."""
        if not self.series["step"] or self.series["step"][-1] != state.step:
            self.record(state, grad)
        if not self.snapshot_taken or self.snapshot_taken[-1] != state.step:
            self.snapshots.append(state.x.copy())
            self.snapshot_taken.append(state.step)
        arrays = {k: np.asarray(v, dtype=np.int64 if k == "step" else np.float64) for k, v in self.series.items()}
        return SimResult(series=arrays, snapshots=np.stack(self.snapshots),
                         snapshot_steps=np.asarray(self.snapshot_taken), status=self.status, steps=state.step,
                         final_state=state, model=self.model, diverged_step=self.diverged_step,
                         diverged_reason=self.diverged_reason, wall_time=time.perf_counter() - t0,
                         started_at=started_at)


def simulate(cfg: dict, reporter: Reporter | None = None, checkpoint_path: str | Path | None = None,
             resume: bool = False) -> SimResult:
    """Run the particle model described by the resolved config ``cfg``.

    Stops early with status "diverged" when an update produces NaN/inf in the particles or the
    critic, or when the particles run away (max |x_i| > run.divergence_bound (1 + max |y|));
    the last good state is kept (and recorded as the final row).

    With ``checkpoint_path`` and ``run.checkpoint_every`` > 0 a checkpoint is written atomically
    every that many steps; ``resume=True`` continues from it. A resumed run produces exactly the
    arrays of an uninterrupted one.

    With ``observables.kid`` every recorded row also holds ``kid`` / ``kid_std``
    (:func:`particlegan.engine.observables.kid_observable`, subsets from the observables stream).
    With ``schedule.kind = "kid"``, at every step t with t % ``schedule.every`` == 0 (t = 0
    included) the schedule is updated with the current particles against the target samples
    (raw positions as features) before the step t -> t + 1, and ``state.lr_scale`` =
    ``schedule.lr_ratio`` then multiplies eta_G and eta_D (series ``lr_scale``: the factor used
    by the step from each recorded row).
    """
    from particlegan.engine.resources import check_memory

    require_resolved(cfg)
    reporter = reporter or null_reporter()
    t0 = time.perf_counter()
    started_at = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    check_memory(cfg)  # before any allocation: a run that cannot fit is refused in one line
    streams = dyn.seed_streams(cfg["run"]["seed"])
    model, state = dyn.build_model(cfg, streams)
    rec = RunRecorder(cfg, model, streams["observables"])
    schedule = make_lr_schedule(cfg)
    steps = cfg["run"]["steps"]
    ckpt_every = cfg["run"]["checkpoint_every"] if checkpoint_path is not None else 0
    run_id = config_hash(cfg)
    if resume:
        ck = load_checkpoint(checkpoint_path, run_id)
        check_checkpoint(ck, state, steps, checkpoint_path)
        from particlegan.errors import DataError

        try:
            state = restore_state(state, ck)
        except DataError as exc:
            raise DataError(f"checkpoint '{checkpoint_path}' is unusable: {exc}; delete it to restart the run") from None
        if ck["observables_rng"] is not None:
            rec.obs_rng.bit_generator.state = ck["observables_rng"]
        if schedule is not None:
            schedule.load_state_dict(ck["schedule"])
        rec.series.update(ck["series"])
        rec.snapshots, rec.snapshot_taken = ck["snapshots"], ck["snapshot_taken"]

    if not dyn.state_is_finite(model, state):  # the start-up critic steps diverged
        rec.diverge(state.step, "non-finite")
    reporter.start(total=steps, label="run")
    reporter.advance(state.step)
    while rec.status == "ok" and state.step < steps:
        if ckpt_every and state.step % ckpt_every == 0 and state.step > 0 and not (
                resume and state.step == ck["step"]):
            save_checkpoint(checkpoint_path, run_id, state, rec.series, rec.snapshots, rec.snapshot_taken,
                            schedule=schedule.state_dict() if schedule is not None else None,
                            observables_rng=rec.obs_rng)
        if schedule is not None and schedule.due(state.step):
            schedule.update(state.step, model.y, state.x)
            state = dataclasses.replace(state, lr_scale=schedule.lr_ratio)
        rec.before_step(state)
        new_state, grad = dyn.outer_step(model, state)
        if not rec.after_step(state, new_state.x, grad, dyn.state_is_finite(model, new_state)):
            break
        state = new_state
        reporter.advance(1)
    reporter.finish()
    # final row: the last finite state, with the critic gradient at that state
    _, grad = dyn.particle_forces(model, state)
    return rec.result(state, grad, t0, started_at)


def check_checkpoint(ck: dict, fresh, steps: int, path) -> None:
    """Refuse (DataError) a checkpoint that does not fit the rebuilt run: its particles ``x``
    (and critic parameters ``w``) must have the fresh state's shapes and be finite, and its
    step must lie in [0, run.steps]."""
    from particlegan.errors import DataError

    def bad(what):
        return DataError(f"checkpoint '{path}' is unusable: {what}; delete it to restart the run")

    for key in ("x", "w"):
        got, want = ck.get(key), getattr(fresh, key)
        if want is None:
            continue
        if got is None or np.shape(got) != want.shape:
            raise bad(f"'{key}' has shape {None if got is None else np.shape(got)}, expected {want.shape}")
        if np.asarray(got).dtype.kind not in "fiu" or not np.all(np.isfinite(got)):
            raise bad(f"'{key}' holds non-numeric, NaN or infinite values")
    if not (isinstance(ck["step"], int) and 0 <= ck["step"] <= steps):
        raise bad(f"step {ck['step']!r} is outside [0, run.steps = {steps}]")


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
    arrays.update(res.model.generator.result_arrays(res.final_state.gen))  # e.g. generator_theta
    return arrays


def write_run(res: SimResult, cfg: dict, out_dir: str | Path, figures=None) -> dict:
    """Write config.json, result.npz, summary.json and meta.json into ``out_dir``.

    ``figures``: None, or ``figures(res, out_dir)`` drawing the run's figures (the CLI passes
    :func:`particlegan.plots.plotting.write_run_figures`), called before meta.json marks the run
    finished. This module draws nothing itself.
    """
    out = ensure_dir(out_dir)
    atomic_write_bytes(out / "config.json", (canonical_json(cfg) + "\n").encode())
    atomic_save_npz(out / "result.npz", result_arrays(res))
    summary = res.summary()
    atomic_write_json(out / "summary.json", summary)
    if figures is not None:
        figures(res, out)
    meta = {
        "run_id": config_hash(cfg),
        **provenance(),
        "started_at": res.started_at,
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
    meta.update(res.extra)  # e.g. ensemble_size of a run computed in a batched ensemble
    atomic_write_json(out / "meta.json", meta)  # written last: its presence marks a finished run
    return summary


RUN_FILES = ("config.json", "result.npz", "summary.json", "meta.json", "particles.png",
             "overview.png", "checkpoint.npz")  # everything a run directory may hold


def prepare_run_dir(out_dir: str | Path, cfg: dict, force: bool = False) -> None:
    """Make sure writing the run ``cfg`` into ``out_dir`` overwrites nothing of another run.

    Allowed: a missing or empty directory, or one holding the same run (its config.json is
    this config, e.g. an interrupted run started again). Otherwise DataError, unless ``force``:
    then the run files (:data:`RUN_FILES`, stale ``.*.tmp``) are deleted first; a directory
    that also holds files particlegan did not write is never emptied.
    """
    from particlegan.errors import DataError

    d = Path(out_dir)
    if not d.exists():
        return
    if not d.is_dir():
        raise DataError(f"--out '{d}' exists and is not a directory")
    entries = sorted(p.name for p in d.iterdir())
    if not entries:
        return
    stored = d / "config.json"
    if stored.is_file() and stored.read_bytes() == (canonical_json(cfg) + "\n").encode():
        return  # the same run
    foreign = [n for n in entries if n not in RUN_FILES and not (n.startswith(".") and n.endswith(".tmp"))]
    if not force:
        what = "a different run" if stored.exists() else "other files"
        raise DataError(f"output directory '{d}' already holds {what} ({', '.join(entries[:5])}"
                        f"{', ...' if len(entries) > 5 else ''}); choose another --out, or pass "
                        "--force to replace it")
    if foreign:
        raise DataError(f"--force: '{d}' holds files that are not a run's ({', '.join(foreign[:5])}); "
                        "not deleting them, choose another --out")
    for name in entries:
        (d / name).unlink()


def run_to_dir(cfg: dict, out_dir: str | Path, reporter: Reporter | None = None, figures=None,
               resume: bool = False, force: bool = False) -> dict:
    """Simulate ``cfg`` and store it in ``out_dir``; returns the summary dict.

    ``out_dir`` must not hold another run (:func:`prepare_run_dir`; ``force`` replaces it).
    The resolved config is written first, so a killed run can be resumed with
    :func:`resume_run` when ``run.checkpoint_every`` > 0. The checkpoint is removed once the
    run's files are complete. ``figures``: see :func:`write_run`.
    """
    from particlegan.errors import ParticleGANError

    out, new_dirs = _open_run_dir(cfg, out_dir, resume, force)
    ckpt = out / "checkpoint.npz"
    try:
        # divergence is detected explicitly (NaN/inf, runaway): numpy's overflow warnings would be noise
        with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
            res = simulate(cfg, reporter, checkpoint_path=ckpt, resume=resume)
    except (ParticleGANError, MemoryError) as exc:
        if not resume:  # bad input found while building the model: leave nothing behind
            _remove_partial_run(out, new_dirs)
        if isinstance(exc, MemoryError):
            from particlegan.errors import ConfigError
            from particlegan.engine.resources import estimate_text

            raise ConfigError(f"out of memory while running (estimated need "
                              f"{estimate_text(cfg)}); reduce particles.n, target.n_samples, "
                              "target.dim or critic.features") from None
        raise
    summary = write_run(res, cfg, out, figures=figures)
    if ckpt.exists():
        ckpt.unlink()
    return summary


def _open_run_dir(cfg: dict, out_dir: str | Path, resume: bool = False, force: bool = False):
    """Make ``out_dir`` ready for the run ``cfg`` (:func:`prepare_run_dir`, stale temporary
    files removed, config.json written unless resuming); returns (the directory, the folders
    created for it, deepest first)."""
    if not resume:
        prepare_run_dir(out_dir, cfg, force)
    new_dirs = [p for p in (Path(out_dir), *Path(out_dir).parents) if not p.exists()]
    out = ensure_dir(out_dir)
    remove_stale_temp_files(out)  # left by a killed earlier attempt of this same run
    if not resume:
        atomic_write_bytes(out / "config.json", (canonical_json(cfg) + "\n").encode())
    return out, new_dirs


def run_ensemble_to_dirs(cfgs: list[dict], out_dirs: list[str | Path], reporter: Reporter | None = None,
                         figures=None) -> list[dict]:
    """Simulate ``cfgs`` as one batched ensemble (:mod:`particlegan.engine.ensemble`) and store
    each member in its directory exactly as :func:`run_to_dir` stores a run (the same files;
    meta.json also names the ``ensemble_size``). Returns the summaries. A failure while
    building or running the ensemble leaves the members' directories without results (the
    caller runs them alone) and is raised."""
    from particlegan.engine.ensemble import simulate_ensemble

    opened = [_open_run_dir(cfg, d) for cfg, d in zip(cfgs, out_dirs)]
    try:
        with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
            results = simulate_ensemble(cfgs, reporter)
    except BaseException:
        for out, new_dirs in reversed(opened):  # the last opened first: shared parents go last
            _remove_partial_run(out, new_dirs)
        raise
    return [write_run(res, cfg, out, figures=figures) for res, cfg, (out, _) in zip(results, cfgs, opened)]


def remove_stale_temp_files(run_dir: Path) -> list[Path]:
    """Delete the ``.NAME.*.tmp`` files that atomic writes of a killed process left in
    ``run_dir`` (e.g. a half-written ``.checkpoint.npz.x1y2.tmp``); returns them."""
    stale = [p for p in run_dir.glob(".*.tmp") if p.is_file()]
    for p in stale:
        p.unlink(missing_ok=True)
    return stale


def _remove_partial_run(out: Path, new_dirs: list[Path]) -> None:
    """Remove the config.json/checkpoint of a run that never started, and the folders made for it."""
    for name in ("config.json", "checkpoint.npz"):
        (out / name).unlink(missing_ok=True)
    for d in new_dirs:  # deepest first
        try:
            d.rmdir()
        except OSError:
            break


def resume_run(run_dir: str | Path, reporter: Reporter | None = None, figures=None) -> dict:
    """Continue the killed run in ``run_dir`` from its checkpoint (or finish a fresh one).

    Raises DataError when the directory holds no config.json or the run already finished.
    """
    from particlegan.store.config import config_from_json
    from particlegan.errors import DataError

    d = Path(run_dir)
    if not (d / "config.json").exists():
        raise DataError(f"'{d}' is not a run directory (no config.json)")
    if (d / "meta.json").exists():
        raise DataError(f"run '{d}' already finished (meta.json exists); nothing to resume")
    cfg = config_from_json(d / "config.json")
    has_checkpoint = (d / "checkpoint.npz").exists()
    if not has_checkpoint:
        if cfg["run"]["checkpoint_every"] == 0:
            raise DataError(f"run '{d}' has no checkpoint to resume from (run.checkpoint_every = 0); "
                            f"start it again with: particlegan run {d / 'config.json'} --out {d} --force")
        (reporter or null_reporter()).info(
            f"run '{d}' was stopped before its first checkpoint: starting it from step 0")
    return run_to_dir(cfg, d, reporter, figures=figures, resume=has_checkpoint)
