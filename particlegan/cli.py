"""Command-line interface: parses arguments, then calls the library (nothing else lives here)."""
from __future__ import annotations

import functools
import sys

import click

from particlegan import __version__
from particlegan.errors import ParticleGANError


def user_errors_to_exit(func):
    """Turn package errors into a one-line message on stderr and exit status 2 (no traceback)."""

    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        try:
            return func(*args, **kwargs)
        except ParticleGANError as exc:
            click.echo(f"error: {exc}", err=True)
            sys.exit(2)
        except MemoryError:
            click.echo("error: out of memory: the requested sizes do not fit in this machine's "
                       "memory (see particlegan.engine.resources for the estimate)", err=True)
            sys.exit(2)

    return wrapper


@click.group()
@click.version_option(__version__, prog_name="particlegan")
def main():
    """particlegan: GAN training simulated as particle dynamics."""
    import os
    import shlex

    from particlegan.numba_setup import configure

    configure()  # process settings (numba, idle OpenMP / OpenBLAS threads), before numpy or numba load
    from particlegan.store.storage import COMMAND_ENV

    # recorded in every run's meta.json, also by sweep workers (they inherit the environment)
    os.environ[COMMAND_ENV] = shlex.join(["particlegan", *sys.argv[1:]])


# ---- commands are added below; each parses its arguments and calls one library function ----


def _load_config(config, overrides, seed, backend=None):
    from particlegan.api import resolve

    extra = list(overrides)
    if backend:
        extra.append(f"run.backend={backend}")
    return resolve(config or None, extra, seed)


def _format_summary(summary: dict, out_dir) -> str:
    def num(key, spec):  # non-finite values are stored as null (summary["non_finite"] says which)
        v = summary.get(key)
        return summary.get("non_finite", {}).get(key, "nan") if v is None else format(v, spec)

    reason = f" ({summary['diverged_reason']})" if summary.get("diverged_reason") else ""
    return (f"status {summary['status']}{reason}  steps {summary['steps']}  collapse C "
            f"{num('collapse', '.4f')}  modes covered {num('modes_covered', '.0f')}  hq fraction "
            f"{num('hq_fraction', '.3f')}  mmd2 {num('mmd2', '.3e')}  -> {out_dir}")


@main.command()
@click.argument("config", required=False)
@click.option("--set", "overrides", multiple=True, metavar="SECTION.KEY=VALUE",
              help="Override any config key (repeatable), e.g. --set generator.phi=0.99.")
@click.option("--seed", type=int, default=None, help="Override run.seed.")
@click.option("--backend", type=click.Choice(["auto", "numpy", "cpu", "cuda"]), default=None,
              help="Override run.backend (default 'auto': cpu when numba is installed, else numpy).")
@click.option("--out", "out_dir", default=None, help="Run directory (default: runs/<run id>).")
@click.option("--no-plot", is_flag=True, help="Skip particles.png.")
@click.option("--resume", "resume_dir", default=None, metavar="RUN_DIR",
              help="Continue a killed run from its checkpoint (needs run.checkpoint_every > 0).")
@click.option("--force", is_flag=True,
              help="Replace a different run already stored in --out (refused without it).")
@user_errors_to_exit
def run(config, overrides, seed, backend, out_dir, no_plot, resume_dir, force):
    """Run one simulation from CONFIG (TOML, or a stored config.json; default: built-in defaults).

    Exit status: 0 ok, 2 bad input, 3 the run diverged (NaN/inf or runaway; last good state kept).
    """
    from particlegan.store.config import config_hash
    from particlegan.progress import Reporter
    from particlegan.engine.simulate import resume_run, run_to_dir

    figures = None
    if not no_plot:
        from particlegan.plots.plotting import write_run_figures as figures
    if resume_dir:
        if config or overrides or seed is not None or backend or out_dir or force:
            raise click.UsageError("--resume takes only the run directory (its config.json is used)")
        summary = resume_run(resume_dir, reporter=Reporter(), figures=figures)
        out_dir = resume_dir
    else:
        cfg = _load_config(config, overrides, seed, backend)
        out_dir = out_dir or f"runs/{config_hash(cfg)}"
        summary = run_to_dir(cfg, out_dir, reporter=Reporter(), figures=figures, force=force)
    click.echo(_format_summary(summary, out_dir))
    if summary["status"] != "ok":
        sys.exit(3)


