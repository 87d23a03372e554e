"""Particle model vs wide neural generator (effective-gan-spec A2.2-A2.3, A6.9; issue 6, item 5c).

The same target (8-mode ring), critic (random Fourier features, sigma 0.2), loss (IPM with
gradient penalty on the fakes) and step sizes, run three ways:

  (i)   neural:    model.type = "neural", one-hidden-layer bias-free ReLU generator in NTK
                   parameterisation on N fixed latents on the sphere, SGD on theta (eta_G);
  (ii)  universal: the particle model with the measured (g1, g2) of that generator's empirical
                   NTK (generator.kernel = "universal");
  (iii) full NTK:  the particle model with the full (N, N) empirical NTK (kernel = "matrix").

(ii) and (iii) are the configs written by ``particlegan ntk --out ... [--matrix ...] --init ...``
(:func:`particlegan.engine.empirical_ntk.run_ntk`), started at the neural generator's initial outputs
x_i(0) = G_theta0(z_i) (particles.init = "file"). Time scale:
the neural step theta <- theta - eta_G J^T (-F/N) moves the outputs by (eta_G/N) J J^T F to first
order, and the particle step is x <- x + eta_G (K/N) F (normalization "ntk") with K = J J^T (the
trace-normalised empirical NTK): the same eta_G, no rescaling needed (checked: at width 4096 the
neural and full-NTK trajectories stay within a few 1e-3 over the first 50 steps, while the
particles move by ~0.3). Critic features and start-up steps are identical (same seed streams).

Width sweep: the distance between the neural and the particle trajectories (max and mean over
particles of |x_i^neural(t) - x_i^particle(t)|) and the differences in C and MMD^2, for widths
WIDTHS, over SEEDS seeds.

Usage:  python sims/particle_vs_neural/run_study.py [--quick] [--jobs 2] [--out DIR]
Writes DIR/results.md, DIR/results.csv and figures/particle_vs_neural.png,
figures/particle_vs_neural_width.png (quick mode: the figures go to DIR).
"""
from __future__ import annotations

import os

for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import argparse  # noqa: E402
import multiprocessing as mp  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

from particlegan.store.config import config_from_sources, resolve_config  # noqa: E402
from particlegan.engine.empirical_ntk import run_ntk  # noqa: E402
from particlegan.engine.simulate import simulate  # noqa: E402
from particlegan.store.storage import atomic_write_csv  # noqa: E402

HERE = Path(__file__).resolve().parent
FIGS = HERE.parent.parent / "figures"
MODELS = ("neural", "universal", "matrix")
LABELS = {"neural": "(i) neural, NTK param.", "universal": "(ii) particles, universal (g1, g2)",
          "matrix": "(iii) particles, full empirical NTK"}

FULL = dict(n=128, latent_dim=64, widths=[64, 256, 1024, 4096], steps=1000, every=10,
            seeds=3, early=50)
QUICK = dict(n=32, latent_dim=32, widths=[64, 1024], steps=40, every=5, seeds=1, early=20)


def neural_overrides(p: dict, width: int) -> list[str]:
    """The neural run (i); every other key (target, critic, loss, dynamics) is the default."""
    return ["model.type=neural", f"particles.n={p['n']}", f"generator.width={width}",
            "generator.depth=1", "generator.activation=relu", "generator.bias=false",
            "generator.parameterization=ntk", "generator.latent=sphere",
            f"generator.latent_dim={p['latent_dim']}", "generator.fresh_latents=false",
            "generator.optimizer=sgd", "critic.type=rff", "loss.kind=ipm", "loss.penalty=fake",
            f"run.steps={p['steps']}", f"run.record_every={p['every']}",
            f"run.snapshots={p['steps'] // p['every'] + 1}", "observables.mmd_samples=1000"]


def particle_configs(cfg: dict, work: Path) -> tuple[dict, dict, dict]:
    """(ntk report, universal config, matrix config) written by ``particlegan ntk``'s logic,
    both started at the neural generator's initial outputs (``--init``)."""
    init = str(work / "x0.npy")
    rep = run_ntk(cfg, str(work / "universal.toml"), init_path=init)
    run_ntk(cfg, str(work / "matrix.toml"), str(work / "ntk.npy"), init)
    return rep, config_from_sources(work / "universal.toml"), config_from_sources(work / "matrix.toml")


