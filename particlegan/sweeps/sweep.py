"""Parameter sweeps: grids x seeds of runs, executed in parallel, resumable and crash safe.

A sweep directory holds::

    sweep.json      the sweep definition (base config, grids, seeds, run ids)
    results.csv     one row per run: run_id, each swept key, each key fixed with --set, seed,
                    the summary observables,
                    status ("ok" | "diverged" | "failed"), wall_time_s, error
    runs/<id>/      each run stored exactly as ``particlegan run`` stores it; <id> is the
                    run id (:func:`particlegan.store.config.config_hash` of the resolved config)
    .lock           present while a sweep writes to the directory (holds its pid and host)

A run whose ``meta.json`` exists is finished and is never repeated; rerunning a sweep redoes
only the unfinished runs. Every run is seeded from its own config, so results do not depend on
the number of workers or on the order in which runs finish.

Execution: local worker processes (``concurrent.futures.ProcessPoolExecutor``, spawn context,
single-threaded numba/BLAS in each worker), or a Dask cluster through the same
``concurrent.futures`` interface (``Client.get_executor``). A worker process that dies (SIGKILL,
out of memory) is detected and its run retried once; a run that dies twice is recorded as failed.

This module imports only the standard library at import time: a spawned worker imports it
before its initializer limits the thread counts, and numpy/numba must not be loaded by then.

Hook: ``run_sweep(..., run_reporter=f)`` calls the picklable ``f(run_id, attempt)`` in the worker
before each attempt and reports the run's progress to the :class:`~particlegan.progress.Reporter`
it returns (None: no reporting). The tests use it to kill a worker in the middle of a run
(tests/sweep_hooks.py); the library itself holds no test hook.
"""
from __future__ import annotations

import concurrent.futures as cf
import concurrent.futures.process
import copy
import io
import itertools
import json
import math
import os
import socket
import time
from collections import deque
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

from particlegan.store.config import SCHEMA, _suggest, config_hash, load_toml, parse_override, resolve_config
from particlegan.errors import ConfigError, DataError, ParticleGANError
from particlegan.store import checks as ck
from particlegan.progress import Reporter, null_reporter