@main.command("config")
@click.argument("config", required=False)
@click.option("--set", "overrides", multiple=True, metavar="SECTION.KEY=VALUE")
@click.option("--seed", type=int, default=None)
@click.option("--describe", is_flag=True, help="List every key with its meaning instead.")
@user_errors_to_exit
def show_config(config, overrides, seed, describe):
    """Print the full resolved config as TOML (the defaults when no CONFIG is given)."""
    from particlegan.store.config import describe_schema, to_toml

    if describe:
        click.echo(describe_schema())
        return
    click.echo(to_toml(_load_config(config, overrides, seed)))


@main.command("dispersion")
@click.option("--kernel", "kernels", multiple=True, metavar="NAME[:KEY=VALUE,...]",
              help="Kernel (repeatable): gaussian, gaussian_mixture, rq, imq, riesz, energy, distance, "
                   "distance_induced; parameters e.g. gaussian:sigma=0.5 (lists as a/b/c). "
                   "Default: gaussian, riesz, energy.")
@click.option("--dim", type=int, default=2, show_default=True, help="Feature-space dimension m.")
@click.option("--beta", type=float, default=0.0, show_default=True,
              help="Weight of the derived critic stabiliser (critic growth < 0 for beta > 1).")
@click.option("--kmin", type=float, default=0.05, show_default=True, help="Smallest wavenumber.")
@click.option("--kmax", type=float, default=20.0, show_default=True, help="Largest wavenumber.")
@click.option("--points", type=int, default=200, show_default=True, help="Number of wavenumbers (log-spaced).")
@click.option("--out", "out_path", required=True, metavar="PNG", help="Output figure.")
@user_errors_to_exit
def dispersion(kernels, dim, beta, kmin, kmax, points, out_path):
    """Plot dispersion relations r_G(k) and critic growth rates of particle-based-distance flows."""
    import numpy as np

    from particlegan.errors import ConfigError
    from particlegan.plots.plotting_stability import plot_dispersion

    if not (0 < kmin < kmax) or points < 2:
        raise ConfigError(f"need 0 < --kmin < --kmax and --points >= 2, got {kmin}, {kmax}, {points}")
    k = np.logspace(np.log10(kmin), np.log10(kmax), points)
    plot_dispersion(list(kernels) or ["gaussian", "riesz", "energy"], k, out_path, dim=dim, beta=beta)
    click.echo(f"wrote {out_path}")


@main.command("kid")
@click.argument("real_path", metavar="REAL")
@click.argument("fake_path", metavar="FAKE")
@click.option("--subsets", type=int, default=100, show_default=True, help="Number of random subsets.")
@click.option("--subset-size", type=int, default=1000, show_default=True,
              help="Rows per subset (capped at the smaller file's row count).")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the subset draws.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object instead of text.")
@user_errors_to_exit
def kid_command(real_path, fake_path, subsets, subset_size, seed, as_json):
    """Kernel Inception Distance between two feature files (.npy, or a .npz as FILE.npz:NAME).

    Prints the mean ± std over subsets and the unbiased estimate of the estimator's variance
    (spec P1.6, at m = the smaller file's row count)."""
    import json
    import math

    from particlegan.maths.mmd import kid_from_files

    res = kid_from_files(real_path, fake_path, n_subsets=subsets, subset_size=subset_size, seed=seed,
                         return_variance=None)
    if res.subset_size < subset_size:
        click.echo(f"warning: --subset-size {subset_size} capped to {res.subset_size}, the smaller "
                   "file's row count: the subsets overlap (identical when both files have that many "
                   "rows), so the ± spread understates the uncertainty; see the variance estimate",
                   err=True)
    if as_json:
        click.echo(json.dumps(res.to_dict()))
    else:
        line = f"KID = {res.kid:.6g} ± {res.kid_std:.6g} ({res.n_subsets} x {res.subset_size})"
        if res.variance is not None:
            spread = (f"std {math.sqrt(res.variance):.6g}" if res.variance >= 0 else
                      "an unbiased estimate, negative when the rows are too few to resolve it")
            line += f"  estimator variance {res.variance:.6g} ({spread})"
        click.echo(line)


# ---- sweeps and figures ----


def _default_jobs() -> int:
    import os

    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


@main.command()
@click.argument("config", required=False)
@click.option("--grid", "grids", multiple=True, metavar="SECTION.KEY=V1,V2,...",
              help="Sweep a key over the listed values (repeatable; values are read like --set "
                   "values). The sweep is the Cartesian product of all grids, times the seeds.")
@click.option("--logspace", "logspaces", multiple=True, metavar="SECTION.KEY=A:B:N",
              help="Sweep a key over 10**linspace(A, B, N): N log-spaced values from 10^A to 10^B "
                   "(repeatable).")
