"""Checkpoints of a running simulation: everything needed to continue it bitwise-exactly.

A checkpoint (``checkpoint.npz``, written atomically, no pickles) holds the engine's state
serialised field by field, whatever the engine (:func:`state_fields`: arrays as arrays,
numbers as JSON, random-number streams as their bit-generator state, nested state dataclasses
(optimizer states, the MLP generator's state, a kernel critic's memory) under
``<field>__<name>``), and the recorder's part:
the observables and snapshots recorded so far, the observables random stream (KID subsets)
and the KID learning-rate schedule's state (``sched__*``). The static model is rebuilt from the
stored config and seed; :func:`restore_state` fills the rebuilt initial state with the stored
fields.
"""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np

from particlegan.errors import DataError
from particlegan.store.storage import atomic_save_npz

_JSON_KEY = "__json__"
FORMAT = 3  # 1: the hand-written field lists before 2026-12-03; 2: optimizers as objects


def _json_bytes(obj) -> np.ndarray:
    return np.frombuffer(json.dumps(obj, sort_keys=True).encode(), dtype=np.uint8)


def _state_types() -> dict:
    """The dataclasses that may sit inside a state field (rebuilt by name on restore)."""
    from particlegan.model.critics import KernelCriticState
    from particlegan.model.generators import MLPGeneratorState
    from particlegan.model.optimizers import OptState

    return {cls.__name__: cls for cls in (KernelCriticState, MLPGeneratorState, OptState)}


def _put(key: str, value, arrays: dict, scalars: dict) -> None:
    """Store ``value`` under ``key``: arrays in ``arrays``, everything else JSON in ``scalars``
    (tagged dicts for streams and nested dataclasses, e.g. optimizer states, whose parts go
    under ``key__<part>``)."""
    if isinstance(value, np.ndarray):
        arrays[key] = value
    elif isinstance(value, np.random.Generator):
        scalars[key] = {"__rng__": value.bit_generator.state}
    elif dataclasses.is_dataclass(value) and not isinstance(value, type):
        names = [f.name for f in dataclasses.fields(value)]
        scalars[key] = {"__dataclass__": type(value).__name__, "fields": names}
        for name in names:
            _put(f"{key}__{name}", getattr(value, name), arrays, scalars)
    elif value is None or isinstance(value, (bool, int, float, str, list, tuple, dict)):
        scalars[key] = value  # (plain containers: JSON, as the KID schedule's state dict holds)
    elif isinstance(value, np.generic):
        scalars[key] = value.item()
    else:
        raise TypeError(f"state field {key!r} of type {type(value).__name__} has no checkpoint form")


def state_fields(state) -> tuple[dict, dict]:
    """(arrays, JSON scalars) of every field of the state dataclass ``state`` (see :func:`_put`)."""
    arrays: dict[str, np.ndarray] = {}
    scalars: dict = {}
    for f in dataclasses.fields(state):
        _put(f.name, getattr(state, f.name), arrays, scalars)
    return arrays, scalars


def _get(key: str, arrays: dict, scalars: dict):
    """The value stored under ``key`` (see :func:`_put`)."""
    from particlegan.model.streams import generator_in_state

    if key in arrays:
        return arrays[key]
    if key not in scalars:
        raise DataError(f"no field {key!r}")
    value = scalars[key]
    if not isinstance(value, dict):
        return value
    if "__rng__" in value:
        return generator_in_state(value["__rng__"])
    if "__dataclass__" in value:
        cls = _state_types().get(value["__dataclass__"])
        if cls is None:
            raise DataError(f"field {key!r} holds an unknown {value['__dataclass__']!r}")
        return cls(**{n: _get(f"{key}__{n}", arrays, scalars) for n in value["fields"]})
    return value


def restore_state(fresh, ck: dict):
    """The rebuilt initial state ``fresh`` with every field taken from the checkpoint ``ck``
    (:func:`load_checkpoint`); DataError when a field is missing or does not fit."""
    arrays, scalars = ck["fields"]
    values = {f.name: _get(f.name, arrays, scalars) for f in dataclasses.fields(fresh)}
    return dataclasses.replace(fresh, **values)


def save_checkpoint(path: str | Path, run_id: str, state, series: dict[str, list], snapshots: list,
                    snapshot_taken: list, schedule: dict | None = None,
                    observables_rng: np.random.Generator | None = None) -> None:
    """Atomically write the checkpoint of ``state`` (any engine's state dataclass, field by field:
    :func:`state_fields`) with the recorder's ``series``, ``snapshots`` and ``snapshot_taken``;
    ``schedule``: a learning-rate schedule's ``state_dict()`` (stored as ``sched__*``);
    ``observables_rng``: the observables stream (KID subset draws)."""
    arrays, fields = state_fields(state)
    scalars: dict = {"run_id": run_id, "format": FORMAT, **fields}
    if observables_rng is not None:
        scalars["observables_rng"] = observables_rng.bit_generator.state
    if schedule is not None:
        for k, v in schedule.items():
            _put(f"sched__{k}", v, arrays, scalars)
    for k, v in series.items():
        arrays[f"series__{k}"] = np.asarray(v, dtype=np.int64 if k == "step" else np.float64)
    if snapshots:
        arrays["snapshots"] = np.stack(snapshots)
    arrays["snapshot_taken"] = np.asarray(snapshot_taken, dtype=np.int64)
    arrays[_JSON_KEY] = _json_bytes(scalars)
    atomic_save_npz(path, arrays)


def load_checkpoint(path: str | Path, run_id: str) -> dict:
    """Read a checkpoint; DataError if it is unreadable, of an older format or belongs to another
    config. Returns {"step", "x", "w" (the state's, for the checks), "fields" (the
    state's (arrays, scalars), for :func:`restore_state`), "series", "snapshots",
    "snapshot_taken", "schedule", "observables_rng"}."""
    p = Path(path)
    if not p.exists():
        raise DataError(f"no checkpoint '{p}' to resume from (was run.checkpoint_every > 0?)")
    try:
        with np.load(p, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
        scalars = json.loads(arrays.pop(_JSON_KEY).tobytes().decode())
    except Exception as exc:
        raise DataError(f"checkpoint '{p}' is unreadable: {exc}") from None
    if scalars.get("run_id") != run_id:
        raise DataError(f"checkpoint '{p}' belongs to run {scalars.get('run_id')}, not {run_id}")
    if scalars.get("format") != FORMAT:
        raise DataError(f"checkpoint '{p}' was written by an older particlegan (format "
                        f"{scalars.get('format', 1)}, this one reads {FORMAT}); delete it to restart the run")
    sched = {k[len("sched__"):]: v for k, v in {**arrays, **scalars}.items() if k.startswith("sched__")}
    series = {k[len("series__"):]: list(v) for k, v in arrays.items() if k.startswith("series__")}
    return {
        "step": scalars.get("step"), "x": arrays.get("x"), "w": arrays.get("w"),
        "fields": (arrays, scalars),
        "series": series, "schedule": sched, "observables_rng": scalars.get("observables_rng"),
        "snapshots": list(arrays["snapshots"]) if "snapshots" in arrays else [],
        "snapshot_taken": [int(s) for s in arrays["snapshot_taken"]],
    }