DEFAULT_MAX_RUNS = 10_000
# set in every worker before numba/numpy load there: one run per core, no oversubscription
WORKER_THREAD_ENV = {"NUMBA_NUM_THREADS": "1", "OMP_NUM_THREADS": "1",
                     "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
RESULT_COLUMNS_TAIL = ("steps", "status", "wall_time_s", "error")


# ---------------------------------------------------------------------------------------------
# sweep definition
# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class GridAxis:
    """One swept config key.

    key : "section.key";  values : the values as parsed from the command line;
    spec : the command-line text that produced them (kept in sweep.json).
    """

    key: str
    values: tuple
    spec: str


@dataclass
class PlannedRun:
    """One run of a sweep: its id, swept values (as resolved), seed and full resolved config."""

    run_id: str
    params: dict[str, Any]
    seed: int
    cfg: dict


@dataclass
class SweepPlan:
    """The expanded sweep: axes, seeds and the runs in a fixed order (axes outer, seeds inner)."""

    axes: list[GridAxis]
    seeds: list[int]
    runs: list[PlannedRun]
    base: dict
    config_path: str | None = None
    fixed: list[str] = field(default_factory=list)  # keys set with --set (columns of results.csv)

    def definition(self) -> dict:
        """JSON-able description stored as sweep.json."""
        from particlegan import __version__

        return {
            "particlegan_version": __version__,
            "config_file": self.config_path,
            "base": self.base,
            "grids": [{"key": a.key, "values": list(a.values), "spec": a.spec} for a in self.axes],
            "fixed": list(self.fixed),
            "seeds": list(self.seeds),
            "n_runs": len(self.runs),
            "runs": [{"run_id": r.run_id, "params": r.params, "seed": r.seed} for r in self.runs],
        }


def _check_key(key: str, option: str) -> tuple[str, str]:
    parts = key.split(".")
    if len(parts) != 2 or not all(parts):
        raise ConfigError(f"{option} {key!r}: the key must look like section.key")
    section, name = parts
    if section not in SCHEMA:
        raise ConfigError(f"{option}: unknown config section {section!r}{_suggest(section, SCHEMA)}")
    if name not in SCHEMA[section]:
        raise ConfigError(f"{option}: unknown config key {key!r}{_suggest(name, SCHEMA[section])}")
    if key == "run.seed":
        raise ConfigError(f"{option} run.seed: sweep seeds with --seeds instead")
    return section, name


def _split_values(text: str) -> list[str]:
    """Split on commas that are not inside brackets or quotes (so list values survive)."""
    items, depth, quote, current = [], 0, "", []
    for ch in text:
        if quote:
            quote = "" if ch == quote else quote
        elif ch in "\"'":
            quote = ch
        elif ch in "[{":
            depth += 1
        elif ch in "]}":
            depth -= 1
        elif ch == "," and depth == 0:
            items.append("".join(current))
            current = []
            continue
        current.append(ch)
    items.append("".join(current))
    return [s.strip() for s in items]


def parse_grid(item: str) -> GridAxis:
    """Parse ``section.key=v1,v2,...``; each value is read like a ``--set`` value.

    Values are TOML scalars (``0.5``, ``1e-3``, ``true``, ``"text"``, ``[0.1, 0.2]``), else bare
    strings. ``section.key=`` (no values) gives an empty axis, which :func:`plan_sweep` rejects.
    """
    if "=" not in item:
        raise ConfigError(f"--grid {item!r} must look like section.key=v1,v2,...")
    key, raw = (s.strip() for s in item.split("=", 1))
    _check_key(key, "--grid")
    if not raw:
        return GridAxis(key, (), item)
    values = []
    for token in _split_values(raw):
        if not token:
            raise ConfigError(f"--grid {item!r}: empty value between commas")
        values.append(parse_override(f"{key}={token}")[2])
    return GridAxis(key, tuple(values), item)


def parse_logspace(item: str) -> GridAxis:
    """Parse ``section.key=a:b:n``: the values ``10**linspace(a, b, n)``."""
    import numpy as np

    if "=" not in item:
        raise ConfigError(f"--logspace {item!r} must look like section.key=a:b:n")
    key, raw = (s.strip() for s in item.split("=", 1))
    _check_key(key, "--logspace")
    parts = raw.split(":")
    if len(parts) != 3:
        raise ConfigError(f"--logspace {item!r}: the range must look like a:b:n "
                          "(values 10**linspace(a, b, n))")
    try:
        lo, hi = float(parts[0]), float(parts[1])
        n = int(parts[2])
    except ValueError:
        raise ConfigError(f"--logspace {item!r}: a and b must be numbers and n an integer") from None
    if not (math.isfinite(lo) and math.isfinite(hi)):
        raise ConfigError(f"--logspace {item!r}: a and b must be finite")
    if n < 0:
        raise ConfigError(f"--logspace {item!r}: n must be >= 0")
    values = tuple(float(v) for v in 10.0 ** np.linspace(lo, hi, n))
    return GridAxis(key, values, item)


def parse_seeds(text: str | int | Sequence[int]) -> list[int]:
    """Seeds from ``S`` (seeds 0..S-1), an explicit list ``3,5,9`` (or ``7,`` for the one seed 7)
    or an inclusive range ``0..4``."""
    if isinstance(text, int) and not isinstance(text, bool):
        text = str(text)
    if not isinstance(text, str):
        seeds = list(text)
    else:
        s = text.strip()
        try:
            if ".." in s:
                a, b = s.split("..", 1)
                seeds = list(range(int(a), int(b) + 1))
            elif "," in s:
                seeds = [int(t) for t in s.split(",") if t.strip()]
            else:
                count = int(s)
                if count < 0:
                    raise ConfigError(f"--seeds {text!r}: the number of seeds must be >= 0")
                seeds = list(range(count))
        except ValueError:
            raise ConfigError(f"--seeds {text!r} must be a count S (seeds 0..S-1), a list like "
                              "3,5,9 or a range like 0..4") from None
    seeds = [int(ck.require("--seeds: a seed", seed, ck.integer, ck.nonneg)) for seed in seeds]
    if len(set(seeds)) != len(seeds):
        raise ConfigError(f"--seeds {text!r}: a seed is given twice")
    return seeds


def load_base(config_path: str | Path | Mapping | None, overrides: Sequence[str] = ()) -> dict:
    """The sweep's base as a user dict: the TOML file (or a stored config.json, or a user dict
    itself) plus ``--set``.

    Relative data paths of the file are made absolute against its directory (of a dict: against
    the current directory), those of ``--set`` against the current directory (when the runs are
    resolved)."""
    from particlegan.store.config import absolutize_paths

    base: dict = {}
    if isinstance(config_path, Mapping):
        for section, table in config_path.items():
            if not isinstance(table, Mapping):
                raise ConfigError(f"config section {section!r} must be a table, got {table!r}")
        base = absolutize_paths(config_path, None)
    elif config_path:
        p = Path(config_path)
        if p.suffix == ".json":
            from particlegan.store.config import config_from_json

            base = config_from_json(p)
        else:  # relative data paths are relative to the config file
            base = absolutize_paths(load_toml(p), p.parent)
    base = copy.deepcopy(base)
    for item in overrides:
        section, key, value = parse_override(item)
        if not isinstance(base.setdefault(section, {}), dict):
            raise ConfigError(f"config section {section!r} must be a table")
        base[section][key] = value
    return base


def _describe_point(params: Mapping[str, Any], seed: int) -> str:
    return ", ".join([f"{k}={v!r}" for k, v in params.items()] + [f"seed={seed}"])


def plan_sweep(base: Mapping | None, axes: Sequence[GridAxis], seeds: Sequence[int],
               max_runs: int = DEFAULT_MAX_RUNS, force: bool = False,
               config_path: str | None = None, fixed_keys: Sequence[str] = ()) -> SweepPlan:
    """Expand and resolve every run of a sweep before any of them starts.

    Parameters
    ----------
    base : user dict (e.g. from :func:`load_base`) that every run starts from.
    axes : swept keys; their Cartesian product, times ``seeds``, is the sweep.
    seeds : run seeds (innermost loop).
    max_runs, force : more than ``max_runs`` runs is refused unless ``force``.
    config_path : recorded in sweep.json only.
    fixed_keys : "section.key" set by ``--set``; sweeping one of them is refused.

    Returns
    -------
    SweepPlan with runs in a fixed order; runs that resolve to the same config (same id) are
    kept once.

    Raises
    ------
    ConfigError : an empty sweep, too many runs, a key swept twice, or any run whose config is
        invalid (the message names the sweep point and the bad key).
    """
    base = copy.deepcopy(dict(base or {}))
    seen = set()
    for axis in axes:
        if axis.key in seen:
            raise ConfigError(f"{axis.key} is swept twice (one --grid/--logspace per key)")
        if axis.key in fixed_keys:
            raise ConfigError(f"{axis.key} is both swept and set with --set; drop one of them")
        seen.add(axis.key)
        if not axis.values:
            raise ConfigError(f"the sweep expands to no runs: {axis.spec!r} has no values")
    seeds = list(seeds)
    if not seeds:
        raise ConfigError("the sweep expands to no runs: no seeds (use --seeds S with S >= 1)")
    total = len(seeds) * math.prod(len(a.values) for a in axes)
    if total > max_runs and not force:
        raise ConfigError(f"the sweep expands to {total} runs, more than --max-runs {max_runs}; "
                          "pass --force or raise --max-runs")
    runs, ids = [], set()
    for values in itertools.product(*(a.values for a in axes)):
        user = copy.deepcopy(base)
        for axis, value in zip(axes, values):
            section, key = axis.key.split(".")
            if not isinstance(user.setdefault(section, {}), dict):
                raise ConfigError(f"config section {section!r} must be a table")
            user[section][key] = value
        for seed in seeds:
            try:
                cfg = resolve_config(user, seed=seed)
            except ConfigError as exc:
                raise ConfigError(f"sweep point {_describe_point(dict(zip((a.key for a in axes), values)), seed)}: "
                                  f"{exc}") from None
            run_id = config_hash(cfg)
            if run_id in ids:
                continue
            ids.add(run_id)
            params = {a.key: cfg[a.key.split(".")[0]][a.key.split(".")[1]] for a in axes}
            runs.append(PlannedRun(run_id, params, seed, cfg))
    fixed = [k for k in dict.fromkeys(fixed_keys) if k not in seen]
    for key in fixed:
        _check_key(key, "--set")
    return SweepPlan(list(axes), seeds, runs, base, config_path, fixed)


# ---------------------------------------------------------------------------------------------
# lock
# ---------------------------------------------------------------------------------------------
def _pid_alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


class SweepLock:
    """Exclusive lock on a sweep directory: the file ``DIR/.lock`` holding "pid host".

    Created with ``O_CREAT | O_EXCL``. A lock left by a dead process on this host is taken
    over; any other existing lock refuses with :class:`DataError`.
    """

    def __init__(self, directory: str | Path):
        self.path = Path(directory) / ".lock"
        self.token = f"{os.getpid()} {socket.gethostname()}\n"
        self.held = False

    def _holder(self, path: Path | None = None) -> tuple[int, str] | None:
        try:
            text = (path or self.path).read_text()
        except FileNotFoundError:
            return None
        except OSError:
            return (-1, "")
        parts = text.split()
        try:
            return int(parts[0]), (parts[1] if len(parts) > 1 else "")
        except (IndexError, ValueError):
            return (-1, "")  # being written right now, or garbage: treat as held

    def _take_over_stale(self, stale: tuple[int, str]) -> None:
        # move the stale lock aside atomically, then check we moved the one we judged stale
        grave = self.path.with_name(f".lock.stale.{os.getpid()}")
        try:
            os.replace(self.path, grave)
        except FileNotFoundError:
            return
        moved = self._holder(grave)
        if moved != stale:  # another sweep took over in between: give its lock back
            try:
                os.link(grave, self.path)
            except FileExistsError:
                pass
        grave.unlink(missing_ok=True)

    def acquire(self) -> "SweepLock":
        host = socket.gethostname()
        for _ in range(5):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                holder = self._holder()
                if holder is None:  # released meanwhile
                    continue
                pid, their_host = holder
                if pid > 0 and their_host == host and not _pid_alive(pid):
                    self._take_over_stale(holder)
                    continue
                who = f"pid {pid}" + (f" on {their_host}" if their_host and their_host != host else "")
                if pid <= 0:
                    who = "unknown process"
                raise DataError(f"sweep directory '{self.path.parent}' is in use by another sweep "
                                f"({who}); wait for it, or delete '{self.path}' if no sweep is running")
            except OSError as exc:
                raise DataError(f"cannot create lock file '{self.path}': {exc.strerror or exc}") from None
            with os.fdopen(fd, "w") as fh:
                fh.write(self.token)
            self.held = True
            return self
        raise DataError(f"cannot take the lock '{self.path}' (it keeps changing hands)")

    def release(self) -> None:
        if not self.held:
            return
        try:
            if self.path.read_text() == self.token:
                self.path.unlink()
        except FileNotFoundError:
            pass
        self.held = False

    def __enter__(self) -> "SweepLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


# ---------------------------------------------------------------------------------------------
# worker side
# ---------------------------------------------------------------------------------------------
_PARENT_WATCH: dict[str, int] = {}


def exit_when_parent_dies(poll_s: float = 0.5) -> None:
    """Start (once per process) a daemon thread that ends this process when its parent dies.

    A sweep killed with SIGKILL cannot stop its pool: without this its workers would finish
    their runs into the sweep directory and then wait forever for work (orphans of pid 1).
    The parent's death shows as a change of ``os.getppid()`` (re-parenting).
    """
    import threading

    if _PARENT_WATCH:
        return
    _PARENT_WATCH["parent"] = parent = os.getppid()

    def watch() -> None:
        while True:
            time.sleep(poll_s)
            if os.getppid() != parent:
                os._exit(1)  # nothing to clean up: every file of a run is written atomically

    threading.Thread(target=watch, name="particlegan-parent-watch", daemon=True).start()


def limit_worker_threads() -> None:
    """Make this process run numba and BLAS single-threaded (worker initializer), and make it
    exit when the sweep process dies (:func:`exit_when_parent_dies`).

    The environment variables only act if numba/numpy have not been loaded yet (true in a fresh
    spawned worker); otherwise numba's thread count is lowered for the calling thread.
    """
    exit_when_parent_dies()
    os.environ.update(WORKER_THREAD_ENV)
    import sys

    if "numba" in sys.modules:
        import numba

        numba.set_num_threads(1)


def worker_thread_settings() -> dict:
    """Thread settings seen by the calling process (used by tests to check the workers)."""
    import numba

    return {"NUMBA_NUM_THREADS": os.environ.get("NUMBA_NUM_THREADS"),
            "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS"),
            "numba_threads": numba.get_num_threads(), "pid": os.getpid()}


