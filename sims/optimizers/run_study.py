"""Optimizers for both GAN players on the 8-Gaussian ring (losses-metrics-optim-spec Paper 2;
issue 6, item 5a): nonlinear conjugate gradient (rules FR and PRP) against SGD, momentum and Adam,
with the neural engine of particlegan (model.type = "neural").

The same optimizer (``generator.optimizer`` = ``critic.optimizer``, same option keys, same
learning rate eta_G = eta_D) drives both players of a non-saturating GAN (the game of P2.1):

  target     8 Gaussians on a circle of radius 1, std TARGET_SIGMA (alpha_gan_ring uses 0.01;
             a wider std makes "modes covered" informative at this short training length)
  G          2 -> WIDTH x DEPTH -> 2, ReLU, biases, standard init, fresh N(0, I_2) latents
  D          2 -> WIDTH x DEPTH -> 1, LeakyReLU(0.2), logit output, no penalty
  steps      one D step per G step (n_critic = 1, no start-up steps), STEPS steps, batch N
  optimizers sgd; momentum (heavy ball, mu = 0.9); adam (betas (0.5, 0.999), the CG paper's
             baseline); cg FR and cg PRP (one global beta per player, beta clipped to [0, 1/2],
             c = 1, constant learning rate: spec P2.2-P2.3 and the resolutions of 2.6)

Learning-rate tuning (honest): each optimizer gets a half-decade grid (OPTIMIZERS; 3-4 values, widened
over two earlier passes until the chosen value was not on an edge, or the edge was the
best of a flat/monotone trend),
run on the TUNING seeds (100, 101, disjoint from the evaluation seeds); the chosen rate is the one
with the lowest tuning-seed mean of the late-time MMD^2 (mean over the last 25% of the recorded
values; a diverged run counts as +inf). The chosen rates are then run on the evaluation seeds
0..SEEDS-1, and only those runs enter the table: final MMD^2 (last record, on the N-sample batch
against 256 target samples, Gaussian kernel sigma 0.1), late-time MMD^2, and modes covered by
N_EVAL samples of the final generator (a mode is covered by a sample within 3 std of its centre).

Usage:  python sims/optimizers/run_study.py [--quick] [--jobs 2] [--seeds 5] [--out DIR]
Writes DIR/results.csv (mean ± std per optimizer), DIR/runs.csv (every run, tuning included),
DIR/results.md and figures/optimizers.png (quick mode: DIR/optimizers.png).
"""
from __future__ import annotations

import os

# one BLAS thread per worker: the runs are parallel over seeds (oversubscription is very slow)
for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import argparse  # noqa: E402
import math  # noqa: E402
import multiprocessing as mp  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

from particlegan.maths import nn  # noqa: E402
from particlegan.store.config import resolve_config  # noqa: E402
from particlegan.model.from_config import make_generator  # noqa: E402
from particlegan.engine.observables import modes_covered  # noqa: E402
from particlegan.engine.simulate import simulate  # noqa: E402
from particlegan.store.storage import atomic_write_csv  # noqa: E402

HERE = Path(__file__).resolve().parent
FIG = HERE.parent.parent / "figures" / "optimizers.png"
TARGET_SIGMA = 0.05
TUNING_SEEDS = (100, 101)

# label -> (optimizer overrides applied to both players, learning-rate grid)
OPTIMIZERS = {
    "SGD": (["optimizer=sgd"], [0.01, 0.03, 0.1]),
    "momentum 0.9": (["optimizer=momentum", "momentum=0.9"], [3e-5, 1e-4, 3e-4, 1e-3]),
    "Adam (0.5, 0.999)": (["optimizer=adam", "betas=[0.5, 0.999]"], [3e-4, 1e-3, 3e-3, 1e-2]),
    "CG-FR": (["optimizer=cg", "cg_rule=FR"], [0.003, 0.01, 0.03, 0.1]),
    "CG-PRP": (["optimizer=cg", "cg_rule=PRP"], [0.003, 0.01, 0.03, 0.1]),
}
FULL = dict(width=64, depth=2, steps=4000, batch=128, n_real=256, n_eval=2000, seeds=5)
QUICK = dict(width=16, depth=1, steps=60, batch=32, n_real=64, n_eval=200, seeds=2)


