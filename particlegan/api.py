"""The Python API: what ``import particlegan`` offers (see README, "From Python").

    import particlegan as pg
    run = pg.run({"generator": {"phi": 0.5}}, seed=1)            # validated, defaults filled in
    run.series["collapse"], run.snapshots, run.summary["status"]
    pg.run("sims/mode_collapse/config.toml", overrides=["run.steps=200"], out="runs/mc")
    pg.load_run("runs/mc")                                         # a stored run, same object
    report = pg.grid_sweep("cfg.toml", grid={"generator.phi": [0, 0.5]}, seeds=2, out="sweeps/a")
    pg.load_sweep("sweeps/a")                                      # DataFrame, or dict of arrays

Every entry validates its input exactly as the CLI does (ConfigError / DataError with a
one-line message naming the key or file).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping, Sequence

from particlegan.sweeps.runstore import Run, load_run, load_sweep  # noqa: F401  (re-exported)


def resolve(config: Mapping | str | Path | None = None, overrides: Sequence[str] = (),
            seed: int | None = None) -> dict:
    """The full resolved config from a (partial) dict, a TOML file or a stored config.json,
    plus ``section.key=value`` overrides and a seed; every key, type and range is checked."""
    from particlegan.store.config import config_from_json, config_from_sources, resolve_config

    if config is None or isinstance(config, Mapping):
        return resolve_config(config, list(overrides), seed)
    if str(config).endswith(".json"):
        return resolve_config(config_from_json(config), list(overrides), seed)
    return config_from_sources(config, list(overrides), seed)


def run(config: Mapping | str | Path | None = None, *, overrides: Sequence[str] = (),
        seed: int | None = None, out: str | Path | None = None, force: bool = False,
        plot: bool = False, reporter=None) -> Run:
    """Run one simulation and return it as a :class:`particlegan.sweeps.runstore.Run`.

    Parameters
    ----------
    config : a partial or full config dict ``{section: {key: value}}``, a TOML path or a stored
        config.json (None: the defaults).
    overrides : ``section.key=value`` strings applied on top.
    seed : overrides ``run.seed``.
    out : also store the run in this directory (as ``particlegan run --out``; ``force``
        replaces a different run there); None keeps it in memory only.
    plot : with ``out``, also write particles.png.
    reporter : a :class:`particlegan.progress.Reporter` (default: quiet).
    """
    from particlegan.engine.simulate import result_arrays, run_to_dir, simulate

    cfg = resolve(config, overrides, seed)
    if out is not None:
        figures = None
        if plot:
            from particlegan.plots.plotting import write_run_figures as figures
        run_to_dir(cfg, out, reporter=reporter, figures=figures, force=force)
        return load_run(out)
    res = simulate(cfg, reporter)
    arrays = result_arrays(res)
    return Run(config=cfg, summary=res.summary(), series=dict(res.series), snapshots=res.snapshots,
               snapshot_steps=res.snapshot_steps, final_particles=arrays["final_particles"],
               target_samples=arrays["target_samples"])


def grid_sweep(config: Mapping | str | Path | None = None, *,
               grid: Mapping[str, Sequence[Any]] | None = None, overrides: Sequence[str] = (),
               seeds: int | Sequence[int] = 1, out: str | Path, jobs: int = 1, plot: bool = False,
               in_process: bool = False, reporter=None):
    """Run a sweep (as ``particlegan sweep``) and return its :class:`particlegan.sweeps.sweep.SweepReport`.

    (Not called ``sweep``: that name is the module :mod:`particlegan.sweeps.sweep`.)

    ``grid`` maps ``section.key`` to the values to sweep (Cartesian product), ``seeds`` is a
    count S (seeds 0..S-1) or a list; ``overrides`` fix keys for every run. Results:
    :func:`load_sweep` on ``out``.
    """
    from particlegan.sweeps.sweep import GridAxis, _check_key, load_base, parse_seeds, plan_sweep, run_sweep

    base = load_base(config, overrides)
    axes = [GridAxis(key, tuple(values), f"{key}={','.join(map(str, values))}")
            for key, values in (grid or {}).items()]
    for axis in axes:
        _check_key(axis.key, "grid")
    fixed = [item.split("=", 1)[0].strip() for item in overrides]
    config_path = str(config) if config is not None and not isinstance(config, Mapping) else None
    plan = plan_sweep(base, axes, parse_seeds(seeds), config_path=config_path, fixed_keys=fixed)
    figures = None
    if plot:
        from particlegan.plots.plotting import write_run_figures as figures
    return run_sweep(plan, out, jobs=jobs, in_process=in_process, figures=figures, reporter=reporter)