@click.option("--set", "overrides", multiple=True, metavar="SECTION.KEY=VALUE",
              help="Fix a key for every run (repeatable).")
@click.option("--seeds", default="1", show_default=True,
              help="S runs seeds 0..S-1; or an explicit list 3,5,9; or a range 0..4.")
@click.option("--jobs", type=int, default=None,
              help="Parallel worker processes (default: the number of CPU cores).")
@click.option("--out", "out_dir", required=True, metavar="DIR",
              help="Sweep directory: DIR/results.csv, DIR/sweep.json, DIR/runs/<run id>/.")
@click.option("--dask", "dask_address", default=None, metavar="ADDRESS",
              help="Run on a Dask cluster: a scheduler address, or 'local' for a LocalCluster of "
                   "--jobs single-threaded worker processes (needs particlegan[dask]).")
@click.option("--force", is_flag=True, help="Allow sweeps larger than --max-runs.")
@click.option("--max-runs", type=int, default=10000, show_default=True,
              help="Refuse sweeps with more runs than this unless --force.")
@click.option("--no-plot", is_flag=True, help="Skip each run's particles.png.")
@click.option("--replace", is_flag=True,
              help="DIR holds a different sweep: delete its runs that this sweep does not contain "
                   "(refused without it).")
@click.option("--dry-run", is_flag=True,
              help="Print the plan (runs, already finished ones, estimated time) and run nothing.")
@click.option("--in-process", is_flag=True,
              help="Run one at a time in this process, with its thread settings (debugging; no "
                   "protection against crashes).")
@click.option("--batch", default="1", show_default=True, metavar="N|auto",
              help="Advance up to N runs that share array shapes as one batched ensemble (each run "
                   "stored as if run alone, bitwise the same results); 'auto' sizes the groups from "
                   "cache and memory; 1 runs every point alone.")
@user_errors_to_exit
def sweep(config, grids, logspaces, overrides, seeds, jobs, out_dir, dask_address, force, max_runs,
          no_plot, replace, dry_run, in_process, batch):
    """Run every combination of the grids x seeds, starting from CONFIG (TOML or a stored
    config.json; default: built-in defaults).

    Each run is stored in DIR/runs/<run id>/ exactly as `particlegan run` stores it; runs that
    already finished are skipped, so rerunning a sweep completes it. A run that raises is recorded
    as failed and the sweep goes on; a worker process that dies is retried once.

    Exit status: 0 no run failed (diverged runs are results), 1 some runs failed, 2 bad input.
    """
    from particlegan.progress import Reporter
    from particlegan.sweeps.sweep import (describe_plan, load_base, parse_batch, parse_grid, parse_logspace, parse_seeds,
                        plan_sweep, run_sweep)

    batch = parse_batch(batch)
    axes = [parse_grid(g) for g in grids] + [parse_logspace(item) for item in logspaces]
    fixed = [item.split("=", 1)[0].strip() for item in overrides]
    plan = plan_sweep(load_base(config, overrides), axes, parse_seeds(seeds), max_runs=max_runs,
                      force=force, config_path=config, fixed_keys=fixed)
    n_jobs = jobs if jobs is not None else _default_jobs()
    if dry_run:
        click.echo(describe_plan(plan, out_dir, n_jobs))
        return
    figures = None
    if not no_plot:
        from particlegan.plots.plotting import write_run_figures as figures
    report = run_sweep(plan, out_dir, jobs=n_jobs,
                       dask=dask_address, in_process=in_process, figures=figures, reporter=Reporter(),
                       replace=replace, batch=batch)
    click.echo(report.describe())
    if report.n_failed:
        sys.exit(1)


@main.command("ls")
@click.argument("directory", metavar="DIR")
@click.option("--where", multiple=True, metavar="KEY=VALUE",
              help="Only runs with this value (repeatable): a config key section.key, a summary "
                   "observable (collapse, mmd2, ...), status or seed.")
@click.option("--col", "columns", multiple=True, metavar="OBSERVABLE",
              help="Summary observable to show (repeatable; default collapse, modes_covered, mmd2).")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per run instead of a table.")
@user_errors_to_exit
def ls_command(directory, where, columns, as_json):
    """List the runs of a run directory, a sweep directory or a folder of runs: id, status,
    seed, chosen observables and the parameters that differ from the defaults."""
    import json

    from particlegan.sweeps.runstore import DEFAULT_COLUMNS, format_runs, list_runs

    records = list_runs(directory, where)
    if as_json:
        for rec in records:
            click.echo(json.dumps({k: rec[k] for k in ("run_id", "path", "status", "seed", "params",
                                                       "summary")}, sort_keys=True))
        return
    click.echo(format_runs(records, columns or DEFAULT_COLUMNS))


