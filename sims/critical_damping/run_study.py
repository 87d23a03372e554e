"""Critical damping study (issue 4b; effective-gan-spec A2.9 [derived]).

Sweeps the gradient-penalty strength lambda (``loss.penalty_weight``) of the isolated-points
setting in ``config.toml`` and measures, for the centre-of-mass ("cm") and the relative ("rel")
mode of the particle-to-target error e_i = x_i - y_i,

* the convergence time: first step after which |e_a(t)| / |e_a(0)| stays below THRESHOLD;
* the error left at a fixed horizon (step HORIZON).

Theory marks: lambda_c,a = sqrt(eta_G kappa_a / (n_c eta_D h / N)) from
:func:`particlegan.sweeps.analysis.critical_penalties` with point_mass = 1/N (each isolated target
point carries mass 1/N), and the convergence time of the discrete linearised simulator
(:func:`particlegan.maths.stability.mode_trajectory`), which has no free parameter.

Usage (from the repository root):
    python sims/critical_damping/run_study.py [--jobs 2] [--seeds 3] [--out DIR] [--quick]
Writes DIR (default sims/critical_damping/out) with the sweep's runs and results.csv, plus
DIR/modes.csv; the full run writes figures/critical_damping.png and
sims/critical_damping/results.md.
"""
from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import numpy as np

from particlegan.sweeps.analysis import convergence_time, critical_penalties, load_results, load_run
from particlegan.store.config import resolve_config
from particlegan.progress import Reporter
from particlegan.maths.stability import mode_trajectory, rff_curvature
from particlegan.store.storage import atomic_write_csv
from particlegan.sweeps.sweep import GridAxis, load_base, parse_logspace, plan_sweep, run_sweep

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
CONFIG = HERE / "config.toml"
FIG = ROOT / "figures" / "critical_damping.png"
RESULTS_MD = HERE / "results.md"
LOGSPACE = "loss.penalty_weight=-2.5:0.75:14"  # 0.0032 .. 5.6; above ~8 the SGD critic step is unstable
THRESHOLD = 0.02  # convergence: |e_a(t)| / |e_a(0)| stays below this
HORIZON = 300  # steps at which the "final error" is read
SHIFT, SPLIT = 0.01, 0.01  # collective shift and relative (alternating radial) displacement