def base_overrides(p: dict) -> list[str]:
    return ["model.type=neural", f"particles.n={p['batch']}", "generator.fresh_latents=true",
            "generator.latent=gaussian", "generator.latent_dim=2", f"generator.width={p['width']}",
            f"generator.depth={p['depth']}", "generator.activation=relu", "generator.bias=true",
            "generator.parameterization=standard", "critic.type=mlp", f"critic.width={p['width']}",
            f"critic.depth={p['depth']}", "critic.activation=leaky_relu", "loss.kind=nonsaturating",
            "loss.penalty=none", "dynamics.critic_steps=1", "dynamics.critic_steps_startup=0",
            "target.kind=ring", "target.modes=8", "target.radius=1", f"target.sigma={TARGET_SIGMA}",
            f"target.n_samples={p['n_real']}", f"run.steps={p['steps']}",
            f"run.record_every={max(1, p['steps'] // 40)}", f"observables.mmd_samples={p['n_real']}",
            "observables.mmd_sigma=0.1", "observables.hq_sigmas=3"]


def optimizer_overrides(label: str, lr: float) -> list[str]:
    opts = OPTIMIZERS[label][0]
    return ([f"{who}.{o}" for who in ("generator", "critic") for o in opts]
            + [f"dynamics.eta_g={lr!r}", f"dynamics.eta_d={lr!r}"])


