"""Stabilizer study (issue 5; effective-gan-spec B2, B6.2): the discriminator's instability as a
particle-based-distance ascent flow and its removal by the derived stabilising term.

(a) Dispersion check. Free real features v_m (the most expressive feature map: one trainable
    feature per sample) on a line, M points at spacing a, ascend J = E(u, v) - beta/2 iint K
    rho_d rho_d with velocity M dJ/dv_m (:func:`particlegan.model.feature_critic.feature_space_gradients`)
    against fixed generated features u on the same lattice (rho = rho_d: the equilibrium of E).
    A displacement wave eps sin(k x) is added; its amplitude in the middle half of the line,
    minus that of an unperturbed run (which removes the edge drift at linear order), grows at a
    measured rate that is compared with the derived dispersion relation
    r_D(k) = (1 - beta) rho_0 k^2 K_hat(k), rho_0 = 1/L (:func:`particlegan.maths.stability.dispersion_relation`).
(b) The learned-feature critic (MLP feature map, SGD) in a ring GAN, beta = 0 vs 2, from the sweep
    of ``config.toml`` (data-space MMD^2 and modes covered over time, 3 seeds).

Usage (from the repository root):
    python sims/stabilizer/run_study.py [--jobs 2] [--quick]
Writes sims/stabilizer/out/ (sweep runs, dispersion.csv), figures/stabilizer.png and
sims/stabilizer/results.md (full run).
"""
from __future__ import annotations

import argparse
import csv
import sys
from pathlib import Path

import numpy as np

from particlegan.sweeps.analysis import load_results, load_run
from particlegan.backends import get_backend
from particlegan.model.feature_critic import feature_space_gradients
from particlegan.maths.kernels import make_kernel
from particlegan.progress import Reporter
from particlegan.maths.stability import dispersion_relation
from particlegan.store.storage import atomic_write_csv
from particlegan.sweeps.sweep import load_base, parse_grid, plan_sweep, run_sweep

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
CONFIG = HERE / "config.toml"
FIG = ROOT / "figures" / "stabilizer.png"
RESULTS_MD = HERE / "results.md"

# (a) settings: M features on [0, L], kernels with their stability.fourier_symbol parameters
M, SPACING = 300, 20.0 / 300
KERNELS = {"gaussian": {"sigma": 0.5}, "riesz": {"s": 0.5, "eps": 0.2}}
BETAS = (0.0, 0.5, 2.0)
MODES = (2, 4, 6, 8, 12, 18)  # wavenumbers k = 2 pi n / L
T_END, DT, EPS = 8.0, 0.05, 1e-4
# (b) sweep
GRIDS = ("critic.beta=0,2", "critic.feature_kernel=gaussian,riesz")


def lattice(m: int = M, spacing: float = SPACING) -> np.ndarray:
    """(m,) lattice positions (i + 1/2) * spacing."""
    return (np.arange(m) + 0.5) * spacing


def evolve_features(v0: np.ndarray, u: np.ndarray, kernel, beta: float, times, dt: float = DT,
                    backend=None) -> list[np.ndarray]:
    """Forward-Euler ascent flow dv_m/dt = M dJ/dv_m of free features v (M, m) against fixed u.

    Returns the features at each of ``times`` (multiples of dt), in order.
    """
    backend = backend or get_backend("numpy")
    v, out, t = v0.copy(), [], 0
    for target in (int(round(T / dt)) for T in times):
        while t < target:
            _, gv = feature_space_gradients(u, v, kernel, beta, "real", backend)
            v = v + dt * len(v) * gv
            t += 1
        out.append(v.copy())
    return out