def geometry(n: int = 8, radius: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """Target points y (n, 2) on a ring and initial particles x0 = y + e0 (n, 2).

    e0 = SHIFT along x_1 (collective) + SPLIT (-1)^i along the outward normal (relative; zero
    mean for even n), both << the critic width 0.1 so the linear theory applies.
    """
    ang = 2 * np.pi * np.arange(n) / n
    y = radius * np.stack([np.cos(ang), np.sin(ang)], axis=1)
    e0 = SHIFT * np.array([1.0, 0.0])[None, :] + SPLIT * ((-1.0) ** np.arange(n))[:, None] * y / radius
    return y, y + e0


def write_inputs() -> None:
    """(Re)write the committed target.npy / init.npy that config.toml points at."""
    y, x0 = geometry()
    np.save(HERE / "target.npy", y)
    np.save(HERE / "init.npy", x0)


def mode_errors(snapshots: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """|mean_i e_i| (cm mode) and sqrt(mean_i |e_i - mean e|^2) (rel mode), each (S,).

    snapshots : (S, N, d) particle positions; y : (N, d) the target point of each particle.
    """
    e = snapshots - y[None]
    mean = e.mean(axis=1)
    cm = np.linalg.norm(mean, axis=1)
    rel = np.sqrt(np.mean(np.sum((e - mean[:, None]) ** 2, axis=2), axis=1))
    return cm, rel


def theory(cfg: dict) -> dict[str, dict]:
    """Per mode: kappa, h_eff, lambda_c (continuous A2.9 formula with n_c eta_D and h/N)."""
    n = cfg["particles"]["n"]
    g1, phi = cfg["generator"]["g1"], cfg["generator"]["phi"]
    lam_c = critical_penalties(cfg, point_mass=1.0 / n)
    h_eff = rff_curvature(cfg["critic"]["sigma"]) / n
    kappas = {"cm": g1 * (1 + (n - 1) * phi) / n, "rel": g1 * (1 - phi) / n}
    return {m: {"kappa": kappas[m], "h_eff": h_eff, "lambda_c": lam_c[m]} for m in ("cm", "rel")}


def predicted_trajectory(cfg: dict, mode: str, lam: float, steps: int) -> np.ndarray:
    """|e(t)| / |e(0)| of the discrete linearised simulator, t = 0 .. steps."""
    th = theory(cfg)[mode]
    d = cfg["dynamics"]
    return np.abs(mode_trajectory(lam, d["eta_g"], d["eta_d"], th["kappa"], th["h_eff"], steps,
                                  critic_steps=d["critic_steps"], convention=cfg["loss"]["penalty_form"],
                                  update=d["update"]))


def analyse_run(run_dir: Path, y: np.ndarray) -> dict:
    """Convergence times and horizon errors of both modes of one run, measured and predicted."""
    data = load_run(run_dir)
    cfg = resolve_config(data["config"])
    steps_at = data["snapshot_steps"]
    lam = cfg["loss"]["penalty_weight"]
    out = {"lambda": lam, "seed": cfg["run"]["seed"], "status": data["summary"].get("status", ""),
           "run_dir": str(run_dir)}
    errors = dict(zip(("cm", "rel"), mode_errors(data["snapshots"], y)))
    for mode, err in errors.items():
        ratio = err / err[0]
        pred = predicted_trajectory(cfg, mode, lam, int(steps_at[-1]))[steps_at]
        out[f"{mode}_time"] = convergence_time(steps_at, ratio, THRESHOLD)
        out[f"{mode}_time_theory"] = convergence_time(steps_at, pred, THRESHOLD)
        k = int(np.searchsorted(steps_at, HORIZON))
        out[f"{mode}_error_at_horizon"] = float(ratio[k])
        out[f"{mode}_error_at_horizon_theory"] = float(pred[k])
    return out


def seed_stats(rows: list[dict], key: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Sorted lambdas, seed mean and seed std of ``key`` (inf where any seed did not converge)."""
    lams = np.array(sorted({r["lambda"] for r in rows}))
    mean, std = [], []
    for lam in lams:
        v = np.array([r[key] for r in rows if r["lambda"] == lam], dtype=float)
        mean.append(v.mean() if np.all(np.isfinite(v)) else math.inf)
        std.append(v.std() if np.all(np.isfinite(v)) else 0.0)
    return lams, np.array(mean), np.array(std)


def measured_optimum(lams: np.ndarray, times: np.ndarray) -> float:
    """lambda minimising the seed-mean convergence time: the vertex of a parabola in log lambda
    through the grid minimum and its two neighbours (the grid point itself at an edge)."""
    i = int(np.argmin(times))
    if i == 0 or i == len(lams) - 1 or not np.all(np.isfinite(times[i - 1:i + 2])):
        return float(lams[i])
    u, t = np.log(lams[i - 1:i + 2]), times[i - 1:i + 2]
    a, b, _ = np.polyfit(u, t, 2)
    return float(np.exp(-b / (2 * a))) if a > 0 else float(lams[i])


def run(out: Path, seeds: list[int], jobs: int, axis: GridAxis, overrides: list[str]) -> list[dict]:
    """Run (or resume) the sweep into ``out`` and analyse every finished run."""
    plan = plan_sweep(load_base(CONFIG, overrides), [axis], seeds, config_path=str(CONFIG),
                      fixed_keys=[o.split("=", 1)[0] for o in overrides])
    run_sweep(plan, out, jobs=jobs, reporter=Reporter())
    y = np.load(HERE / "target.npy")
    rows = [analyse_run(out / "runs" / r["run_id"], y) for r in load_results(out / "results.csv")
            if r["status"] != "failed"]
    rows.sort(key=lambda r: (r["lambda"], r["seed"]))
    atomic_write_csv(out / "modes.csv", rows)
    return rows


def summarise(rows: list[dict], cfg: dict) -> dict[str, dict]:
    """Per mode: lambda_c, measured and linear-theory optimum, min convergence times."""
    th = theory(cfg)
    out = {}
    for mode in ("cm", "rel"):
        lams, t_meas, _ = seed_stats(rows, f"{mode}_time")
        _, t_pred, _ = seed_stats(rows, f"{mode}_time_theory")
        out[mode] = {"lambda_c": th[mode]["lambda_c"], "kappa": th[mode]["kappa"],
                     "opt_measured": measured_optimum(lams, t_meas),
                     "opt_discrete_theory": measured_optimum(lams, t_pred),
                     "t_min": float(np.min(t_meas)), "t_min_theory": float(np.min(t_pred))}
    return out


def plot(rows: list[dict], cfg: dict, summary: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from particlegan.plots.plotting import save_figure

    colors = {"cm": "C0", "rel": "C3"}
    names = {"cm": "collective (centre of mass)", "rel": "relative"}
    fig, axes = plt.subplots(1, 3, figsize=(16, 4.6))
    for mode in ("cm", "rel"):
        c, lam_c = colors[mode], summary[mode]["lambda_c"]
        lams, mean, std = seed_stats(rows, f"{mode}_time")
        _, pred, _ = seed_stats(rows, f"{mode}_time_theory")
        ok = np.isfinite(mean)
        axes[0].errorbar(lams[ok], mean[ok], yerr=std[ok], fmt="o", color=c, ms=5, capsize=2,
                         label=f"{names[mode]}: simulation")
        axes[0].plot(lams[np.isfinite(pred)], pred[np.isfinite(pred)], "-", color=c, lw=1, alpha=0.7,
                     label=f"{names[mode]}: discrete linear theory")
        lams, err, err_std = seed_stats(rows, f"{mode}_error_at_horizon")
        _, err_pred, _ = seed_stats(rows, f"{mode}_error_at_horizon_theory")
        axes[1].errorbar(lams, err, yerr=err_std, fmt="o", color=c, ms=5, capsize=2, label=names[mode])
        axes[1].plot(lams, err_pred, "-", color=c, lw=1, alpha=0.7)
        for ax in axes[:2]:
            ax.axvline(lam_c, color=c, ls="--", lw=1)
    axes[0].set(xscale="log", yscale="log", xlabel=r"gradient penalty $\lambda$",
                ylabel=f"convergence time (steps to $|e|/|e_0| < {THRESHOLD}$)",
                title=r"U-shape; dashed: critical penalty $\lambda_c$ of the linear theory")
    axes[0].legend(fontsize=7)
    axes[1].set(xscale="log", yscale="log", ylim=(1e-9, 3), xlabel=r"gradient penalty $\lambda$",
                ylabel=f"$|e(t)|/|e_0|$ at step {HORIZON}", title="error left at a fixed horizon")
    axes[1].legend(fontsize=7)
    # relative-mode trajectories below, at and above lambda_c (seed 0)
    lam_c = summary["rel"]["lambda_c"]
    picks = sorted({min((r["lambda"] for r in rows), key=lambda v, f=f: abs(math.log(v / (f * lam_c))))
                    for f in (0.1, 1.0, 10.0)})
    y = np.load(HERE / "target.npy")
    for i, lam in enumerate(picks):
        row = next(r for r in rows if r["lambda"] == lam and r["seed"] == min(rr["seed"] for rr in rows))
        data = load_run(row["run_dir"])
        _, rel = mode_errors(data["snapshots"], y)
        t = data["snapshot_steps"]
        axes[2].plot(t, rel / rel[0], color=f"C{i + 1}", lw=1.2, label=rf"$\lambda$ = {lam:.3g}")
        axes[2].plot(t, predicted_trajectory(cfg, "rel", lam, int(t[-1]))[t], color=f"C{i + 1}", lw=0.8, ls=":")
    axes[2].set(yscale="log", xlim=(0, 3000), ylim=(1e-4, 2), xlabel="particle step t",
                ylabel=r"relative-mode error $|e_{rel}(t)|/|e_{rel}(0)|$",
                title=rf"rel mode, $\lambda_c$ = {lam_c:.3g} (dotted: theory)")
    axes[2].legend(fontsize=7)
    fig.suptitle(f"Critical damping: N = {cfg['particles']['n']} isolated points, phi = {cfg['generator']['phi']}, "
                 f"RFF critic sigma = {cfg['critic']['sigma']}, eta_G = {cfg['dynamics']['eta_g']}, "
                 f"eta_D = {cfg['dynamics']['eta_d']}, n_c = {cfg['dynamics']['critic_steps']}, "
                 f"{len({r['seed'] for r in rows})} seeds", fontsize=10)
    fig.tight_layout()
    save_figure(fig, path, dpi=110)


def write_markdown(summary: dict, rows: list[dict], seeds: list[int], run_seconds: float) -> None:
    lines = ["# Critical damping: measured vs predicted optimal gradient penalty", "",
             f"Generated by `python sims/critical_damping/run_study.py --jobs 2` ({len(rows)} runs, "
             f"seeds {seeds}, {run_seconds:.0f} s of run time in all). Convergence = |e(t)|/|e(0)| "
             f"stays below {THRESHOLD}.", "",
             "| mode | kappa = eig(K)/N | lambda_c (A2.9, n_c eta_D, h/N) | measured optimum | "
             "optimum of the discrete linear theory | measured / lambda_c | min conv. time (sim / theory) |",
             "|---|---|---|---|---|---|---|"]
    for mode in ("cm", "rel"):
        s = summary[mode]
        lines.append(f"| {mode} | {s['kappa']:.4g} | {s['lambda_c']:.4g} | {s['opt_measured']:.4g} | "
                     f"{s['opt_discrete_theory']:.4g} | {s['opt_measured'] / s['lambda_c']:.2f} | "
                     f"{s['t_min']:.0f} / {s['t_min_theory']:.0f} |")
    ratio = summary["cm"]["lambda_c"] / summary["rel"]["lambda_c"]
    lines += ["", f"Predicted lambda_c,cm / lambda_c,rel = sqrt((1 + (N-1) phi)/(1 - phi)) = {ratio:.3g}; "
              f"measured optima ratio {summary['cm']['opt_measured'] / summary['rel']['opt_measured']:.3g}: "
              "no single lambda critically damps both modes.", ""]
    RESULTS_MD.write_text("\n".join(lines))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--out", type=Path, default=HERE / "out")
    ap.add_argument("--quick", action="store_true", help="3 lambdas, 1 seed, 3000 steps (no figure)")
    ap.add_argument("--write-inputs", action="store_true", help="rewrite target.npy / init.npy")
    args = ap.parse_args(argv)
    if args.write_inputs:
        write_inputs()
    if args.quick:
        axis, overrides, seeds = GridAxis("loss.penalty_weight", (0.01, 0.1, 1.0), "quick"), \
            ["run.steps=3000", "run.snapshots=601"], [0]
    else:
        axis, overrides, seeds = parse_logspace(LOGSPACE), [], list(range(args.seeds))
    rows = run(args.out, seeds, args.jobs, axis, overrides)
    cfg = resolve_config(load_base(CONFIG, overrides))
    summary = summarise(rows, cfg)
    for mode, s in summary.items():
        print(f"{mode}: lambda_c = {s['lambda_c']:.4g}, measured optimum {s['opt_measured']:.4g} "
              f"(discrete theory {s['opt_discrete_theory']:.4g}), min time {s['t_min']:.0f} steps")
    if not args.quick:
        plot(rows, cfg, summary, FIG)
        run_seconds = sum(float(r["wall_time_s"]) for r in load_results(args.out / "results.csv"))
        write_markdown(summary, rows, seeds, run_seconds)
    return 0


if __name__ == "__main__":
    sys.exit(main())