def one_case(args) -> dict:
    """All three models for one (width, seed); returns series, snapshots and distances."""
    width, seed, p = args
    cfg = resolve_config(overrides=neural_overrides(p, width), seed=seed)
    t0 = time.perf_counter()
    res = {"neural": simulate(cfg)}
    with tempfile.TemporaryDirectory() as tmp:
        rep, uc, mc = particle_configs(cfg, Path(tmp))
        assert np.array_equal(np.load(Path(tmp) / "x0.npy"), res["neural"].snapshots[0])
        res["universal"] = simulate(uc)
        res["matrix"] = simulate(mc)
    out = {"width": width, "seed": seed, "g1": rep["g1"], "g2": rep["g2"], "phi": rep["phi"],
           "offdiag_rel_spread": rep["offdiag_rel_spread"],
           "steps": res["neural"].series["step"], "snap_steps": res["neural"].snapshot_steps,
           "seconds": time.perf_counter() - t0}
    for m in MODELS:
        r = res[m]
        assert r.status == "ok", (m, width, seed, r.status)
        out[f"C_{m}"] = r.series["collapse"]
        out[f"mmd2_{m}"] = r.series["mmd2"]
        out[f"modes_{m}"] = r.series["modes_covered"]
        out[f"snaps_{m}"] = r.snapshots
    xn = res["neural"].snapshots
    out["displacement"] = np.linalg.norm(xn - xn[0], axis=-1).max(-1)
    for m in ("universal", "matrix"):
        d = np.linalg.norm(xn - res[m].snapshots, axis=-1)     # (S, N)
        out[f"dmax_{m}"] = d.max(-1)
        out[f"dmean_{m}"] = d.mean(-1)
    return out


def early_index(case: dict, step: int) -> int:
    return int(np.searchsorted(case["snap_steps"], step))


def rows_of(cases: list[dict], p: dict) -> list[dict]:
    """One CSV row per (width, seed): distances at the early step and at the end, final C, MMD^2."""
    rows = []
    for c in cases:
        e = early_index(c, p["early"])
        row = {"width": c["width"], "seed": c["seed"], "g1": c["g1"], "g2": c["g2"], "phi": c["phi"],
               "offdiag_rel_spread": c["offdiag_rel_spread"],
               "displacement_early": c["displacement"][e], "displacement_final": c["displacement"][-1]}
        for m in ("universal", "matrix"):
            row[f"dmax_early_{m}"] = c[f"dmax_{m}"][e]
            row[f"dmax_final_{m}"] = c[f"dmax_{m}"][-1]
            row[f"dmean_final_{m}"] = c[f"dmean_{m}"][-1]
            # time averages over the whole run of |observable_particle(t) - observable_neural(t)|
            row[f"C_absdiff_tavg_{m}"] = float(np.mean(np.abs(c[f"C_{m}"] - c["C_neural"])))
            row[f"mmd2_absdiff_tavg_{m}"] = float(np.mean(np.abs(c[f"mmd2_{m}"] - c["mmd2_neural"])))
        for m in MODELS:
            row[f"C_final_{m}"] = c[f"C_{m}"][-1]
            row[f"mmd2_final_{m}"] = c[f"mmd2_{m}"][-1]
            row[f"modes_final_{m}"] = c[f"modes_{m}"][-1]
        row["seconds"] = c["seconds"]
        rows.append(row)
    return rows


def _ms(vals) -> str:
    v = np.asarray(vals, dtype=float)
    return f"{v.mean():.3g} ± {v.std():.2g}" if len(v) > 1 else f"{v.mean():.3g}"