def _execute_attempt(cfg: dict, run_dir: str, figures, run_reporter, run_id: str, attempt: int,
                     in_worker: bool) -> dict:
    """:func:`execute_run` with the reporter ``run_reporter(run_id, attempt)`` (in the worker)."""
    reporter = run_reporter(run_id, attempt) if run_reporter is not None else None
    return execute_run(cfg, run_dir, figures, reporter, in_worker)


def _one_line(exc: BaseException) -> str:
    text = str(exc) if isinstance(exc, ParticleGANError) else f"{type(exc).__name__}: {exc}"
    text = " ".join(text.split())
    return text if len(text) <= 500 else text[:497] + "..."


def read_json_object(path: Path) -> dict | None:
    """The JSON object stored in ``path``, or None if it is missing, unreadable or not an object."""
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def finished_outcome(run_dir: str | Path) -> dict | None:
    """Outcome of a finished run read from its directory; None if it is not finished.

    A run is finished when meta.json exists (it is written last) and summary.json is readable.
    """
    d = Path(run_dir)
    meta = read_json_object(d / "meta.json")
    summary = read_json_object(d / "summary.json")
    if meta is None or summary is None:
        return None
    return {"status": summary.get("status", meta.get("status", "ok")), "summary": summary,
            "wall_time_s": float(meta.get("wall_time_s", math.nan)), "error": ""}