def measured_growth_rate(name: str, params: dict, beta: float, k: float, m: int = M,
                         spacing: float = SPACING, t_end: float = T_END, dt: float = DT) -> float:
    """Growth rate of a displacement wave of wavenumber k (per unit flow time), see (a)."""
    x = lattice(m, spacing)
    kernel = make_kernel(name, **params)
    u = x[:, None]
    times = (t_end / 2, t_end)
    ref = evolve_features(u, u, kernel, beta, times, dt)
    pert = evolve_features((x + EPS * np.sin(k * x))[:, None], u, kernel, beta, times, dt)
    length = m * spacing
    mid = (x > 0.25 * length) & (x < 0.75 * length)
    basis = np.sin(k * x[mid])
    amp = [float(np.dot((p - r)[mid, 0], basis) / np.dot(basis, basis)) for p, r in zip(pert, ref)]
    return float(np.log(abs(amp[1]) / abs(amp[0])) / (times[1] - times[0]))


def predicted_growth_rate(name: str, params: dict, beta: float, k, m: int = M,
                          spacing: float = SPACING) -> np.ndarray:
    """(1 - beta) rho_0 k^2 K_hat(k) in one dimension, rho_0 = 1/L."""
    return dispersion_relation(name, np.atleast_1d(np.asarray(k, dtype=float)), rho0=1.0 / (m * spacing),
                               dim=1, beta=beta, **params)["critic_growth_rate"]


def dispersion_table(kernels=KERNELS, betas=BETAS, modes=MODES, reporter=None) -> list[dict]:
    length = M * SPACING
    rows = []
    todo = [(n, b, mode) for n in kernels for b in betas for mode in modes]
    reporter = reporter or Reporter()
    reporter.start(total=len(todo), label="dispersion")
    for name, beta, mode in todo:
        k = 2 * np.pi * mode / length
        rows.append({"kernel": name, "beta": beta, "k": k,
                     "measured": measured_growth_rate(name, kernels[name], beta, k),
                     "theory": float(predicted_growth_rate(name, kernels[name], beta, k)[0])})
        reporter.advance(1)
    reporter.finish()
    return rows


def run_gan_sweep(out: Path, jobs: int, seeds: int) -> list[dict]:
    plan = plan_sweep(load_base(CONFIG), [parse_grid(g) for g in GRIDS], list(range(seeds)),
                      config_path=str(CONFIG))
    run_sweep(plan, out, jobs=jobs, reporter=Reporter())
    return [r for r in load_results(out / "results.csv") if r["status"] != "failed"]