def markdown(rows: list[dict], p: dict, wall: float) -> str:
    lines = [f"Scale: N = {p['n']} particles / fixed latents on the sphere of radius sqrt({p['latent_dim']}), "
             f"one-hidden-layer bias-free ReLU generator (NTK parameterisation, sigma_w = 1), widths "
             f"{', '.join(map(str, p['widths']))}; default ring (8 modes, radius 0.75, sigma 0.075), RFF critic "
             f"(512 features, sigma 0.2, SGD eta_D = 0.01, 5 steps per generator step, 100 start-up), IPM + "
             f"fake gradient penalty (lambda = 1), eta_G = 1, {p['steps']} steps, seeds 0..{p['seeds'] - 1}. "
             f"Entries: mean ± std over seeds. Wall time {wall / 60:.1f} min.", "",
             "Trajectory distance between the neural run and each particle run "
             "(max_i |x_i^neural - x_i^particle|; displacement = max_i |x_i^neural(t) - x_i^neural(0)|):", "",
             f"| width | phi = g2/g1 | offdiag spread | displacement @ {p['early']} | full NTK: dmax @ {p['early']} | "
             f"universal: dmax @ {p['early']} | displacement @ {p['steps']} | full NTK: dmax @ {p['steps']} | "
             f"universal: dmax @ {p['steps']} |", "|---|---|---|---|---|---|---|---|---|"]
    for w in p["widths"]:
        r = [x for x in rows if x["width"] == w]
        lines.append(f"| {w} | {_ms([x['phi'] for x in r])} | {_ms([x['offdiag_rel_spread'] for x in r])} | "
                     f"{_ms([x['displacement_early'] for x in r])} | {_ms([x['dmax_early_matrix'] for x in r])} | "
                     f"{_ms([x['dmax_early_universal'] for x in r])} | {_ms([x['displacement_final'] for x in r])} | "
                     f"{_ms([x['dmax_final_matrix'] for x in r])} | {_ms([x['dmax_final_universal'] for x in r])} |")
    lines += ["", f"Mean over particles of the distance at step {p['steps']}, and time averages over the run "
              "of |C_particle(t) - C_neural(t)| and |MMD^2_particle(t) - MMD^2_neural(t)|:", "",
              "| width | full NTK: dmean | universal: dmean | full NTK: <abs dC> | universal: <abs dC> | "
              "full NTK: <abs dMMD^2> | universal: <abs dMMD^2> |", "|---|---|---|---|---|---|---|"]
    for w in p["widths"]:
        r = [x for x in rows if x["width"] == w]
        lines.append(f"| {w} | " + " | ".join(_ms([x[k] for x in r]) for k in (
            "dmean_final_matrix", "dmean_final_universal", "C_absdiff_tavg_matrix",
            "C_absdiff_tavg_universal", "mmd2_absdiff_tavg_matrix", "mmd2_absdiff_tavg_universal")) + " |")
    lines += ["", f"Final collapse C, MMD^2 and modes covered (step {p['steps']}):", "",
              "| width | C neural | C full NTK | C universal | MMD^2 neural | MMD^2 full NTK | MMD^2 universal | "
              "modes neural / full / univ. |", "|---|---|---|---|---|---|---|---|"]
    for w in p["widths"]:
        r = [x for x in rows if x["width"] == w]
        modes = " / ".join(_ms([x[f"modes_final_{m}"] for x in r]) for m in ("neural", "matrix", "universal"))
        lines.append(f"| {w} | " + " | ".join(_ms([x[f"C_final_{m}"] for x in r])
                                               for m in ("neural", "matrix", "universal")) + " | "
                     + " | ".join(f"{np.mean([x[f'mmd2_final_{m}'] for x in r]):.2e} ± "
                                  f"{np.std([x[f'mmd2_final_{m}'] for x in r]):.1e}"
                                  for m in ("neural", "matrix", "universal")) + f" | {modes} |")
    return "\n".join(lines) + "\n"


