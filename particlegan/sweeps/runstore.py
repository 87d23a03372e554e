"""The run store: find, filter and load the runs kept in run and sweep directories.

Every run directory (``particlegan run --out DIR``, or ``SWEEP/runs/<id>/``) holds config.json,
result.npz, summary.json and meta.json (:mod:`particlegan.engine.simulate`). This module reads them
back:

* :func:`list_runs` -- one record per run below a directory (a run, a sweep, or a folder of
  runs such as ``runs/``): id, status, seed, the parameters that differ from the defaults and
  the summary observables, filtered with ``key=value`` conditions (``particlegan ls``);
* :func:`load_run` -- one run's config, summary, series and snapshots as a :class:`Run`;
* :func:`load_sweep` -- a sweep's results.csv as a pandas DataFrame when pandas is installed,
  else as a dict of column arrays.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from particlegan.errors import ConfigError, DataError
from particlegan.sweeps.sweep import read_json_object

DEFAULT_COLUMNS = ("collapse", "modes_covered", "mmd2")


def run_directories(directory: str | Path) -> list[Path]:
    """Run directories at or below ``directory``: itself if it is a run, else the runs of a
    sweep (``DIR/runs/*``), else its sub-directories that are runs (sorted by name)."""
    d = Path(directory)
    if not d.is_dir():
        raise DataError(f"'{d}' is not a directory")
    if (d / "config.json").is_file():
        return [d]
    base = d / "runs" if (d / "runs").is_dir() else d
    return sorted(p for p in base.iterdir() if p.is_dir() and (p / "config.json").is_file())


def changed_parameters(cfg: dict) -> dict[str, Any]:
    """``{"section.key": value}`` of the keys of a resolved config that differ from the
    defaults (content hashes and the seed left out: they are shown elsewhere)."""
    from particlegan.store.config import default_config

    default = default_config()
    out = {}
    for sec, table in cfg.items():
        for key, value in table.items():
            if key.endswith("_sha256") or (sec, key) == ("run", "seed"):
                continue
            if default.get(sec, {}).get(key, object()) != value:
                out[f"{sec}.{key}"] = value
    return out


def _parse_where(items: Sequence[str]) -> list[tuple[str, Any]]:
    from particlegan.store.config import parse_override

    conds = []
    for item in items:
        if "=" not in item:
            raise ConfigError(f"--where {item!r} must look like key=value")
        key, raw = (s.strip() for s in item.split("=", 1))
        value = parse_override(f"x.y={raw}")[2]
        conds.append((key, value))
    return conds


def _matches(record: dict, key: str, value: Any) -> bool:
    if key in record["summary"]:
        got = record["summary"][key]
    elif key in ("status", "run_id", "seed"):
        got = record[key]
    elif "." in key:
        sec, name = key.split(".", 1)
        got = record["config"].get(sec, {}).get(name)
    else:
        raise ConfigError(f"--where {key}: not a config key (section.key) or a summary observable")
    if isinstance(value, (int, float)) and not isinstance(value, bool) and isinstance(got, (int, float)):
        return got is not None and math.isclose(float(got), float(value), rel_tol=1e-9, abs_tol=1e-12)
    return str(got) == str(value)


def list_runs(directory: str | Path, where: Sequence[str] = ()) -> list[dict]:
    """Records of the runs at or below ``directory`` that satisfy every ``key=value`` of
    ``where`` (config keys as ``section.key``, summary observables, ``status``, ``seed``).

    Returns
    -------
    list of dicts with ``run_id``, ``path``, ``status`` ("ok", "diverged", or "unfinished" when
    meta.json is missing), ``seed``, ``params`` (:func:`changed_parameters`), ``summary`` and
    ``config`` (the resolved config).
    """
    conds = _parse_where(where)
    records = []
    for d in run_directories(directory):
        stored = read_json_object(d / "config.json") or {}
        cfg = stored.get("config", stored)
        if not isinstance(cfg, dict) or "run" not in cfg:
            continue
        summary = read_json_object(d / "summary.json") or {}
        meta = read_json_object(d / "meta.json")
        status = summary.get("status", "ok") if meta is not None else "unfinished"
        rec = {"run_id": (meta or {}).get("run_id", d.name), "path": str(d), "status": status,
               "seed": cfg["run"].get("seed"), "params": changed_parameters(cfg), "summary": summary,
               "config": cfg}
        if all(_matches(rec, k, v) for k, v in conds):
            records.append(rec)
    return records


def _fmt(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def format_runs(records: Sequence[dict], columns: Sequence[str] = DEFAULT_COLUMNS) -> str:
    """A text table of :func:`list_runs` records: id, status, seed, the chosen observables and
    the parameters that differ from the defaults (those shared by every listed run are printed
    once, above the table)."""
    if not records:
        return "no runs"
    common = dict(records[0]["params"])
    for rec in records[1:]:
        common = {k: v for k, v in common.items() if k in rec["params"] and rec["params"][k] == v}
    header = ["run_id", "status", "seed", *columns, "parameters"]
    rows = []
    for rec in records:
        own = {k: v for k, v in rec["params"].items() if k not in common}
        rows.append([rec["run_id"], rec["status"], _fmt(rec["seed"]),
                     *(_fmt(rec["summary"].get(c)) for c in columns),
                     " ".join(f"{k}={_fmt(v)}" for k, v in own.items()) or "-"])
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(header[:-1])]
    lines = []
    if common:
        lines.append("all runs: " + " ".join(f"{k}={_fmt(v)}" for k, v in common.items()))
    for r in [header, *rows]:
        lines.append("  ".join(c.ljust(w) for c, w in zip(r[:-1], widths)) + "  " + r[-1])
    lines.append(f"{len(records)} run(s)")
    return "\n".join(lines)


@dataclass
class Run:
    """A stored run read back by :func:`load_run` (or returned by :func:`particlegan.run`).

    Attributes
    ----------
    config : the full resolved config.
    summary : final observables, status and steps (summary.json).
    series : observable name -> (R,) array, plus "step".
    snapshots : (S, N, d) particle positions at ``snapshot_steps`` (S,).
    final_particles : (N, d).
    target_samples : (M, d).
    path : the run directory (None for a run kept in memory only).
    meta : meta.json (versions, provenance, wall time), empty for an in-memory run.
    """

    config: dict
    summary: dict
    series: dict[str, np.ndarray]
    snapshots: np.ndarray
    snapshot_steps: np.ndarray
    final_particles: np.ndarray
    target_samples: np.ndarray
    path: Path | None = None
    meta: dict = field(default_factory=dict)

    @property
    def status(self) -> str:
        return self.summary.get("status", "ok")

    def to_xarray(self):
        """The series as an ``xarray.Dataset`` over ``step`` and the snapshots as a
        (snapshot_step, particle, dim) variable; needs xarray (ConfigError otherwise)."""
        try:
            import xarray as xr
        except ImportError:
            raise ConfigError("Run.to_xarray() needs xarray: pip install xarray") from None
        data = {k: ("step", v) for k, v in self.series.items() if k != "step"}
        data["snapshots"] = (("snapshot_step", "particle", "dim"), self.snapshots)
        return xr.Dataset(data, coords={"step": self.series["step"], "snapshot_step": self.snapshot_steps},
                          attrs={"status": self.status, "run_id": self.meta.get("run_id", "")})


def load_run(run_dir: str | Path) -> Run:
    """Read a finished run directory back as a :class:`Run` (DataError if it is not one)."""
    from particlegan.sweeps.analysis import load_run as load_run_arrays
    from particlegan.engine.observables import SERIES_KEYS
    from particlegan.engine.simulate import OPTIONAL_SERIES_KEYS

    data = load_run_arrays(run_dir)  # result.npz arrays plus config, summary, meta
    if not data["config"] or not data["summary"]:
        raise DataError(f"'{run_dir}' is not a finished run directory (config.json, summary.json and "
                        "result.npz are needed)")
    series = {k: data[k] for k in ("step", *SERIES_KEYS, *OPTIONAL_SERIES_KEYS) if k in data}
    return Run(config=data["config"], summary=data["summary"], series=series,
               snapshots=data["snapshots"], snapshot_steps=data["snapshot_steps"],
               final_particles=data["final_particles"], target_samples=data["target_samples"],
               path=Path(run_dir), meta=data["meta"])


def load_sweep(sweep_dir: str | Path, as_frame: bool | None = None):
    """A sweep's results.csv as a table: a ``pandas.DataFrame`` when pandas is installed (or
    ``as_frame=True``, which then requires it), else (or with ``as_frame=False``) a dict of
    column name -> numpy array (float columns as float64, text columns as str)."""
    from particlegan.sweeps.analysis import load_results

    rows = load_results(sweep_dir)
    if as_frame is not False:
        try:
            import pandas as pd
        except ImportError:
            if as_frame:
                raise ConfigError("load_sweep(as_frame=True) needs pandas: pip install pandas") from None
        else:
            return pd.DataFrame(rows)
    names = list(rows[0]) if rows else []
    return {k: np.asarray([r[k] for r in rows]) for k in names}