@main.group()
def plot():
    """Figures of sweeps and runs (PNG; the path written is printed)."""


def _echo_figure(path, notes=()):
    for note in notes:
        click.echo(f"note: {note}", err=True)
    click.echo(str(path))


_WHERE = click.option("--where", multiple=True, metavar="SECTION.KEY=VALUE",
                      help="Only runs with this value of a swept key (repeatable); needed when the "
                           "sweep varies a key that is not plotted.")


@plot.command("phase")
@click.argument("sweep_dirs", metavar="DIR [DIR...]", nargs=-1, required=True)
@click.option("--x", "x_key", required=True, metavar="KEY", help="Swept key on the x axis.")
@click.option("--y", "y_key", required=True, metavar="KEY", help="Swept key on the y axis.")
@click.option("--z", "z_key", default="collapse", show_default=True, metavar="OBSERVABLE",
              help="Observable (a results.csv column) averaged over seeds.")
@click.option("--log-x", is_flag=True, help="Logarithmic x axis.")
@click.option("--log-y", is_flag=True, help="Logarithmic y axis.")
@click.option("--level", type=float, default=None,
              help="Level of the transition contour (default: midway between min and max).")
@_WHERE
@click.option("--no-theory", is_flag=True, help="Leave out the lambda_c lines of the linear theory.")
@click.option("--label", "labels", multiple=True, metavar="TEXT",
              help="Panel title per DIR, in order (default: each sweep's critic).")
@click.option("--out", "out_path", default=None, metavar="PNG", help="Default: DIR/phase_<z>.png.")
@user_errors_to_exit
def plot_phase_cmd(sweep_dirs, x_key, y_key, z_key, log_x, log_y, level, where, no_theory, labels, out_path):
    """Phase diagram: seed-averaged OBSERVABLE over two swept keys, with the transition contour.

    Several sweep directories (e.g. the same grid with two critic types) give side-by-side
    panels with one colour scale and one transition level."""
    from particlegan.plots.plotting import phase_plot

    _echo_figure(*phase_plot(list(sweep_dirs), x_key, y_key, z_key, log_x, log_y, level, where, out_path,
                             theory=not no_theory, labels=labels))


@plot.command("lines")
@click.argument("sweep_dir", metavar="DIR")
@click.option("--x", "x_key", required=True, metavar="KEY", help="Swept key on the x axis.")
@click.option("--y", "y_key", required=True, metavar="OBSERVABLE",
              help="Observable (a results.csv column), or convergence_time (needs --threshold).")
@click.option("--hue", "hue_key", default=None, metavar="KEY", help="Swept key giving one curve per value.")
@click.option("--log-x", is_flag=True, help="Logarithmic x axis.")
@click.option("--log-y", is_flag=True, help="Logarithmic y axis.")
@click.option("--threshold", type=float, default=None,
              help="convergence_time: the level the series must stay below.")
@click.option("--series", default="mmd2", show_default=True,
              help="convergence_time: the recorded series it is measured on.")
@_WHERE
@click.option("--no-theory", is_flag=True, help="Leave out the lambda_c marks of the linear theory.")
@click.option("--out", "out_path", default=None, metavar="PNG", help="Default: DIR/lines_<y>_vs_<x>.png.")
@user_errors_to_exit
def plot_lines_cmd(sweep_dir, x_key, y_key, hue_key, log_x, log_y, threshold, series, where, no_theory,
                   out_path):
    """Curves of a seed-averaged observable against a swept key (error bars: standard error)."""
    from particlegan.plots.plotting import lines_plot

    _echo_figure(*lines_plot(sweep_dir, x_key, y_key, hue_key, log_x, log_y, where, out_path,
                             threshold=threshold, series=series, theory=not no_theory))


@plot.command("run")
@click.argument("run_dir")
@click.option("--out", "out_path", default=None, metavar="PNG", help="Default: RUN_DIR/overview.png.")
@user_errors_to_exit
def plot_run_cmd(run_dir, out_path):
    """Time series of one run (collapse, modes covered, MMD^2, critic gradient, centre-of-mass
    error) above its particle snapshots; a run whose dimension is a square (images) shows them
    as image grids, under the cosine measures (C, targets hit, spread, quality) when recorded."""
    from particlegan.plots.plotting import run_plot

    _echo_figure(run_plot(run_dir, out_path))