def figures(cases: list[dict], p: dict, main_path: Path, width_path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    wmax = max(p["widths"])
    cs = [c for c in cases if c["width"] == wmax]
    colors = {"neural": "k", "universal": "C1", "matrix": "C0"}
    styles = {"neural": "-", "universal": "--", "matrix": ":"}
    fig, axes = plt.subplots(1, 4, figsize=(19, 5.0))
    # the neural curve is drawn wide and pale underneath, the particle curves on top with markers,
    # so a curve that coincides with the neural one stays visible; one legend below the panels
    order = {"neural": 1, "universal": 3, "matrix": 4}
    markers = {"neural": None, "universal": "s", "matrix": "o"}
    for ax, key, ylabel in ((axes[0], "C", "collapse C = log 8 - H(p)"), (axes[1], "mmd2", "MMD$^2$")):
        for m in MODELS:
            ys = np.stack([c[f"{key}_{m}"] for c in cs])
            t = cs[0]["steps"]
            ax.plot(t, ys.mean(0), styles[m], color=colors[m], label=LABELS[m], zorder=order[m],
                    lw=5.0 if m == "neural" else 1.6, alpha=0.35 if m == "neural" else 1.0,
                    marker=markers[m], markevery=max(1, len(t) // 12), ms=4, mfc="none")
            if len(cs) > 1 and m != "neural":
                ax.fill_between(t, ys.min(0), ys.max(0), color=colors[m], alpha=0.12, lw=0)
        ax.set_xlabel("step")
        ax.set_ylabel(ylabel)
        ax.set_title(f"width {wmax}, mean over {len(cs)} seed(s)\n(band: min-max of the particle models)",
                     fontsize=9)
    ax = axes[2]
    t = cs[0]["snap_steps"]
    for m in ("matrix", "universal"):
        ys = np.stack([c[f"dmax_{m}"] for c in cs])
        ax.plot(t, ys.mean(0), styles[m], color=colors[m], label=f"{LABELS[m]}: max_i distance")
    ax.plot(t, np.stack([c["displacement"] for c in cs]).mean(0), "-", color="0.6",
            label="neural displacement max_i |x_i(t) - x_i(0)|")
    ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_ylabel("distance to the neural trajectory")
    ax.set_title(f"width {wmax}: distance to the network's outputs", fontsize=9)
    ax.legend(fontsize=7, loc="lower right")
    ax = axes[3]
    c = cs[0]
    ang = 2 * np.pi * np.arange(8) / 8
    for m in MODELS:
        x = c[f"snaps_{m}"][-1]
        ax.scatter(x[:, 0], x[:, 1], s=10 if m == "neural" else 6, marker="o" if m == "neural" else "x",
                   color=colors[m], alpha=0.7, label=LABELS[m])
    ax.scatter(0.75 * np.cos(ang), 0.75 * np.sin(ang), marker="+", s=120, color="r", label="mode centres")
    ax.set_aspect("equal")
    ax.set_xlabel("x1")
    ax.set_ylabel("x2")
    ax.set_title(f"final outputs, width {wmax}, seed {c['seed']}", fontsize=9)
    handles, labels = axes[0].get_legend_handles_labels()
    h3, l3 = ax.get_legend_handles_labels()
    fig.legend(handles + h3[-1:], labels + l3[-1:], loc="lower center", ncol=4, fontsize=9, frameon=False)
    fig.tight_layout(rect=(0, 0.08, 1, 1))
    main_path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(main_path, dpi=110)
    plt.close(fig)

    widths = np.array(p["widths"])
    rows = rows_of(cases, p)
    panels = [("dmax_early", f"max_i |x_i^neural - x_i^particle| at step {p['early']}", "early trajectory distance"),
              ("dmean_final", f"mean_i |x_i^neural - x_i^particle| at step {p['steps']}", "distance at the end"),
              ("C_absdiff_tavg", "time average of |C_particle - C_neural|", "collapse measure C"),
              ("mmd2_absdiff_tavg", "time average of |MMD$^2$_particle - MMD$^2$_neural|", "MMD$^2$")]
    fig, axes = plt.subplots(1, 4, figsize=(20, 4.4))
    for ax, (key, ylabel, title) in zip(axes, panels):
        for m in ("matrix", "universal"):
            v = np.array([[r[f"{key}_{m}"] for r in rows if r["width"] == w] for w in widths])
            ax.plot(widths, v.mean(1), "o-", color=colors[m], label=f"{LABELS[m]} (mean)")
            for j in range(v.shape[1]):
                ax.scatter(widths, v[:, j], color=colors[m], s=10, alpha=0.5)
        if key == "dmax_early":
            v0 = np.mean([r["dmax_early_matrix"] for r in rows if r["width"] == widths[0]])
            ax.plot(widths, v0 * np.sqrt(widths[0] / widths), ":", color="0.4", label="~ width$^{-1/2}$")
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("generator width")
        ax.set_ylabel(ylabel)
        ax.set_title(f"{title} (dots: seeds)", fontsize=9)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(width_path, dpi=110)
    plt.close(fig)


def run_cases(p: dict, jobs: int) -> list[dict]:
    # widest first: the longest jobs start first
    work = [(w, s, p) for w in sorted(p["widths"], reverse=True) for s in range(p["seeds"])]
    if jobs <= 1:
        return [one_case(j) for j in work]
    with mp.get_context("spawn").Pool(jobs) as pool:
        return pool.map(one_case, work, chunksize=1)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="N = 32, widths 64 and 1024, 40 steps, 1 seed")
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--seeds", type=int, default=None)
    ap.add_argument("--out", default=str(HERE))
    a = ap.parse_args(argv)
    p = dict(QUICK if a.quick else FULL)
    if a.seeds:
        p["seeds"] = a.seeds
    t0 = time.perf_counter()
    cases = run_cases(p, a.jobs)
    wall = time.perf_counter() - t0
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    rows = rows_of(cases, p)
    atomic_write_csv(out / "results.csv", rows, float_format="{:.6g}")
    md = markdown(rows, p, wall)
    (out / "results.md").write_text(md)
    figdir = out if a.quick else FIGS
    figures(cases, p, figdir / "particle_vs_neural.png", figdir / "particle_vs_neural_width.png")
    sys.stdout.write(md)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