def plot(disp: list[dict], gan_rows: list[dict], sweep_dir: Path, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from particlegan.plots.plotting import save_figure, set_signed_log_scale

    fig, axes = plt.subplots(1, 4, figsize=(20, 4.6))
    kk = np.linspace(0.2, 2 * np.pi * max(MODES) / (M * SPACING) * 1.05, 200)
    for ax, name in zip(axes[:2], KERNELS):
        for i, beta in enumerate(BETAS):
            pts = [r for r in disp if r["kernel"] == name and r["beta"] == beta]
            ax.plot(kk, predicted_growth_rate(name, KERNELS[name], beta, kk), color=f"C{i}", lw=1.2)
            ax.plot([r["k"] for r in pts], [r["measured"] for r in pts], "o", color=f"C{i}",
                    label=rf"$\beta$ = {beta:g}")
        ax.axhline(0, color="0.5", lw=0.8)
        params = ", ".join(f"{k} = {v:g}" for k, v in KERNELS[name].items())
        ax.set(xlabel="wavenumber $k$", ylabel=r"critic growth rate $r_D(k)$",
               title=f"(a) {name} ({params}): points measured,\nlines $(1-\\beta)\\rho_0 k^2 \\hat K(k)$")
        ax.legend(fontsize=8)
    for ax, obs, label in ((axes[2], "mmd2", "data-space MMD$^2$"), (axes[3], "modes_covered", "modes covered")):
        for i, name in enumerate(("gaussian", "riesz")):
            for beta, ls in ((0.0, "-"), (2.0, "--")):
                runs = [r for r in gan_rows if r["critic.feature_kernel"] == name and r["critic.beta"] == beta]
                series = [load_run(sweep_dir / "runs" / r["run_id"]) for r in runs]
                if not series:
                    continue
                steps = series[0]["step"]
                vals = np.array([s[obs] for s in series])
                mean = vals.mean(axis=0)
                ax.plot(steps, mean, ls, color=f"C{i}", label=rf"{name}, $\beta$ = {beta:g}")
                ax.fill_between(steps, vals.min(axis=0), vals.max(axis=0), color=f"C{i}", alpha=0.12)
        ax.set(xlabel="particle step", ylabel=label,
               title="(b) ring GAN with a learned MLP feature critic\n(mean, min-max over seeds)")
        if obs == "mmd2":  # asinh: log-like, linear within the 1/N noise of the unbiased estimate
            set_signed_log_scale(ax, [v for line in ax.get_lines() for v in line.get_ydata()],
                                 floor=1 / 64)  # particles.n of config.toml
        ax.legend(fontsize=8)
    fig.tight_layout()
    save_figure(fig, path, dpi=100)


def gan_summary(gan_rows: list[dict]) -> list[dict]:
    out = []
    for name in ("gaussian", "riesz"):
        for beta in (0.0, 2.0):
            runs = [r for r in gan_rows if r["critic.feature_kernel"] == name and r["critic.beta"] == beta]
            if runs:
                out.append({"kernel": name, "beta": beta, "n": len(runs),
                            "mmd2": np.mean([r["mmd2"] for r in runs]),
                            "modes": np.mean([r["modes_covered"] for r in runs]),
                            "hq": np.mean([r["hq_fraction"] for r in runs])})
    return out


def write_markdown(disp: list[dict], gan: list[dict]) -> None:
    lines = ["# Stabilizer study", "", "Generated by `python sims/stabilizer/run_study.py --jobs 2`.", "",
             "## (a) critic growth rate of a feature-density wave: measured vs (1 - beta) rho_0 k^2 K_hat(k)", "",
             "| kernel | beta | k | measured | theory | rel. error |", "|---|---|---|---|---|---|"]
    for r in disp:
        rel = abs(r["measured"] / r["theory"] - 1)
        lines.append(f"| {r['kernel']} | {r['beta']:g} | {r['k']:.3f} | {r['measured']:.4g} | "
                     f"{r['theory']:.4g} | {rel:.1%} |")
    lines += ["", "## (b) learned MLP feature critic on the ring, final step (mean over seeds)", "",
              "| feature kernel | beta | seeds | MMD^2 | modes covered | HQ fraction |", "|---|---|---|---|---|---|"]
    for g in gan:
        lines.append(f"| {g['kernel']} | {g['beta']:g} | {g['n']} | {g['mmd2']:.4f} | {g['modes']:.2f} | {g['hq']:.3f} |")
    RESULTS_MD.write_text("\n".join(lines) + "\n")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--out", type=Path, default=HERE / "out")
    ap.add_argument("--quick", action="store_true", help="part (a) only, gaussian, two wavenumbers")
    ap.add_argument("--replot", action="store_true", help="reuse OUT/dispersion.csv (redraw only)")
    args = ap.parse_args(argv)
    if args.replot:
        with open(args.out / "dispersion.csv", newline="") as fh:
            disp = [{k: (v if k == "kernel" else float(v)) for k, v in r.items()} for r in csv.DictReader(fh)]
    elif args.quick:
        disp = dispersion_table({"gaussian": KERNELS["gaussian"]}, (0.0, 2.0), (4, 12))
    else:
        disp = dispersion_table()
    args.out.mkdir(parents=True, exist_ok=True)
    atomic_write_csv(args.out / "dispersion.csv", disp)  # (rewritten as read on --replot)
    worst = max(abs(r["measured"] / r["theory"] - 1) for r in disp)
    print(f"dispersion: {len(disp)} points, worst relative error {worst:.1%}")
    if not args.quick:
        gan_rows = run_gan_sweep(args.out, args.jobs, args.seeds)
        plot(disp, gan_rows, args.out, FIG)
        write_markdown(disp, gan_summary(gan_rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