def execute_run(cfg: dict, run_dir: str, figures=None, reporter: Reporter | None = None,
                in_worker: bool = True) -> dict:
    """Run one sweep point into ``run_dir``; never raises for a failing run.

    Resumes from ``checkpoint.npz`` when an earlier attempt left one (run.checkpoint_every > 0).
    ``in_worker``: this process is a sweep worker, so make it single-threaded first (False
    leaves the calling process's thread settings alone). ``reporter``: receives the run's
    progress (None: none).

    Returns
    -------
    dict with "status" ("ok" | "diverged" | "failed"), "summary" (dict or None),
    "wall_time_s" and "error" (one-line message, "" unless failed).
    """
    if in_worker:
        limit_worker_threads()
    t0 = time.perf_counter()
    finished = finished_outcome(run_dir)
    if finished is not None:  # a retried run whose earlier attempt completed after all
        return finished
    try:
        from particlegan.engine.simulate import run_to_dir

        resume = (Path(run_dir) / "checkpoint.npz").exists()
        try:
            run_to_dir(cfg, run_dir, reporter=reporter, figures=figures, resume=resume)
        except DataError:
            if not resume:
                raise
            # unusable checkpoint from the earlier attempt: start the run afresh
            (Path(run_dir) / "checkpoint.npz").unlink(missing_ok=True)
            run_to_dir(cfg, run_dir, reporter=reporter, figures=figures, resume=False)
    except Exception as exc:  # a failing run is data for the sweep, not a reason to stop it
        return {"status": "failed", "summary": None, "wall_time_s": time.perf_counter() - t0,
                "error": _one_line(exc)}
    outcome = finished_outcome(run_dir)
    if outcome is None:
        return {"status": "failed", "summary": None, "wall_time_s": time.perf_counter() - t0,
                "error": f"run finished but '{run_dir}' holds no readable meta.json/summary.json"}
    return outcome


def execute_group(cfgs: list[dict], run_dirs: list[str], figures=None, in_worker: bool = True) -> list[dict]:
    """Run sweep points as one batched ensemble
    (:func:`particlegan.engine.simulate.run_ensemble_to_dirs`); never raises for failing runs.

    Members already finished are read back; if the ensemble cannot be built or fails, every
    unfinished member is run alone (:func:`execute_run`), so that a failure is attributed to
    exactly the run that causes it. Returns one outcome per member, as :func:`execute_run`'s.
    """
    if in_worker:
        limit_worker_threads()
    t0 = time.perf_counter()
    outcomes = [finished_outcome(d) for d in run_dirs]
    todo = [i for i, o in enumerate(outcomes) if o is None]
    if len(todo) > 1:
        from particlegan.engine.simulate import run_ensemble_to_dirs

        try:
            run_ensemble_to_dirs([cfgs[i] for i in todo], [run_dirs[i] for i in todo], figures=figures)
        except Exception:  # run the members alone below: each reports its own failure
            pass
        else:
            for i in todo:
                outcomes[i] = finished_outcome(run_dirs[i]) or {
                    "status": "failed", "summary": None, "wall_time_s": time.perf_counter() - t0,
                    "error": f"ensemble finished but '{run_dirs[i]}' holds no readable meta.json/summary.json"}
    for i, o in enumerate(outcomes):
        if o is None:
            outcomes[i] = execute_run(cfgs[i], run_dirs[i], figures, None, in_worker=False)
    return outcomes


# ---------------------------------------------------------------------------------------------
# results table
# ---------------------------------------------------------------------------------------------
def observable_columns(plan: SweepPlan | None = None) -> tuple[str, ...]:
    """The summary observables stored per run (the columns between seed and steps).

    The fixed ``SUMMARY_KEYS``, then (with ``plan``) the optional series (``kid``, ``kid_std``,
    ``lr_scale``) that at least one run of the plan records; a run that does not record one
    leaves its cell empty, and a sweep where no run records it has no such column.
    """
    from particlegan.engine.simulate import OPTIONAL_SERIES_KEYS, SUMMARY_KEYS, optional_series_keys

    if plan is None:
        return tuple(SUMMARY_KEYS)
    on = {k for run in plan.runs for k in optional_series_keys(run.cfg)}
    return (*SUMMARY_KEYS, *(k for k in OPTIONAL_SERIES_KEYS if k in on))


