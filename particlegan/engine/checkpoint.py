"""Checkpoints of a running simulation: everything needed to continue it bitwise-exactly.

A checkpoint (``checkpoint.npz``, written atomically, no pickles) holds the particle positions,
the critic state (random-feature weights or the kernel critic's memory), the critic optimizer's
state, the interpolate-noise generator state (neural model: also the generator parameters, the
latents, the generator optimizer's state and the latent generator state), the step counter, the
learning-rate factor ``lr_scale`` and the KID learning-rate schedule's state (``sched__*``), the
observables random stream (KID subsets), and the observables and snapshots recorded so far. The static model is rebuilt from the stored config and seed.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from particlegan.errors import DataError
from particlegan.store.storage import atomic_save_npz

_JSON_KEY = "__json__"


def _json_bytes(obj) -> np.ndarray:
    return np.frombuffer(json.dumps(obj, sort_keys=True).encode(), dtype=np.uint8)


def _split_state_dict(prefix: str, sd: dict, arrays: dict, scalars: dict) -> None:
    """Arrays of an optimizer state_dict go to ``arrays``; JSON-able values to ``scalars``."""
    for k, v in sd.items():
        if isinstance(v, np.ndarray):
            arrays[f"{prefix}{k}"] = v
        else:
            scalars[f"{prefix}{k}"] = v.item() if isinstance(v, np.generic) else v


def save_checkpoint(path: str | Path, run_id: str, state, series: dict[str, list], snapshots: list, snapshot_taken: list,
                    extra: tuple[dict, dict] | None = None, schedule: dict | None = None,
                    observables_rng: np.random.Generator | None = None) -> None:
    """Atomically write the checkpoint of ``state`` (a :class:`particlegan.engine.dynamics.State`
    or a neural state; its noise stream ``state.noise`` is stored as ``noise_rng``).

    ``extra`` = (arrays, JSON scalars) of an engine's own state (the neural model's generator
    parameters, latents, generator optimizer ``gopt__*`` and latent RNG state; see
    :func:`particlegan.engine.neural_model.checkpoint_payload`), stored under their own names.
    ``schedule``: a learning-rate schedule's ``state_dict()`` (stored as ``sched__*``);
    ``observables_rng``: the observables stream (KID subset draws). ``state.lr_scale`` is stored.
    """
    arrays: dict[str, np.ndarray] = {"x": state.x}
    scalars: dict = {"run_id": run_id, "step": int(state.step),
                     "noise_rng": state.noise.bit_generator.state,
                     "lr_scale": float(getattr(state, "lr_scale", 1.0))}
    if observables_rng is not None:
        scalars["observables_rng"] = observables_rng.bit_generator.state
    if schedule is not None:
        _split_state_dict("sched__", schedule, arrays, scalars)
    if state.w is not None:
        arrays["w"] = state.w
    if state.kernel_state is not None:
        arrays["kernel_snapshots"] = state.kernel_state.snapshots
        arrays["kernel_coefs"] = state.kernel_state.coefs
    if state.critic_opt is not None:
        _split_state_dict("opt__", state.critic_opt.state_dict(), arrays, scalars)
    for k, v in series.items():
        arrays[f"series__{k}"] = np.asarray(v, dtype=np.int64 if k == "step" else np.float64)
    if snapshots:
        arrays["snapshots"] = np.stack(snapshots)
    arrays["snapshot_taken"] = np.asarray(snapshot_taken, dtype=np.int64)
    if extra is not None:
        arrays.update(extra[0])
        scalars.update(extra[1])
    arrays[_JSON_KEY] = _json_bytes(scalars)
    atomic_save_npz(path, arrays)


def load_checkpoint(path: str | Path, run_id: str) -> dict:
    """Read a checkpoint; DataError if it is unreadable or belongs to another config."""
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
    opt = {k[len("opt__"):]: v for k, v in {**arrays, **scalars}.items() if k.startswith("opt__")}
    gen_opt = {k[len("gopt__"):]: v for k, v in {**arrays, **scalars}.items()
               if k.startswith("gopt__")}
    sched = {k[len("sched__"):]: v for k, v in {**arrays, **scalars}.items() if k.startswith("sched__")}
    series = {k[len("series__"):]: list(v) for k, v in arrays.items() if k.startswith("series__")}
    return {
        "step": scalars["step"], "x": arrays["x"], "w": arrays.get("w"),
        "kernel_snapshots": arrays.get("kernel_snapshots"), "kernel_coefs": arrays.get("kernel_coefs"),
        "opt": opt, "noise_rng": scalars["noise_rng"], "series": series,
        "lr_scale": float(scalars.get("lr_scale", 1.0)), "schedule": sched,
        "observables_rng": scalars.get("observables_rng"),
        "snapshots": list(arrays["snapshots"]) if "snapshots" in arrays else [],
        "snapshot_taken": [int(s) for s in arrays["snapshot_taken"]],
        # neural model (absent for the particle model)
        "theta_g": arrays.get("theta_g"), "z": arrays.get("z"), "gen_opt": gen_opt,
        "latent_rng": scalars.get("latent_rng"),
    }