def late_mean(series: np.ndarray) -> float:
    k = max(1, len(series) // 4)
    return float(np.mean(series[-k:]))


def eval_modes(cfg: dict, theta_g: np.ndarray, n_eval: int) -> int:
    """Modes covered by n_eval samples of the final generator (test latents drawn with seed 1)."""
    gen = make_generator(cfg, np.random.default_rng(0)).with_theta(theta_g)
    z = np.random.default_rng(1).standard_normal((n_eval, cfg["generator"]["latent_dim"]))
    x = nn.mlp_apply(gen, z)
    ang = 2 * np.pi * np.arange(8) / 8
    centres = np.stack([np.cos(ang), np.sin(ang)], axis=1)
    return modes_covered(x, centres, 3 * TARGET_SIGMA)


def one_run(args) -> dict:
    label, lr, seed, phase, p = args
    cfg = resolve_config(overrides=base_overrides(p) + optimizer_overrides(label, lr), seed=seed)
    t0 = time.perf_counter()
    res = simulate(cfg)
    ok = res.status == "ok"
    mmd = res.series["mmd2"]
    return {"optimizer": label, "lr": lr, "seed": seed, "phase": phase, "status": res.status,
            "mmd2_final": float(mmd[-1]) if ok else math.inf,
            "mmd2_late": late_mean(mmd) if ok else math.inf,
            "modes_final": eval_modes(cfg, res.final_state.gen.theta, p["n_eval"]) if ok else 0,
            "seconds": time.perf_counter() - t0, "steps": res.series["step"],
            "mmd2_series": mmd, "modes_series": res.series["modes_covered"]}


def pool_map(fn, jobs: list, n: int) -> list:
    if n <= 1:
        return [fn(j) for j in jobs]
    with mp.get_context("spawn").Pool(n) as pool:
        return pool.map(fn, jobs, chunksize=1)


def choose_lrs(tuning: list[dict]) -> dict[str, tuple[float, dict[float, float]]]:
    """Per optimizer: the chosen lr and the tuning score (mean late MMD^2) of every lr."""
    out = {}
    for label, (_, grid) in OPTIMIZERS.items():
        scores = {lr: float(np.mean([r["mmd2_late"] for r in tuning
                                     if r["optimizer"] == label and r["lr"] == lr])) for lr in grid}
        out[label] = (min(grid, key=lambda lr: scores[lr]), scores)
    return out


def summarise(evals: list[dict], chosen: dict) -> list[dict]:
    table = []
    for label in OPTIMIZERS:
        r = [x for x in evals if x["optimizer"] == label]
        fin = np.array([x["mmd2_final"] for x in r])
        late = np.array([x["mmd2_late"] for x in r])
        modes = np.array([x["modes_final"] for x in r], dtype=float)
        table.append({"optimizer": label, "lr": chosen[label][0], "seeds": len(r),
                      "diverged": sum(x["status"] != "ok" for x in r),
                      "mmd2_final_mean": fin.mean(), "mmd2_final_std": fin.std(),
                      "mmd2_late_mean": late.mean(), "mmd2_late_std": late.std(),
                      "modes_mean": modes.mean(), "modes_std": modes.std(),
                      "all_8_modes": float(np.mean(modes == 8)),
                      "seconds_mean": float(np.mean([x["seconds"] for x in r]))})
    return table


def markdown(table: list[dict], chosen: dict, p: dict, wall: float) -> str:
    lines = [f"Scale: G 2-{p['width']}x{p['depth']}-2 and D 2-{p['width']}x{p['depth']}-1 MLPs, non-saturating "
             f"GAN, batch {p['batch']} fresh latents, {p['n_real']} real samples (8-mode ring, radius 1, std "
             f"{TARGET_SIGMA}), one D step per G step, {p['steps']} steps; the same optimizer and learning rate "
             f"for both players. lr tuned on seeds {', '.join(map(str, TUNING_SEEDS))} (lowest mean late-time "
             f"MMD^2), evaluated on seeds 0..{p['seeds'] - 1}; mean ± std over the evaluation seeds. Modes: "
             f"covered by {p['n_eval']} samples of the final generator (within 3 std). Wall time "
             f"{wall / 60:.1f} min.", "",
             "| optimizer | chosen lr | final MMD^2 | late MMD^2 (last 25%) | modes covered | 8/8 modes | diverged |",
             "|---|---|---|---|---|---|---|"]
    for t in table:
        lines.append(f"| {t['optimizer']} | {t['lr']:g} | {t['mmd2_final_mean']:.4f} ± {t['mmd2_final_std']:.4f} | "
                     f"{t['mmd2_late_mean']:.4f} ± {t['mmd2_late_std']:.4f} | {t['modes_mean']:.1f} ± "
                     f"{t['modes_std']:.1f} | {100 * t['all_8_modes']:.0f}% | {t['diverged']}/{t['seeds']} |")
    ncol = max(len(grid) for _, grid in OPTIMIZERS.values())
    lines += ["", "Learning-rate grid (tuning seeds; mean late-time MMD^2, * = chosen):", "",
              "| optimizer | " + " | ".join(["lr (score)"] * ncol) + " |", "|---" * (ncol + 1) + "|"]
    for label, (best, scores) in chosen.items():
        cells = [f"{lr:g}{'*' if lr == best else ''} ({s:.4f})" for lr, s in scores.items()]
        cells += [""] * (ncol - len(cells))
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def figure(evals: list[dict], table: list[dict], chosen: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(17, 4.5))
    ax = axes[0]
    shown = []  # every value drawn (medians and bands) decides the MMD^2 axis scale
    for i, label in enumerate(OPTIMIZERS):
        r = [x for x in evals if x["optimizer"] == label and x["status"] == "ok"]
        if not r:
            continue
        ys = np.stack([x["mmd2_series"] for x in r])
        t = r[0]["steps"]
        ax.plot(t, np.median(ys, 0), color=f"C{i}", label=f"{label}, lr {chosen[label][0]:g}")
        ax.fill_between(t, ys.min(0), ys.max(0), color=f"C{i}", alpha=0.12)
        shown.append(ys.ravel())
    from particlegan.plots.plotting import set_signed_log_scale

    # asinh: log-like, linear within the noise of the batch estimate (smooth through 0)
    set_signed_log_scale(ax, np.concatenate(shown), floor=1e-3)
    ax.set_xlabel("step")
    ax.set_ylabel("MMD$^2$ (batch vs target, sigma 0.1)")
    ax.set_title(f"median over {table[0]['seeds']} seeds, band: min-max", fontsize=9)
    ax.legend(fontsize=8)
    ax = axes[1]
    idx = np.arange(len(table))
    # median bar and the min-max range over seeds: an interval that stays within [0, 8]
    for i, label in enumerate(OPTIMIZERS):
        m = np.array([x["modes_final"] for x in evals if x["optimizer"] == label], dtype=float)
        med = float(np.median(m))
        ax.bar(i, med, color=f"C{i}", alpha=0.8)
        ax.errorbar(i, med, yerr=[[med - m.min()], [m.max() - med]], color="k", capsize=5, lw=1)
        ax.scatter(np.full(len(m), i) + np.linspace(-0.2, 0.2, len(m)), m, color="k", s=10, zorder=3)
    ax.set_xticks(idx, [t["optimizer"] for t in table], rotation=20, ha="right", fontsize=8)
    ax.set_ylim(0, 8.5)
    ax.set_ylabel("modes covered at the end (of 8)")
    ax.set_title("final modes covered: median, bar: min-max, dots: seeds", fontsize=9)
    ax = axes[2]
    for i, (label, (best, scores)) in enumerate(chosen.items()):
        lrs = list(scores)
        vals = [scores[lr] if math.isfinite(scores[lr]) else np.nan for lr in lrs]
        ax.plot(lrs, vals, "o-", color=f"C{i}", label=label)
        ax.plot([best], [scores[best]], "*", color=f"C{i}", ms=14)
    ax.set_xscale("log")
    ax.set_xlabel("learning rate (both players)")
    ax.set_ylabel("tuning score: mean late-time MMD$^2$")
    ax.set_title(f"lr grid on tuning seeds {TUNING_SEEDS} (star = chosen)", fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def run_study(p: dict, jobs: int) -> tuple[list[dict], list[dict], dict]:
    """(tuning runs, evaluation runs, chosen lrs)."""
    tune_jobs = [(label, lr, s, "tune", p) for label, (_, grid) in OPTIMIZERS.items()
                 for lr in grid for s in TUNING_SEEDS]
    tuning = pool_map(one_run, tune_jobs, jobs)
    chosen = choose_lrs(tuning)
    eval_jobs = [(label, chosen[label][0], s, "eval", p) for label in OPTIMIZERS
                 for s in range(p["seeds"])]
    evals = pool_map(one_run, eval_jobs, jobs)
    return tuning, evals, chosen


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="tiny networks, 60 steps, 2 seeds (a smoke test)")
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--seeds", type=int, default=None)
    ap.add_argument("--steps", type=int, default=None)
    ap.add_argument("--out", default=str(HERE))
    a = ap.parse_args(argv)
    p = dict(QUICK if a.quick else FULL)
    if a.seeds:
        p["seeds"] = a.seeds
    if a.steps:
        p["steps"] = a.steps
    t0 = time.perf_counter()
    tuning, evals, chosen = run_study(p, a.jobs)
    wall = time.perf_counter() - t0
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    table = summarise(evals, chosen)
    atomic_write_csv(out / "results.csv", table, float_format="{:.6g}")
    atomic_write_csv(out / "runs.csv", tuning + evals, ["optimizer", "lr", "seed", "phase", "status", "mmd2_final",
                                                        "mmd2_late", "modes_final", "seconds"], "{:.6g}")
    md = markdown(table, chosen, p, wall)
    (out / "results.md").write_text(md)
    figure(evals, table, chosen, out / "optimizers.png" if a.quick else FIG)
    sys.stdout.write(md)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