def results_columns(plan: SweepPlan) -> list[str]:
    """Header of results.csv for ``plan``."""
    return ["run_id", *(a.key for a in plan.axes), *plan.fixed, "seed", *observable_columns(plan),
            *RESULT_COLUMNS_TAIL]


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return repr(value)
    if isinstance(value, (list, tuple, dict)):
        return json.dumps(value)
    return str(value)


def result_row(run: PlannedRun, outcome: Mapping, fixed: Sequence[str] = ()) -> dict[str, str]:
    """One results.csv row (all cells as text) for a run and its outcome; ``fixed``: the keys
    set with ``--set``, whose resolved values get a column each."""
    row = {"run_id": run.run_id}
    row.update({k: _cell(v) for k, v in run.params.items()})
    for key in fixed:
        section, name = key.split(".")
        row[key] = _cell(run.cfg[section][name])
    row["seed"] = str(run.seed)
    summary = outcome.get("summary") or {}
    from particlegan.engine.simulate import optional_series_keys

    # the fixed observables, then only the optional ones this run records
    for key in (*observable_columns(), *optional_series_keys(run.cfg)):
        row[key] = _cell(summary.get(key))
    row["steps"] = _cell(summary.get("steps"))
    row["status"] = outcome["status"]
    row["wall_time_s"] = _cell(outcome.get("wall_time_s"))
    row["error"] = outcome.get("error", "")
    return row


def write_results_csv(path: str | Path, plan: SweepPlan, outcomes: Mapping[str, Mapping]) -> None:
    """Atomically (re)write results.csv: a row per run with an outcome, in plan order."""
    from particlegan.store.storage import atomic_write_csv

    atomic_write_csv(path, (result_row(run, outcomes[run.run_id], plan.fixed) for run in plan.runs
                            if run.run_id in outcomes),
                     columns=results_columns(plan))


class ResultsAppender:
    """Adds one results.csv row per finished run at O(1) cost, without rereading the table.

    The table is first written whole (atomically, in plan order); each later row is one complete
    CSV line handed to the kernel in a single ``write`` on a file opened with ``O_APPEND``. A
    kill between two records leaves a complete table; a kill cannot split a ``write`` of a few
    hundred bytes to a local file, so no partial line is left behind. Rows appended during a
    sweep are in completion order; :meth:`close` (the end of the sweep) rewrites the table once
    in plan order. (Rewriting the table at every record cost 90 ms at 2028 rows, i.e. O(n^2)
    over a sweep.)
    """

    def __init__(self, path: str | Path, plan: SweepPlan, outcomes: Mapping[str, Mapping]):
        self.path = Path(path)
        self.plan = plan
        self.columns = results_columns(plan)
        write_results_csv(self.path, plan, outcomes)
        self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND)

    def append(self, run: PlannedRun, outcome: Mapping) -> None:
        """Add the row of ``run`` (one ``write`` call)."""
        import csv

        buf = io.StringIO()
        csv.DictWriter(buf, fieldnames=self.columns, lineterminator="\n",
                       extrasaction="ignore").writerow(result_row(run, outcome, self.plan.fixed))
        data = buf.getvalue().encode()
        written = os.write(self._fd, data)
        if written != len(data):  # only on a full disk: say that the row is cut short
            raise DataError(f"could not append a row to '{self.path}' (disk full?)")

    def close(self, outcomes: Mapping[str, Mapping]) -> None:
        """Stop appending and rewrite the table in plan order."""
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
        write_results_csv(self.path, self.plan, outcomes)


# ---------------------------------------------------------------------------------------------
# execution
# ---------------------------------------------------------------------------------------------
@dataclass
class SweepReport:
    """What a sweep did. Counts cover every run of the plan (skipped ones included)."""

    out_dir: Path
    n_runs: int
    n_ok: int = 0
    n_diverged: int = 0
    n_failed: int = 0
    n_skipped: int = 0
    n_retried: int = 0
    outcomes: dict[str, dict] = field(default_factory=dict)

    @property
    def results_path(self) -> Path:
        return self.out_dir / "results.csv"

    def describe(self) -> str:
        """One-line summary for the CLI."""
        return (f"{self.n_runs} runs: {self.n_ok} ok, {self.n_diverged} diverged, {self.n_failed} failed "
                f"({self.n_skipped} already finished and skipped, {self.n_retried} retried after a "
                f"worker crash) -> {self.results_path}")


@dataclass
class _Task:
    run: PlannedRun
    attempts: int = 0
    crashes: int = 0
    group: list[PlannedRun] | None = None  # the members of a batched ensemble (run: the first)


ENSEMBLE_CACHE_BYTES = 4 << 20  # auto group size: the members' particle features fit in this