@plot.command("movie")
@click.argument("run_dirs", metavar="RUN_DIR [RUN_DIR...]", nargs=-1, required=True)
@click.option("--out", "out_path", required=True, metavar="GIF", help="Animated GIF to write.")
@click.option("--label", "labels", multiple=True, metavar="TEXT", help="Title per run, in order.")
@click.option("--fps", type=click.IntRange(1, 60), default=8, show_default=True, help="Frames per second.")
@user_errors_to_exit
def plot_movie_cmd(run_dirs, out_path, labels, fps):
    """Animated GIF of the particles over time beside the collapse C(t), one frame per stored
    snapshot (record more frames with --set run.snapshots=100); several runs side by side. An
    image run (d a square) shows its first 16 particles as images."""
    from particlegan.plots.plotting_movie import run_movie

    _echo_figure(run_movie(list(run_dirs), out_path, labels, fps))


@main.command("ntk")
@click.argument("config", required=False)
@click.option("--set", "overrides", multiple=True, metavar="SECTION.KEY=VALUE",
              help="Override any config key, e.g. --set generator.width=4096.")
@click.option("--seed", type=int, default=None, help="Override run.seed (generator init, latents).")
@click.option("--out", "out_path", default="particle_ntk.toml", show_default=True, metavar="TOML",
              help="Particle-model config written with the measured kernel.")
@click.option("--matrix", "matrix_path", default=None, metavar="NPY",
              help="Also save the full (N, N) empirical NTK here; the config then uses "
                   "generator.kernel = 'matrix'.")
@click.option("--init", "init_path", default=None, metavar="NPY",
              help="Also save the generator's initial outputs G(z_i) here; the config then starts "
                   "the particles there (particles.init = 'file').")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object instead of text.")
@user_errors_to_exit
def ntk_command(config, overrides, seed, out_path, matrix_path, init_path, as_json):
    """Empirical NTK of CONFIG's neural generator at initialisation on its fixed latents:
    g1 (mean diagonal), g2 (mean off-diagonal), phi = g2/g1, the off-diagonal spread, and the
    closed forms; writes a particle-model config with that kernel."""
    import json

    from particlegan.engine.empirical_ntk import run_ntk

    rep = run_ntk(_load_config(config, overrides, seed), out_path, matrix_path, init_path)
    if as_json:
        click.echo(json.dumps(rep, sort_keys=True))
        return
    click.echo(f"empirical NTK  N {rep['n']}  width {rep['width']}  depth {rep['depth']}  "
               f"latent_dim {rep['latent_dim']} ({rep['latent']})  {rep['activation']}  "
               f"bias {rep['bias']}  {rep['parameterization']}")
    click.echo(f"g1 {rep['g1']:.6g}  g2 {rep['g2']:.6g}  phi {rep['phi']:.6g}  "
               f"offdiag_std {rep['offdiag_std']:.3g} (relative {rep['offdiag_rel_spread']:.3g})")
    for key, label in (("closed_form", "infinite width, same latents"),
                       ("sphere_limit", "sphere limit (A2.3)")):
        if key in rep:
            c = rep[key]
            click.echo(f"{label}: g1 {c['g1']:.6g}  g2 {c['g2']:.6g}  phi {c['phi']:.6g}  "
                       f"(measured/closed - 1: g1 {c['rel_err_g1']:+.3%}, g2 {c['rel_err_g2']:+.3%})")
    click.echo(f"particle-model config -> {rep['config_path']}"
               + (f"  (kernel matrix -> {rep['matrix_path']})" if rep["matrix_path"] else "")
               + (f"  (initial particles -> {rep['init_path']})" if rep["init_path"] else ""))


@main.command("bench")
@click.option("--quick", is_flag=True, help="Small sizes (N = M up to 3000), finishes in about a minute.")
@click.option("--csv", "csv_path", default=None, metavar="PATH",
              help="Also write the measurements as CSV (op,method,n,m,d,dtype,pairs_per_s,peak_mb).")
@click.option("--table-only", is_flag=True,
              help="Skip the run start-up and results.csv bookkeeping measurements.")
@user_errors_to_exit
def bench(quick, csv_path, table_only):
    """Benchmark Gaussian kernel sums/gradients: pair interactions per second per method."""
    from particlegan import bench as b

    rows = b.run_benchmark(quick=quick, step_n=b.STEP_N, dtypes=("float64", "float32"))
    if csv_path:
        b.write_csv(rows, csv_path)
    click.echo(b.format_table(rows))
    if not table_only:
        click.echo(b.format_side_measurements(b.startup_times(), b.record_times()))
