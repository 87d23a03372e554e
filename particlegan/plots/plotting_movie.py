"""Movies of runs: particles over time beside the collapse order parameter C(t), as animated GIF.

One frame per stored snapshot (record more with ``--set run.snapshots=120``). Several runs are
drawn side by side (e.g. a covering and a collapsing run), frame k showing each run's k-th
snapshot (its last one once it has no more). Written with matplotlib's animation module and
its Pillow writer (Pillow comes with matplotlib), into a scratch file whose bytes are then
written atomically, so a killed call never leaves half a GIF.
"""
from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np

from particlegan.errors import DataError


def _label(run) -> str:
    cfg = run.config
    g = cfg["generator"]
    text = f"{cfg['critic']['type']} critic"
    if g["kernel"] == "universal":
        text = f"phi = {g['phi']:g}, " + text
    return text


def n_modes(run) -> int:
    """K, the number of target modes of a run's config (each sample for file targets)."""
    t = run.config["target"]
    return {"ring": t["modes"], "grid": t["grid_size"] ** 2}.get(t["kind"], len(run.target_samples))


def run_movie(run_dirs, out: str | Path, labels=(), fps: int = 8, dpi: int = 90) -> Path:
    """Write an animated GIF of one or more stored runs; returns its path.

    Parameters
    ----------
    run_dirs : run directories (finished runs, :func:`particlegan.sweeps.runstore.load_run`).
    out : the .gif to write.
    labels : a title per run (default: its phi and critic).
    fps : frames per second.
    """
    from matplotlib.animation import FuncAnimation, PillowWriter

    from particlegan.plots.plotting import new_figure

    from particlegan.sweeps.runstore import load_run
    from particlegan.store.storage import atomic_write_bytes, check_output_file

    out = check_output_file(out, "movie", ".gif")
    runs = [load_run(d) for d in run_dirs]
    if not runs:
        raise DataError("a movie needs at least one run directory")
    labels = list(labels) + [_label(r) for r in runs[len(labels):]]
    n_frames = max(len(r.snapshots) for r in runs)
    if n_frames < 2:
        raise DataError("the runs hold a single snapshot; record more with --set run.snapshots=100")
    cols = len(runs)
    fig, axes = new_figure(2, cols, figsize=(3.6 * cols, 6.2), squeeze=False,
                             gridspec_kw={"height_ratios": [3, 1.4]})
    dots, markers, titles = [], [], []
    cmax = max(float(np.nanmax(r.series["collapse"])) for r in runs)
    for k, (run, label) in enumerate(zip(runs, labels)):
        ax, axc = axes[0, k], axes[1, k]
        y, snaps = run.target_samples, run.snapshots
        lo = np.minimum(y[:, :2].min(axis=0), snaps[..., :2].min(axis=(0, 1)))
        hi = np.maximum(y[:, :2].max(axis=0), snaps[..., :2].max(axis=(0, 1)))
        pad = 0.08 * float((hi - lo).max())
        ax.scatter(y[:, 0], y[:, 1], s=2, c="0.78", lw=0, label="target samples")
        dots.append(ax.scatter(snaps[0][:, 0], snaps[0][:, 1], s=7, c="C3", lw=0, label="particles"))
        ax.set_xlim(lo[0] - pad, hi[0] + pad)
        ax.set_ylim(lo[1] - pad, hi[1] + pad)
        ax.set_aspect("equal")
        ax.set_xlabel("$x_1$")
        ax.set_ylabel("$x_2$")
        titles.append(ax.set_title(f"{label}\nstep {int(run.snapshot_steps[0])}", fontsize=10))
        ax.legend(loc="upper right", fontsize=7, markerscale=2.5)
        axc.plot(run.series["step"], run.series["collapse"], c="C0", lw=1.2)
        markers.append(axc.axvline(run.snapshot_steps[0], c="C3", lw=1))
        axc.set_xlim(0, max(1, int(run.series["step"][-1])))
        axc.set_ylim(0, 1.08 * max(cmax, np.log(n_modes(run))))
        axc.axhline(np.log(n_modes(run)), c="0.6", lw=0.8, ls=":", label="total collapse (log K)")
        axc.legend(loc="lower right", fontsize=7)
        axc.set_xlabel("particle step")
        axc.set_ylabel("collapse C = log K - H")
    fig.tight_layout()

    def frame(i):
        for k, run in enumerate(runs):
            j = min(i, len(run.snapshots) - 1)
            dots[k].set_offsets(run.snapshots[j][:, :2])
            markers[k].set_xdata([run.snapshot_steps[j]] * 2)
            titles[k].set_text(f"{labels[k]}\nstep {int(run.snapshot_steps[j])}")
        return [*dots, *markers, *titles]

    anim = FuncAnimation(fig, frame, frames=n_frames, blit=False)
    # the writer needs a file name: render into a scratch folder, then write atomically
    with tempfile.TemporaryDirectory() as scratch:
        tmp = Path(scratch) / "movie.gif"
        anim.save(tmp, writer=PillowWriter(fps=fps), dpi=dpi)
        atomic_write_bytes(out, tmp.read_bytes())
    return out
