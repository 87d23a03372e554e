"""Movies of runs: particles over time beside the collapse order parameter C(t), as animated GIF.

One frame per stored snapshot (record more with ``--set run.snapshots=120``). Several runs are
drawn side by side (e.g. a covering and a collapsing run), frame k showing each run's k-th
snapshot (its last one once it has no more). A run whose dimension is a square (images, e.g.
MNIST) shows its first 16 particles as a 4 x 4 mosaic of images instead of the first two
coordinates, and the paper's cosine collapse C when the run recorded it. Written with matplotlib's animation module and
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


MOSAIC = 4  # image runs: the first MOSAIC^2 particles, as a MOSAIC x MOSAIC mosaic


def particle_mosaic(x: np.ndarray, side: int, n: int = MOSAIC) -> np.ndarray:
    """The first n^2 particles of x (N, side^2) as one (n side, n side) image, row by row (NaN
    where there are fewer particles)."""
    tiles = np.full((n * n, side, side), np.nan)
    k = min(len(x), n * n)
    tiles[:k] = np.asarray(x[:k], dtype=float).reshape(k, side, side)
    return tiles.reshape(n, n, side, side).transpose(0, 2, 1, 3).reshape(n * side, n * side)


def _collapse_key(run) -> str:
    """The collapse series drawn: the cosine one of data-point targets when recorded."""
    return "collapse_cos" if "collapse_cos" in run.series else "collapse"


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

    from particlegan.plots.plotting import image_side, new_figure

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
    sides = [image_side(r.snapshots.shape[-1]) for r in runs]
    cmax = max(float(np.nanmax(r.series[_collapse_key(r)])) for r in runs)
    for k, (run, label) in enumerate(zip(runs, labels)):
        ax, axc = axes[0, k], axes[1, k]
        y, snaps = run.target_samples, run.snapshots
        if sides[k]:  # images: a mosaic of the first particles, on the targets' grey scale
            dots.append(ax.imshow(particle_mosaic(snaps[0], sides[k]), cmap="gray",
                                  vmin=float(y.min()), vmax=float(y.max())))
            ax.set_xticks([])
            ax.set_yticks([])
            ax.set_xlabel(f"particles 0-{min(len(snaps[0]), MOSAIC * MOSAIC) - 1}")
        else:
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
            ax.legend(loc="upper right", fontsize=7, markerscale=2.5)
        titles.append(ax.set_title(f"{label}\nstep {int(run.snapshot_steps[0])}", fontsize=10))
        axc.plot(run.series["step"], run.series[_collapse_key(run)], c="C0", lw=1.2)
        markers.append(axc.axvline(run.snapshot_steps[0], c="C3", lw=1))
        axc.set_xlim(0, max(1, int(run.series["step"][-1])))
        axc.set_ylim(0, 1.08 * max(cmax, np.log(n_modes(run))))
        axc.axhline(np.log(n_modes(run)), c="0.6", lw=0.8, ls=":", label="total collapse (log K)")
        axc.legend(loc="lower right", fontsize=7)
        axc.set_xlabel("particle step")
        axc.set_ylabel("collapse C = log K - H" + (" (cosine)" if _collapse_key(run) == "collapse_cos" else ""))
    fig.tight_layout()

    def frame(i):
        for k, run in enumerate(runs):
            j = min(i, len(run.snapshots) - 1)
            if sides[k]:
                dots[k].set_data(particle_mosaic(run.snapshots[j], sides[k]))
            else:
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