def auto_group_size(cfg: dict) -> int:
    """Members per ensemble for ``--batch auto``: as many as keep the members' per-step
    feature arrays (dpsi: N x K per member, plus the targets' M x K with the real-sample
    penalty) within :data:`ENSEMBLE_CACHE_BYTES` (measured: at N = 128, K = 512 in float64 a
    group of 16 sweeps 8 MB per critic step and its penalty pass ran 1.6x slower per member
    than alone), at most 64, and as many as the free memory holds."""
    from particlegan.engine.resources import available_memory, estimate_memory

    item = 4 if cfg["run"]["dtype"] == "float32" else 8
    rows = cfg["particles"]["n"] + (cfg["target"]["n_samples"] if cfg["loss"]["penalty"] == "real" else 0)
    size = max(1, min(64, ENSEMBLE_CACHE_BYTES // max(1, rows * cfg["critic"]["features"] * item)))
    free = available_memory()
    if free is not None:
        size = max(1, min(size, int(0.5 * free // max(1, sum(estimate_memory(cfg).values())))))
    return size


def parse_batch(value) -> int | str:
    """``--batch``: a positive integer (members per ensemble; 1 runs every point alone) or
    "auto" (:func:`auto_group_size`)."""
    if value == "auto":
        return "auto"
    try:
        n = int(value)
    except (TypeError, ValueError):
        n = 0
    if isinstance(value, bool) or n < 1 or str(n) != str(value).strip():
        raise ConfigError(f"--batch must be a positive integer or 'auto', got {value!r}")
    return n


def group_tasks(tasks: list[_Task], batch: int | str, workers: int, runs_dir: Path) -> list[_Task]:
    """Gather the runs that can share a batched ensemble
    (:func:`particlegan.engine.ensemble.ensemble_key`) into group tasks of at most ``batch``
    members (``"auto"``: :func:`auto_group_size`), and never so few groups that a worker
    idles; runs that cannot, and runs with a checkpoint to resume, stay single tasks."""
    from particlegan.engine.ensemble import ensemble_key

    if batch == 1:
        return tasks
    singles, by_key = [], {}
    for task in tasks:
        key = None if (runs_dir / task.run.run_id / "checkpoint.npz").exists() else ensemble_key(task.run.cfg)
        if key is None:
            singles.append(task)
        else:
            by_key.setdefault(key, []).append(task.run)
    grouped = []
    for runs in by_key.values():
        size = auto_group_size(runs[0].cfg) if batch == "auto" else batch
        size = max(1, min(size, -(-len(runs) // workers)))
        for start in range(0, len(runs), size):
            part = runs[start:start + size]
            grouped.append(_Task(part[0]) if len(part) == 1 else _Task(part[0], group=part))
    return grouped + singles


class _InlineExecutor(cf.Executor):
    """Runs each call immediately in this process (``in_process=True``)."""

    def submit(self, fn, /, *args, **kwargs):
        fut: cf.Future = cf.Future()
        try:
            fut.set_result(fn(*args, **kwargs))
        except BaseException as exc:  # handed to the caller through the future, as a pool does
            fut.set_exception(exc)
        return fut


def _process_pool(workers: int) -> cf.ProcessPoolExecutor:
    import multiprocessing

    # spawn, not fork: numba's OpenMP/TBB layers and CUDA contexts are not fork-safe
    return cf.ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("spawn"),
                                  initializer=limit_worker_threads)


def _require_dask():
    """The dask and distributed modules, or ConfigError naming the optional extra."""
    try:
        import dask
        import distributed
    except ImportError:
        raise ConfigError("--dask needs the optional extra: pip install 'particlegan[dask]'") from None
    return dask, distributed


@contextmanager
def _dask_executor(address: str, jobs: int, probe_dir: Path | None = None) -> Iterator[tuple[cf.Executor, type]]:
    """A concurrent.futures executor on a Dask cluster and its lost-worker exception type.

    For a remote cluster, ``probe_dir`` (the sweep directory) is first checked to be visible
    to the workers (:func:`_check_workers_see`)."""
    dask, distributed = _require_dask()
    import logging

    cluster = None
    saved_environ = dict(os.environ)
    if address == "local":
        # one task per worker at a time and no scheduler-side retries: a worker death is then
        # blamed on exactly the run it was executing, and retried once by the sweep itself
        with dask.config.set({"distributed.scheduler.allowed-failures": 0,
                              "distributed.scheduler.worker-saturation": 1.0}):
            cluster = distributed.LocalCluster(n_workers=jobs, threads_per_worker=1, processes=True,
                                               dashboard_address=None, silence_logs=logging.CRITICAL,
                                               env=dict(WORKER_THREAD_ENV))
            client = distributed.Client(cluster)
    else:
        try:
            client = distributed.Client(address, timeout="20s")
        except (OSError, TimeoutError, ValueError) as exc:
            raise ConfigError(f"--dask: cannot connect to the Dask scheduler at {address!r}: "
                              f"{_one_line(exc)}") from None
    try:
        executor = client.get_executor(pure=False)
        if address != "local" and probe_dir is not None:
            _check_workers_see(executor, probe_dir, address)
        yield executor, distributed.KilledWorker
    finally:
        client.close()
        if cluster is not None:
            cluster.close()
            # the in-process nannies export dask's pre-spawn variables into our environment
            for key in set(os.environ) - set(saved_environ):
                del os.environ[key]
            os.environ.update(saved_environ)


def probe_file(path: str, token: str) -> bool:
    """Run on a Dask worker: does ``path`` exist there and hold ``token``? (The sweep writes a
    probe file into its directory and asks a worker to read it back: a check that both see the
    same file system.)"""
    try:
        return Path(path).read_text() == token
    except OSError:
        return False


def _check_workers_see(executor: cf.Executor, directory: Path, address: str) -> None:
    """ConfigError in one line when a worker of the cluster cannot read the sweep directory."""
    import secrets

    token = secrets.token_hex(8)
    probe = directory / f".dask_probe_{token}"
    probe.write_text(token)
    try:
        seen = executor.submit(probe_file, str(probe), token).result(timeout=120)
    except Exception as exc:
        raise ConfigError(f"--dask {address}: cannot run a task on the cluster: {_one_line(exc)}") from None
    finally:
        probe.unlink(missing_ok=True)
    if not seen:
        raise ConfigError(f"--dask {address}: the workers cannot see the sweep directory '{directory}' "
                          "(the runs are written by the workers: put --out on a file system shared "
                          "with them, at the same path)")


def check_jobs(jobs) -> int:
    """``--jobs``: an integer >= 1 (ConfigError otherwise)."""
    return int(ck.require("--jobs", jobs, ck.integer, ck.at_least(1)))


def describe_plan(plan: SweepPlan, out_dir: str | Path, jobs: int = 1) -> str:
    """What ``sweep --dry-run`` prints: the grid, how many runs there are, how many of them
    ``out_dir`` already holds finished, and an estimated time for the rest (from the wall times
    of the finished runs, spread over ``jobs`` workers). Reads only; writes nothing."""
    jobs = check_jobs(jobs)
    out = Path(out_dir)
    walls = []
    for run in plan.runs:
        done = finished_outcome(out / "runs" / run.run_id)
        if done is not None:
            walls.append(done["wall_time_s"])
    todo = len(plan.runs) - len(walls)
    lines = [f"sweep into '{out}': {len(plan.runs)} runs = "
             + " x ".join([f"{len(a.values)} {a.key}" for a in plan.axes] + [f"{len(plan.seeds)} seeds"])]
    lines += [f"  {a.key}: {', '.join(map(repr, a.values))}" for a in plan.axes]
    if plan.fixed:
        lines.append(f"  fixed: {', '.join(plan.fixed)}")
    finite = [w for w in walls if math.isfinite(w)]
    if not todo:
        eta = "nothing left to run"
    elif finite:
        from particlegan.progress import format_duration

        per_run = sum(finite) / len(finite)
        eta = (f"about {format_duration(per_run * todo / jobs)} on {jobs} worker(s) "
               f"({per_run:.3g} s per run, mean of the finished ones)")
    else:
        eta = "time unknown (no finished run to time from yet)"
    lines.append(f"  {len(walls)} already finished, {todo} to run: {eta}")
    return "\n".join(lines)


def _check_same_sweep(out: Path, plan: SweepPlan, replace: bool) -> None:
    """Refuse to run ``plan`` into a directory that holds a different sweep (another set of run
    ids in its sweep.json), unless ``replace``: then the stored runs that the new plan does not
    contain are deleted, so that results.csv lists every run in the directory."""
    import shutil

    old = read_json_object(out / "sweep.json")
    if old is None:
        return
    old_ids = {r.get("run_id") for r in old.get("runs", []) if isinstance(r, dict)}
    new_ids = {r.run_id for r in plan.runs}
    if old_ids == new_ids:
        return
    if not replace:
        common = len(old_ids & new_ids)
        raise DataError(f"sweep directory '{out}' holds a different sweep ({len(old_ids)} runs, "
                        f"{common} of them in this one of {len(new_ids)}); choose another --out, or "
                        "pass --replace to delete the runs this sweep does not contain")
    runs_dir = out / "runs"
    if runs_dir.is_dir():
        for d in runs_dir.iterdir():
            if d.is_dir() and d.name not in new_ids:
                shutil.rmtree(d)


def run_sweep(plan: SweepPlan, out_dir: str | Path, jobs: int = 1, dask: str | None = None,
              in_process: bool = False, figures=None,
              reporter: Reporter | None = None, replace: bool = False,
              run_reporter=None, batch: int | str = 1) -> SweepReport:
    """Execute the unfinished runs of ``plan`` into ``out_dir`` and write results.csv.

    Parameters
    ----------
    plan : from :func:`plan_sweep`.
    out_dir : sweep directory (created); locked for the duration of the sweep.
    jobs : number of local worker processes (or of Dask workers with ``dask="local"``).
    dask : None (local processes), ``"local"`` (start a ``distributed.LocalCluster`` with
        ``jobs`` single-threaded worker processes) or a scheduler address.
    in_process : run one at a time in this process (no crash isolation; for debugging).
    figures : None, or a picklable ``figures(res, run_dir)`` drawing each run's figures in its
        worker (the CLI passes :func:`particlegan.plots.plotting.write_run_figures`, as
        ``particlegan run`` does); None draws nothing.
    reporter : progress bar over the runs to execute.
    replace : ``out_dir`` may hold a different sweep: delete its runs that ``plan`` does not
        contain (without it such a directory is refused).
    run_reporter : None, or a picklable ``f(run_id, attempt) -> Reporter | None`` called where
        each attempt of a run executes (attempt 1, then 2 for a retry); the run reports its
        progress to what it returns.
    batch : members per batched ensemble (:mod:`particlegan.engine.ensemble`): 1 (default) runs
        every point alone; n > 1 or ``"auto"`` (:func:`auto_group_size`) advances the runs that
        share array shapes (:func:`particlegan.engine.ensemble.ensemble_key`) as groups of up to
        n, each member stored exactly as its own run (bitwise the same results). A group whose
        worker dies is rerun member by member. Runs in a group report no per-run progress.

    Returns
    -------
    SweepReport with the counts of ok / diverged / failed / skipped runs.

    Raises
    ------
    DataError : the directory is locked by another sweep, not writable, or holds a different
        sweep (without ``replace``).
    ConfigError : bad ``jobs``, or ``dask`` requested without the optional extra.
    """
    from particlegan.store.storage import atomic_write_json, ensure_dir

    jobs = check_jobs(jobs)
    if dask is not None:
        if in_process:
            raise ConfigError("--in-process and --dask exclude each other")
        _require_dask()  # before touching the directory
    reporter = reporter or null_reporter()
    # absolute before any work is sent: a Dask worker has its own working directory
    out = ensure_dir(out_dir).resolve()
    report = SweepReport(out_dir=out, n_runs=len(plan.runs))
    with SweepLock(out):
        _check_same_sweep(out, plan, replace)
        atomic_write_json(out / "sweep.json", plan.definition())
        ensure_dir(out / "runs")
        csv_path = out / "results.csv"
        outcomes = report.outcomes
        todo = []
        for run in plan.runs:
            done = finished_outcome(out / "runs" / run.run_id)
            if done is None:
                todo.append(_Task(run))
            else:
                outcomes[run.run_id] = done
                report.n_skipped += 1
        table = ResultsAppender(csv_path, plan, outcomes)
        try:
            if report.n_skipped:
                reporter.info(f"{report.n_skipped} of {len(plan.runs)} runs already finished in '{out}'; "
                              "skipping them")
            if todo:
                reporter.start(total=len(todo), label="sweep")
                todo = group_tasks(todo, parse_batch(batch), 1 if in_process else jobs, out / "runs")

                def record(task: _Task, outcome: dict) -> None:
                    outcomes[task.run.run_id] = outcome
                    table.append(task.run, outcome)
                    if outcome["status"] == "failed":
                        reporter.info(f"run {task.run.run_id} failed: {outcome['error']}")
                    reporter.advance(1)

                if in_process:
                    _drive(todo, out, figures, record, report, lambda n: _InlineExecutor(), 1, (), False, run_reporter,
                           in_worker=False)
                elif dask is not None:
                    with _dask_executor(dask, jobs, probe_dir=out) as (executor, killed_worker):
                        # the scheduler queues tasks itself: submit everything at once
                        _drive(todo, out, figures, record, report, lambda n: executor, len(todo),
                               (killed_worker,), False, run_reporter, shutdown=False)
                else:
                    _drive(todo, out, figures, record, report, _process_pool, jobs,
                           (concurrent.futures.process.BrokenProcessPool,), True, run_reporter)
                reporter.finish()
        finally:
            table.close(outcomes)
    for outcome in outcomes.values():
        status = outcome["status"]
        report.n_ok += status == "ok"
        report.n_diverged += status == "diverged"
        report.n_failed += status == "failed"
    return report


def _drive(tasks: list[_Task], out: Path, figures, record, report: SweepReport, make_executor,
           capacity: int, lost_worker: tuple[type, ...], isolate: bool, run_reporter,
           shutdown: bool = True, in_worker: bool = True) -> None:
    """Submit tasks, collect outcomes, retry runs whose worker died.

    With ``isolate`` (local process pool, where a dead worker breaks the whole pool and every
    run in flight with it) the runs caught in a crash are retried one at a time in a separate
    one-worker pool, so a second crash is attributed to exactly the run that caused it.
    """
    todo = deque(tasks)
    retry = deque()
    pools: dict[str, cf.Executor | None] = {"main": None, "isolated": None}
    inflight: dict[cf.Future, tuple[_Task, str, cf.Executor]] = {}

    def submit(task: _Task, kind: str) -> None:
        for _ in range(2):
            if pools[kind] is None:
                pools[kind] = make_executor(1 if kind == "isolated" else capacity)
            executor = pools[kind]
            task.attempts += 1
            try:
                if task.group is not None:
                    fut = executor.submit(execute_group, [r.cfg for r in task.group],
                                          [str(out / "runs" / r.run_id) for r in task.group], figures, in_worker)
                else:
                    fut = executor.submit(_execute_attempt, task.run.cfg, str(out / "runs" / task.run.run_id),
                                          figures, run_reporter, task.run.run_id, task.attempts, in_worker)
            except lost_worker:  # the pool broke before we saw it: start a new one
                task.attempts -= 1
                pools[kind] = None
                continue
            inflight[fut] = (task, kind, executor)
            return
        raise RuntimeError("cannot start worker processes")

    def drop_pool(kind: str, executor: cf.Executor) -> None:
        if pools[kind] is executor:
            pools[kind] = None
            if shutdown:
                executor.shutdown(wait=False, cancel_futures=True)

    try:
        while todo or retry or inflight:
            isolated_busy = any(kind == "isolated" for _, kind, _ in inflight.values())
            if retry and not isolated_busy:
                if isolate:
                    submit(retry.popleft(), "isolated")
                    isolated_busy = True
                else:
                    while retry:
                        submit(retry.popleft(), "main")
            # the isolation worker takes one of the `capacity` slots while it runs
            limit = capacity - 1 if (isolated_busy and capacity > 1) else capacity
            n_main = sum(kind == "main" for _, kind, _ in inflight.values())
            while todo and n_main < limit:
                submit(todo.popleft(), "main")
                n_main += 1
            done, _ = cf.wait(list(inflight), return_when=cf.FIRST_COMPLETED)
            for fut in done:
                task, kind, executor = inflight.pop(fut)
                exc = fut.exception()
                if task.group is not None and exc is not None:
                    # the ensemble's worker died (or the call failed): its members go on alone,
                    # so that a second crash is attributed to exactly one run
                    lost = bool(lost_worker) and isinstance(exc, lost_worker)
                    if lost:
                        drop_pool(kind, executor)
                    report.n_retried += len(task.group)
                    retry.extend(_Task(r, crashes=int(lost)) for r in task.group)
                elif task.group is not None:
                    for run, outcome in zip(task.group, fut.result()):
                        record(_Task(run), outcome)
                elif exc is None:
                    record(task, fut.result())
                elif lost_worker and isinstance(exc, lost_worker):
                    task.crashes += 1
                    drop_pool(kind, executor)
                    if task.crashes >= 2:
                        record(task, {"status": "failed", "summary": None, "wall_time_s": math.nan,
                                      "error": "the worker process died twice while running this run "
                                               "(killed by a signal, or out of memory)"})
                    else:
                        report.n_retried += 1
                        retry.append(task)
                else:
                    record(task, {"status": "failed", "summary": None, "wall_time_s": math.nan,
                                  "error": _one_line(exc)})
    finally:
        for fut in inflight:
            fut.cancel()
        if shutdown:
            for executor in pools.values():
                if executor is not None:
                    executor.shutdown(wait=not inflight, cancel_futures=True)
