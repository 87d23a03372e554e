"""Figures (matplotlib), always written atomically.

Figures are made with ``matplotlib.figure.Figure`` and rendered by the Agg canvas directly, not
through pyplot: nothing here selects a matplotlib backend or keeps global figure state, so
importing or calling this module leaves a notebook's or an application's matplotlib as it was.
"""
from __future__ import annotations

import io
from pathlib import Path

import matplotlib.ticker  # noqa: F401  (locators of the phase-diagram and asinh axes)
import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from particlegan.errors import DataError
from particlegan.store.storage import atomic_write_bytes


def new_figure(nrows: int = 1, ncols: int = 1, figsize=None, layout=None, **subplots_kw):
    """(figure, axes) like ``pyplot.subplots``, on an Agg canvas of its own (no pyplot state)."""
    fig = Figure(figsize=figsize, layout=layout)
    FigureCanvasAgg(fig)
    return fig, fig.subplots(nrows, ncols, **subplots_kw)


def save_figure(fig, path: str | Path, dpi: int = 120) -> None:
    """Render ``fig`` to PNG in memory and write it atomically."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, bbox_inches="tight")
    atomic_write_bytes(path, buf.getvalue())


def set_signed_log_scale(ax, values, which: str = "y", floor: float | None = None) -> str:
    """A log-like axis for a quantity that may change sign near zero (the unbiased MMD^2
    estimate, a growth rate): log when every value is positive, else matplotlib's ``asinh``
    scale, which is linear within +-``floor`` and logarithmic beyond, and smooth everywhere (a
    symlog axis breaks its slope at the threshold, so a crossing of zero looks like a cliff).

    ``floor`` (default 1e-3 of the largest |value|) should be the level below which the values
    are noise, e.g. ~1/N for an MMD^2 of N particles. Returns the scale name used.
    """
    v = np.asarray(values, dtype=float)
    v = v[np.isfinite(v)]
    set_scale = ax.set_yscale if which == "y" else ax.set_xscale
    if v.size == 0:
        return "linear"
    if np.all(v > 0):
        set_scale("log")
        return "log"
    top = float(np.max(np.abs(v))) or 1.0
    width = floor if floor else 1e-3 * top
    set_scale("asinh", linear_width=width)
    # ticks at 0 and at the decades outside the linear part (the default locator also puts
    # ticks inside it, whose labels then overlap)
    k0 = int(np.ceil(np.log10(width)))
    pos = [10.0 ** k for k in range(k0, int(np.ceil(np.log10(max(float(v.max()), width)))) + 1)]
    neg = [-10.0 ** k for k in range(k0, int(np.ceil(np.log10(max(-float(v.min()), width)))) + 1)
           if float(v.min()) < -0.5 * 10.0 ** k]
    axis = ax.yaxis if which == "y" else ax.xaxis
    axis.set_major_locator(matplotlib.ticker.FixedLocator(sorted(neg) + [0.0] + pos))
    axis.set_minor_locator(matplotlib.ticker.NullLocator())
    axis.set_major_formatter(matplotlib.ticker.FuncFormatter(
        lambda y, _: "0" if y == 0 else ("$-" if y < 0 else "$") + f"10^{{{int(round(np.log10(abs(y))))}}}$"))
    return "asinh"


MAX_SNAPSHOT_PANELS = 8


def snapshot_panels(n_snapshots: int, max_panels: int = MAX_SNAPSHOT_PANELS) -> np.ndarray:
    """Indices of the snapshots drawn: all of them, or ``max_panels`` evenly spaced ones
    including the first and the last (runs may store hundreds of snapshots for analysis)."""
    if n_snapshots <= max_panels:
        return np.arange(n_snapshots)
    return np.unique(np.round(np.linspace(0, n_snapshots - 1, max_panels)).astype(np.int64))


def plot_snapshots(snapshots: np.ndarray, steps: np.ndarray, target: np.ndarray, centres: np.ndarray,
                   title: str = ""):
    """Panels of target samples (grey) and particles (colour) in the first two coordinates.

    snapshots : (S, N, d);  steps : (S,);  target : (M, d);  centres : (K, d).
    At most ``MAX_SNAPSHOT_PANELS`` evenly spaced snapshots (first and last included) are drawn.
    """
    pick = snapshot_panels(len(snapshots))
    snapshots, steps = np.asarray(snapshots)[pick], np.asarray(steps)[pick]
    s = len(snapshots)
    fig, axes = new_figure(1, s, figsize=(2.6 * s, 2.8), sharex=True, sharey=True, squeeze=False)
    lo = np.minimum(target[:, :2].min(axis=0), snapshots[..., :2].min(axis=(0, 1)))
    hi = np.maximum(target[:, :2].max(axis=0), snapshots[..., :2].max(axis=(0, 1)))
    pad = 0.1 * (hi - lo).max()
    for ax, x, t in zip(axes[0], snapshots, steps):
        ax.scatter(target[:, 0], target[:, 1], s=2, c="0.75", lw=0, label="target")
        if len(centres) <= 100:
            ax.scatter(centres[:, 0], centres[:, 1], s=12, marker="x", c="0.3", lw=0.8)
        ax.scatter(x[:, 0], x[:, 1], s=5, c="C3", lw=0, label="particles")
        ax.set_title(f"step {int(t)}", fontsize=9)
        ax.set_xlim(lo[0] - pad, hi[0] + pad)
        ax.set_ylim(lo[1] - pad, hi[1] + pad)
        ax.set_aspect("equal")
        ax.set_xlabel("$x_1$")
    axes[0, 0].set_ylabel("$x_2$")
    axes[0, -1].legend(loc="upper right", fontsize=7, markerscale=3)
    if title:
        fig.suptitle(title, fontsize=10)
    return fig


def image_side(d: int) -> int | None:
    """Side s of square s x s images of dimension d = s^2 (s >= 4), else None."""
    s = int(round(np.sqrt(d)))
    return s if s >= 4 and s * s == d else None


def plot_image_grid(rows: list[tuple[str, np.ndarray]], title: str, max_images: int = 16):
    """Particles (or targets) as images: one row of up to ``max_images`` per (label, (n, s^2))."""
    side = image_side(rows[0][1].shape[1])
    n_cols = max(1, min(max_images, max(len(a) for _, a in rows)))
    fig, axes = new_figure(len(rows), n_cols, figsize=(0.9 * n_cols + 1.2, 1.0 * len(rows) + 0.5),
                           squeeze=False)
    for r, (label, arr) in enumerate(rows):
        for c in range(n_cols):
            ax = axes[r, c]
            ax.set_xticks([])
            ax.set_yticks([])
            if c < len(arr):
                ax.imshow(arr[c].reshape(side, side), cmap="gray")
            else:
                ax.axis("off")
        axes[r, 0].set_ylabel(label, rotation=0, ha="right", va="center")
    fig.suptitle(title, fontsize=9)
    return fig


def write_run_figures(res, run_dir: str | Path) -> None:
    """The figures of one finished run (``particlegan run``'s): ``run_dir/particles.png``."""
    plot_particles(res, Path(run_dir) / "particles.png")


def plot_particles(res, path: str | Path) -> None:
    """particles.png of a :class:`particlegan.engine.simulate.SimResult`: snapshots in the first two
    coordinates, or, when d is a square (images), the particles and targets as image grids."""
    cfg = res.model.cfg
    g = cfg["generator"]
    title = (f"{cfg['target']['kind']} target, N={cfg['particles']['n']}, kernel={g['kernel']}"
             + (f", phi={g['phi']:g}" if g["kernel"] == "universal" else "")
             + f", critic={cfg['critic']['type']}, status={res.status}")
    if image_side(res.final_state.x.shape[1]):
        fig = plot_image_grid([(f"particles, step {res.final_state.step}", res.final_state.x),
                               ("targets", res.model.target.samples)], title)
    else:
        fig = plot_snapshots(res.snapshots, res.snapshot_steps, res.model.target.samples,
                             res.model.target.centres, title)
    save_figure(fig, path)


# ---------------------------------------------------------------------------------------------
# sweep and run figures: phase diagrams, seed-averaged curves, run overviews
# ---------------------------------------------------------------------------------------------
# axis labels for config keys and observables; unknown names are shown as they are
KEY_LABELS = {
    "generator.phi": r"$\phi = g_2/g_1$",
    "generator.g1": r"$g_1$",
    "generator.g2": r"$g_2$",
    "generator.sigma_w": r"$\sigma_w$",
    "generator.sigma_b": r"$\sigma_b$",
    "generator.width": "generator width",
    "particles.n": r"particles $N$",
    "particles.init_sigma": r"initial spread $\sigma_0$",
    "dynamics.eta_d": r"$\eta_D$",
    "dynamics.eta_g": r"$\eta_G$",
    "dynamics.critic_steps": r"critic steps $n_c$",
    "loss.penalty_weight": r"$\lambda$",
    "loss.alpha_d": r"$\alpha_D$",
    "loss.alpha_g": r"$\alpha_G$",
    "critic.sigma": r"critic width $\sigma_D$",
    "critic.features": r"critic features $K$",
    "critic.ridge": r"$\lambda_r$",
    "critic.memory": "critic memory",
    "critic.weight_decay": "critic weight decay",
    "target.modes": "target modes",
    "target.sigma": r"mode width $\sigma$",
    "target.radius": "ring radius",
    "target.dim": r"dimension $d$",
    "run.steps": "steps",
    "seed": "seed",
    "collapse": r"collapse $C = \log K - H(p)$",
    "modes_covered": "modes covered",
    "hq_fraction": "high-quality fraction",
    "mmd2": r"$\mathrm{MMD}^2$",
    "radius_gyration": r"radius of gyration $R_g$",
    "critic_grad_norm": r"critic gradient norm $\|\nabla f\|$",
    "com_error": r"centre-of-mass error $\|\bar{x} - \bar{y}\|$",
    "kid": "KID",
    "collapse_cos": r"collapse $C = \log M - H(p)$ (cosine)",
    "quality_cos": "mean nearest-target cosine distance",
    "spread_cos": r"mean $|\cos|$ between particles",
    "targets_hit": "targets hit",
    "kid_std": "KID std over subsets",
    "lr_scale": r"learning-rate factor $\eta / \eta_0$",
    "steps": "steps taken",
    "wall_time_s": "wall time (s)",
    "convergence_time": "convergence time (steps)",
}


def axis_label(name: str) -> str:
    """Label for a config key or observable: a symbol where one is known, else the name."""
    return KEY_LABELS.get(name, name)


def _is_numeric(values) -> bool:
    return all(isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, bool)
               for v in values)


def _scale_for(values: np.ndarray, log: bool) -> tuple[str, dict]:
    """Matplotlib scale for an axis: log, or symlog when a log axis must also show values <= 0."""
    if not log:
        return "linear", {}
    positive = np.abs(values[values != 0])
    if np.all(values > 0):
        return "log", {}
    linthresh = float(positive.min()) if len(positive) else 1.0
    return "symlog", {"linthresh": linthresh, "linscale": 0.5}


def _cell_edges(centres: np.ndarray, transform) -> np.ndarray:
    """Edges of pcolormesh cells around sorted ``centres``, halfway in the axis' scale."""
    u = transform.transform(centres.reshape(-1, 1)).ravel()
    if len(u) == 1:
        linear_scale = np.allclose(transform.transform([[2.0]]), 2.0)
        half = (0.5 * abs(centres[0]) or 0.5) if linear_scale else 0.5
        edges_u = np.array([u[0] - half, u[0] + half])
    else:
        mid = 0.5 * (u[1:] + u[:-1])
        edges_u = np.concatenate([[u[0] - (mid[0] - u[0])], mid, [u[-1] + (u[-1] - mid[-1])]])
    return transform.inverted().transform(edges_u.reshape(-1, 1)).ravel()


# physical range of swept keys: the cells of a phase diagram are not drawn past it
KEY_RANGES = {"generator.phi": (None, 1.0), "hq_fraction": (0.0, 1.0)}
MAX_TICK_LABELS = 10


def _clip_edges(edges: np.ndarray, pos: np.ndarray, key: str) -> np.ndarray:
    """Cell edges limited to the key's physical range (:data:`KEY_RANGES`), and not across
    zero when every grid value has one sign (a cell around phi = 0 stops at 0 if no negative
    phi was run); the outer cells then end at the outermost grid values' side of the range."""
    lo, hi = KEY_RANGES.get(key, (None, None))
    if lo is None and np.all(pos >= 0):
        lo = 0.0
    if hi is None and np.all(pos <= 0):
        hi = 0.0
    out = edges.copy()
    if lo is not None:
        out = np.maximum(out, lo)
    if hi is not None:
        out = np.minimum(out, hi)
    return out


def _grid_ticks(ax, which: str, pos: np.ndarray, values: list) -> None:
    """Ticks at the grid values (every k-th labelled when there are many), no minor ticks."""
    order = np.argsort(pos)
    step = max(1, int(np.ceil(len(pos) / MAX_TICK_LABELS)))
    shown = order[::step]
    labels = [_fmt_value(values[i], 3) for i in shown]  # 3 digits: log grids have long values
    if which == "x":
        ax.set_xticks(pos[shown], labels, rotation=45 if len(shown) > 6 else 0)
        ax.xaxis.set_minor_locator(matplotlib.ticker.NullLocator())
    else:
        ax.set_yticks(pos[shown], labels)
        ax.yaxis.set_minor_locator(matplotlib.ticker.NullLocator())


def _setup_axis(ax, which: str, values: list, key: str, log: bool):
    """Positions of ``values`` along one axis (numeric values, or 0..n-1 for categories), their
    cell edges (within the key's physical range), and the axis scale, ticks at the grid values
    and label."""
    set_scale = ax.set_xscale if which == "x" else ax.set_yscale
    set_label = ax.set_xlabel if which == "x" else ax.set_ylabel
    axis = ax.xaxis if which == "x" else ax.yaxis
    if _is_numeric(values):
        pos = np.asarray(values, dtype=float)
        scale, kwargs = _scale_for(pos, log)
        set_scale(scale, **kwargs)
        edges = _clip_edges(_cell_edges(pos, axis.get_transform()), pos, key)
        _grid_ticks(ax, which, pos, values)
    else:
        pos = np.arange(len(values), dtype=float)
        edges = np.arange(len(values) + 1, dtype=float) - 0.5
        (ax.set_xticks if which == "x" else ax.set_yticks)(pos, [_fmt_value(v) for v in values])
    set_label(axis_label(key))
    return pos, edges


def _fmt_value(v, digits: int = 6) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (float, np.floating)):
        return f"{v:.{digits}g}"
    return str(v)


def plot_phase_diagram(cells: list[dict], x_key: str, y_key: str, z_key: str, log_x: bool = False,
                       log_y: bool = False, level: float | None = None, title: str | None = None,
                       theory: list[dict] | None = None, ax=None, vmin: float | None = None,
                       vmax: float | None = None, colorbar: bool = True):
    """Heatmap of a seed-averaged observable over a 2-d grid, with the transition contour.

    Parameters
    ----------
    cells : :func:`particlegan.sweeps.analysis.seed_average` output grouped by ``(x_key, y_key)``
        (dicts with the two key values and "mean", "n").
    x_key, y_key, z_key : config keys on the axes and the observable shown.
    log_x, log_y : logarithmic axes (symlog when an axis also holds values <= 0).
    level : level of the transition contour (default: midway between the smallest and the
        largest mean).
    title : figure title (default: the observable and the number of seeds).
    theory : optional curves ``{"x": array, "y": array, "label": str, "style": str}`` drawn on
        top (e.g. the critical penalty of effective-gan-spec A2.9).
    ax : draw into this Axes (default: a new figure).  vmin, vmax : colour range (default: the
        data range; panels compared side by side share one).
    colorbar : draw this panel's colour bar (side-by-side panels share one, drawn by the caller).

    Returns
    -------
    matplotlib Figure.
    """
    xs = sorted({c[x_key] for c in cells}, key=_order)
    ys = sorted({c[y_key] for c in cells}, key=_order)
    z = np.full((len(ys), len(xs)), np.nan)
    xi, yi = {v: i for i, v in enumerate(xs)}, {v: i for i, v in enumerate(ys)}
    for c in cells:
        z[yi[c[y_key]], xi[c[x_key]]] = c["mean"]
    if ax is None:
        fig, ax = new_figure(figsize=(6.4, 4.8))
    else:
        fig = ax.figure
    ax.set_facecolor("0.85")  # grid points without data stay grey
    xpos, xedges = _setup_axis(ax, "x", xs, x_key, log_x)
    ypos, yedges = _setup_axis(ax, "y", ys, y_key, log_y)
    masked = np.ma.masked_invalid(z)
    mesh = ax.pcolormesh(xedges, yedges, masked, cmap="viridis", shading="flat", vmin=vmin, vmax=vmax)
    ax.phase_mesh = mesh  # for a colour bar shared by several panels
    cbar = None
    if colorbar:
        cbar = fig.colorbar(mesh, ax=ax)
        cbar.set_label(axis_label(z_key) + " (mean over seeds)")
    finite = z[np.isfinite(z)]
    handles = []
    # a contour between categories would interpolate between unrelated settings: numeric axes only
    if finite.size and len(xs) > 1 and len(ys) > 1 and _is_numeric(xs) and _is_numeric(ys):
        lo, hi = float(finite.min()), float(finite.max())
        lev = 0.5 * (lo + hi) if level is None else float(level)
        if lo < lev < hi:
            ax.contour(xpos, ypos, masked, levels=[lev], colors="white", linewidths=2.0)
            if cbar is not None:
                cbar.ax.axhline(lev, color="white", lw=2.0)
            ax.phase_level = lev
            handles.append(matplotlib.lines.Line2D([], [], color="white", lw=2.0,
                                                   label=f"transition: {z_key} = {lev:.3g}"))
    for curve in theory or []:
        (line,) = ax.plot(curve["x"], curve["y"], curve.get("style", "--"), color="C3", lw=1.5,
                          label=curve["label"])
        handles.append(line)
    ax.set_xlim(xedges[0], xedges[-1])
    ax.set_ylim(yedges[0], yedges[-1])
    if handles:
        legend = ax.legend(handles=handles, loc="best", fontsize=8, framealpha=0.7)
        legend.get_frame().set_facecolor("0.5")
    n_seeds = sorted({c["n"] for c in cells})
    seeds = f"{n_seeds[0]}" if len(n_seeds) == 1 else f"{n_seeds[0]}-{n_seeds[-1]}"
    ax.set_title(title or f"{axis_label(z_key)}, mean over {seeds} seed(s)", fontsize=10)
    return fig


def _order(v):
    if isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, bool):
        return (0, float(v), "")
    return (1, 0.0, str(v))


def plot_seed_lines(groups: dict, x_key: str, y_key: str, hue_key: str | None = None,
                    log_x: bool = False, log_y: bool = False, title: str | None = None,
                    vlines: list[dict] | None = None):
    """Curves of a seed-averaged observable with error bars (mean +- standard error).

    Parameters
    ----------
    groups : hue value (None without hue) -> list of :func:`particlegan.sweeps.analysis.seed_average`
        dicts (with ``x_key``, "mean", "sem", "n").
    x_key, y_key, hue_key : config key on x, observable on y, config key distinguishing curves.
    log_x, log_y : logarithmic axes.
    vlines : optional vertical reference lines ``{"x": float, "label": str, "hue": value,
        "style": str}`` (e.g. the critical penalty of A2.9), coloured like their curve.

    Returns
    -------
    matplotlib Figure.
    """
    fig, ax = new_figure(figsize=(6.4, 4.4))
    hues = sorted(groups, key=lambda v: _order(v) if v is not None else (0, 0.0, ""))
    xs_all = sorted({e[x_key] for g in groups.values() for e in g}, key=_order)
    numeric_x = _is_numeric(xs_all)
    if numeric_x:
        scale, kwargs = _scale_for(np.asarray(xs_all, dtype=float), log_x)
        ax.set_xscale(scale, **kwargs)
    else:
        ax.set_xticks(range(len(xs_all)), [_fmt_value(v) for v in xs_all])
    if log_y:
        ax.set_yscale("log")
    hidden = 0
    colours = {}
    for i, hue in enumerate(hues):
        entries = sorted(groups[hue], key=lambda e: _order(e[x_key]))
        x = (np.asarray([e[x_key] for e in entries], dtype=float) if numeric_x
             else np.asarray([xs_all.index(e[x_key]) for e in entries], dtype=float))
        mean = np.asarray([e["mean"] for e in entries], dtype=float)
        sem = np.asarray([e["sem"] for e in entries], dtype=float)
        hidden += int(np.sum(~np.isfinite(mean) | ((mean <= 0) if log_y else False)))
        mean = np.where(np.isfinite(mean), mean, np.nan)  # never-reached convergence times: not drawn
        label = None if hue is None else f"{axis_label(hue_key)} = {_fmt_value(hue)}"
        colours[hue] = f"C{i % 10}"
        ax.errorbar(x, mean, yerr=np.nan_to_num(sem, nan=0.0), marker="o", ms=4, capsize=3,
                    color=colours[hue], label=label)
    for line in vlines or []:
        ax.axvline(line["x"], color=colours.get(line.get("hue"), "0.3"), ls=line.get("style", "--"),
                   lw=1.0, label=line.get("label"))
    ax.set_xlabel(axis_label(x_key))
    ax.set_ylabel(axis_label(y_key) + r" (mean $\pm$ s.e. over seeds)")
    if hidden:
        ax.text(0.01, 0.99, f"{hidden} point(s) not drawn (not finite" + (", or <= 0 on the log axis" if log_y else "")
                + ")",
                transform=ax.transAxes, va="top", fontsize=7, color="0.3")
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=8)
    ax.grid(alpha=0.3, which="both")
    ax.set_title(title or f"{axis_label(y_key)} vs {axis_label(x_key)}", fontsize=10)
    return fig


RUN_PANELS = (("collapse", False), ("modes_covered", False), ("mmd2", True), ("critic_grad_norm", False),
              ("com_error", False))
# runs against data-point targets that recorded the paper's cosine measures (observables.cosine)
COSINE_RUN_PANELS = (("collapse_cos", False), ("targets_hit", False), ("spread_cos", False),
                     ("quality_cos", False), ("critic_grad_norm", False))
OPTIONAL_RUN_PANELS = (("kid", True), ("lr_scale", True))  # drawn when the run recorded them
IMAGE_SNAPSHOTS = 4        # snapshot rows of an image run's overview (first and last included)
IMAGE_PARTICLES = 8        # particles per row: every 7th, as the paper's slices (0, 7, 14, ...)


def _image_rows(data: dict) -> list[tuple[str, np.ndarray]]:
    """(label, (n, s^2)) rows of an image run's overview: particles 0, 7, 14, ... at up to
    :data:`IMAGE_SNAPSHOTS` snapshots, then the targets of the same indices."""
    snaps, steps, targets = data["snapshots"], data["snapshot_steps"], data["target_samples"]
    idx = np.arange(0, snaps.shape[1], 7)[:IMAGE_PARTICLES]
    rows = [(f"step {int(steps[i])}", snaps[i][idx]) for i in snapshot_panels(len(snaps), IMAGE_SNAPSHOTS)]
    return rows + [("targets", targets[idx[idx < len(targets)]])]


def plot_run_overview(data: dict, title: str = ""):
    """Time series of a run (collapse, modes covered, MMD^2 on a log scale (asinh where the
    unbiased estimate turns negative, linear within the 1/N noise), critic gradient norm,
    centre-of-mass error, and KID / learning-rate factor when the run recorded them) above its
    particle snapshots.

    A run whose dimension is a square (images, e.g. MNIST's 784 = 28^2) shows its snapshots as
    image grids (particles 0, 7, 14, ... at up to four snapshots, and the targets), and, when it
    recorded the cosine measures, those series instead (collapse C, targets hit, spread,
    quality, critic gradient norm).

    Parameters
    ----------
    data : :func:`particlegan.sweeps.analysis.load_run` output (result.npz arrays).
    title : figure title.

    Returns
    -------
    matplotlib Figure.
    """
    if image_side(data["final_particles"].shape[1]):
        rows = _image_rows(data)
        fig = plot_image_grid(rows, title, max_images=IMAGE_PARTICLES)
        fig.set_size_inches(15.0, 3.2 + 1.1 * len(rows))
        top = 1.0 - 2.6 / (3.2 + 1.1 * len(rows))  # the series keep ~2.6 inches at the top
        fig.subplots_adjust(top=top - 0.06, bottom=0.03, left=0.3, right=0.7)
        series = (top + 0.02, 0.90)
    else:
        fig = plot_snapshots(data["snapshots"], data["snapshot_steps"], data["target_samples"],
                             data["mode_centres"], title)
        n_snap = len(snapshot_panels(len(data["snapshots"])))
        fig.set_size_inches(max(2.6 * n_snap, 15.0), 6.4)
        fig.subplots_adjust(top=0.42, bottom=0.06)  # snapshots move to the lower part
        series = (0.56, 0.88)
    base = COSINE_RUN_PANELS if "collapse_cos" in data else RUN_PANELS
    panels = base + tuple(p for p in OPTIONAL_RUN_PANELS if p[0] in data)
    grid = fig.add_gridspec(1, len(panels), left=0.05, right=0.98, top=series[1], bottom=series[0], wspace=0.4)
    steps = data["step"]
    for i, (key, log) in enumerate(panels):
        ax = fig.add_subplot(grid[0, i])
        values = np.asarray(data[key], dtype=float)
        ax.plot(steps, values, color="C0", lw=1.2)
        if log:
            # the unbiased MMD^2 estimate dips below zero near convergence (noise ~ 1/N)
            set_signed_log_scale(ax, values, floor=1.0 / max(2, data["final_particles"].shape[0]))
        if key == "modes_covered":
            ax.set_ylim(-0.3, len(data["mode_centres"]) + 0.3)
        if key == "targets_hit":
            ax.set_ylim(-0.3, len(data["target_samples"]) + 0.3)
        ax.set_xlabel("step")
        ax.set_title(axis_label(key), fontsize=9)
        ax.grid(alpha=0.3)
    return fig


def _rows_matching(rows: list[dict], where: list[str]) -> list[dict]:
    from particlegan.store.config import parse_override
    from particlegan.errors import ConfigError

    for item in where:
        if "=" not in item:
            raise ConfigError(f"--where {item!r} must look like section.key=value")
        key = item.split("=", 1)[0].strip()
        if rows and key not in rows[0]:
            raise ConfigError(f"--where {item!r}: no column {key!r} in the results")
        value = parse_override(item if "." in key else f"x.{item}")[2]
        if isinstance(value, bool):
            value = "true" if value else "false"

        def same(cell, value=value):
            if isinstance(cell, float) and isinstance(value, (int, float)):
                return bool(np.isclose(cell, value, rtol=1e-9, atol=0.0))
            return str(cell) == str(value)

        rows = [r for r in rows if same(r[key])]
    return rows


def _swept_keys(rows: list[dict]) -> list[str]:
    cols = list(rows[0]) if rows else []
    return cols[1:cols.index("seed")] if "seed" in cols else []


def _select(sweep_dir, used_keys: list[str], where: list[str], columns_needed: list[str]) -> list[dict]:
    """Rows of a sweep restricted by --where; refuses to average silently over a swept key that
    is neither plotted nor fixed."""
    from particlegan.sweeps.analysis import load_results
    from particlegan.errors import ConfigError, DataError

    rows = load_results(sweep_dir)
    if not rows:
        raise DataError(f"the results of '{sweep_dir}' hold no runs yet")
    for key in columns_needed:
        if key not in rows[0]:
            raise ConfigError(f"no column {key!r} in the results of '{sweep_dir}' "
                              f"(columns: {', '.join(rows[0])})")
    rows = _rows_matching(rows, list(where))
    if not rows:
        raise DataError(f"no run of '{sweep_dir}' matches --where {' '.join(where)}")
    for key in _swept_keys(rows):
        if key not in used_keys and len({str(r[key]) for r in rows}) > 1:
            raise ConfigError(f"the sweep also varies {key}; plot it (--x/--y/--hue) or fix it "
                              f"with --where {key}=VALUE")
    return rows


def _run_config(sweep_dir, run_id) -> dict | None:
    import json

    try:
        data = json.loads((Path(sweep_dir) / "runs" / str(run_id) / "config.json").read_text())
    except (OSError, ValueError):
        return None
    return data.get("config", data)


def _critical_penalties(cfg, notes: list[str]):
    try:
        from particlegan.sweeps.analysis import critical_penalties

        return critical_penalties(cfg) if cfg is not None else None
    except ImportError:
        notes.append("theory lines skipped: particlegan.maths.stability is not available")
        return None


def _penalty_theory_curves(sweep_dir, rows, x: str, y: str, notes: list[str]) -> list[dict]:
    """lambda_c of the centre-of-mass and relative modes (A2.9) as functions of the other axis,
    when one axis is loss.penalty_weight."""
    curves: list[dict] = []
    if "loss.penalty_weight" not in (x, y) or x == y:
        return curves
    other = y if x == "loss.penalty_weight" else x
    values = sorted({r[other] for r in rows}, key=_order)
    if not _is_numeric(values):
        return curves
    lam = {"cm": [], "rel": []}
    for v in values:
        row = next((r for r in rows if r[other] == v and r["status"] != "failed"), None)
        crit = _critical_penalties(_run_config(sweep_dir, row["run_id"]) if row else None, notes)
        for mode in lam:
            lam[mode].append(crit[mode] if crit else np.nan)
    for mode, style, name in (("cm", "--", "centre of mass"), ("rel", ":", "relative")):
        lc = np.asarray(lam[mode], dtype=float)
        if np.any(np.isfinite(lc)):
            pen, oth = lc, np.asarray(values, dtype=float)
            curves.append({"x": pen if x == "loss.penalty_weight" else oth,
                           "y": oth if x == "loss.penalty_weight" else pen,
                           "label": rf"$\lambda_c$ ({name} mode, theory)", "style": style})
    return curves


def _panel_label(sweep_dir, rows) -> str:
    """Default panel title of a sweep in a side-by-side phase plot: its critic and loss."""
    row = next((r for r in rows if r["status"] != "failed"), None)
    cfg = _run_config(sweep_dir, row["run_id"]) if row else None
    if not cfg:
        return Path(sweep_dir).name
    crit = cfg["critic"]
    width = f", sigma = {crit['sigma']:g}" if crit["type"] in ("rff", "relu_features", "kernel") else ""
    return f"critic {crit['type']}{width}"


def phase_plot(sweep_dir, x: str, y: str, z: str, log_x: bool = False, log_y: bool = False,
               level: float | None = None, where=(), out=None, theory: bool = True,
               labels=()) -> tuple[Path, list[str]]:
    """Write the phase diagram of observable ``z`` over keys ``x`` and ``y`` of a sweep, or of
    several sweeps side by side with one colour scale.

    With ``theory`` and one axis being loss.penalty_weight, the critical penalties lambda_c of
    the centre-of-mass and relative modes (A2.9) are drawn as functions of the other axis.

    Parameters
    ----------
    sweep_dir : a sweep directory, or a list of them (one panel each, e.g. two critic types).
    labels : panel titles for several sweeps (default: each sweep's critic type and width).

    Returns
    -------
    (path of the PNG, default ``DIR/phase_<z>.png`` of the first sweep; notes for the user).
    """
    from particlegan.sweeps.analysis import seed_average

    dirs = [sweep_dir] if isinstance(sweep_dir, (str, Path)) else list(sweep_dir)
    if not dirs:
        raise DataError("no sweep directory given")
    labels = list(labels)
    if labels and len(labels) != len(dirs):
        raise DataError(f"{len(labels)} label(s) for {len(dirs)} sweep directories")
    notes: list[str] = []
    panels = []
    for d in dirs:
        rows = _select(d, [x, y], where, [x, y, z])
        curves = _penalty_theory_curves(d, rows, x, y, notes) if theory else []
        panels.append((d, rows, seed_average(rows, [x, y], z), curves))
    if len(panels) == 1:
        _, _, cells, curves = panels[0]
        fig = plot_phase_diagram(cells, x, y, z, log_x, log_y, level, theory=curves)
    else:
        means = np.array([c["mean"] for _, _, cells, _ in panels for c in cells], dtype=float)
        finite = means[np.isfinite(means)]
        vmin, vmax = (float(finite.min()), float(finite.max())) if finite.size else (None, None)
        if level is None and finite.size:
            level = 0.5 * (vmin + vmax)  # one transition level for every panel
        fig, axes = new_figure(1, len(panels), figsize=(5.6 * len(panels) + 1.2, 4.8), squeeze=False,
                                 layout="constrained")
        for i, (ax, (d, rows, cells, curves)) in enumerate(zip(axes[0], panels)):
            title = labels[i] if labels else _panel_label(d, rows)
            plot_phase_diagram(cells, x, y, z, log_x, log_y, level, title=title, theory=curves, ax=ax,
                               vmin=vmin, vmax=vmax, colorbar=False)
        cbar = fig.colorbar(axes[0, 0].phase_mesh, ax=list(axes[0]))  # one scale, one bar
        cbar.set_label(axis_label(z) + " (mean over seeds)")
        levels = {getattr(ax, "phase_level", None) for ax in axes[0]} - {None}
        for lev in levels:
            cbar.ax.axhline(lev, color="white", lw=2.0)
    path = Path(out) if out else Path(dirs[0]) / f"phase_{z}.png"
    save_figure(fig, path)
    return path, notes


def lines_plot(sweep_dir, x: str, y: str, hue: str | None = None, log_x: bool = False,
               log_y: bool = False, where=(), out=None, threshold: float | None = None,
               series: str = "mmd2", theory: bool = True) -> tuple[Path, list[str]]:
    """Write seed-averaged curves of observable ``y`` against key ``x`` (one per ``hue`` value).

    ``y = "convergence_time"`` is computed per run from its result.npz: the first recorded step
    after which ``series`` stays below ``threshold`` (needs ``threshold``). With ``theory`` and
    ``x = loss.penalty_weight`` the critical penalties of A2.9 are marked.

    Returns
    -------
    (path of the PNG, default ``DIR/lines_<y>_vs_<x>.png``; notes for the user).
    """
    from particlegan.sweeps.analysis import add_convergence_times, seed_average
    from particlegan.errors import ConfigError

    derived = y == "convergence_time"
    if derived and threshold is None:
        raise ConfigError("--y convergence_time needs --threshold (the level the series must stay below)")
    keys = [x] + ([hue] if hue else [])
    rows = _select(sweep_dir, keys, where, keys + ([] if derived else [y]))
    if derived:
        add_convergence_times(rows, sweep_dir, series, threshold)
    notes: list[str] = []
    groups: dict = {}
    for hue_value in sorted({r[hue] for r in rows}, key=_order) if hue else [None]:
        subset = [r for r in rows if hue is None or r[hue] == hue_value]
        groups[hue_value] = seed_average(subset, [x], y)
    vlines = []
    if theory and x == "loss.penalty_weight":
        for hue_value in groups:
            row = next((r for r in rows if (hue is None or r[hue] == hue_value) and r["status"] != "failed"), None)
            crit = _critical_penalties(_run_config(sweep_dir, row["run_id"]) if row else None, notes)
            if not crit:
                continue
            first = hue_value == next(iter(groups))
            for mode, style, name in (("cm", "--", "centre-of-mass"), ("rel", ":", "relative")):
                if np.isfinite(crit[mode]):
                    vlines.append({"x": crit[mode], "hue": hue_value, "style": style,
                                   "label": rf"$\lambda_c$ {name} mode (theory)" if first else None})
    title = None
    if derived:
        title = f"convergence time: {axis_label(series)} stays below {threshold:g}"
    fig = plot_seed_lines(groups, x, y, hue, log_x, log_y, title=title, vlines=vlines)
    path = Path(out) if out else Path(sweep_dir) / f"lines_{y}_vs_{x}.png"
    save_figure(fig, path)
    return path, notes


def run_plot(run_dir, out=None) -> Path:
    """Write the overview figure of one run (default ``RUN_DIR/overview.png``); returns its path."""
    from particlegan.sweeps.analysis import load_run

    data = load_run(run_dir)
    cfg = data.get("config") or {}
    summary = data.get("summary") or {}
    parts = [f"run {Path(run_dir).name}"]
    if cfg:
        g = cfg["generator"]
        parts.append(f"{cfg['target']['kind']} target, N={cfg['particles']['n']}")
        if g["kernel"] == "universal":
            parts.append(f"phi={g['phi']:g}")
        parts.append(f"eta_G={cfg['dynamics']['eta_g']:g}, eta_D={cfg['dynamics']['eta_d']:g}, "
                     f"lambda={cfg['loss']['penalty_weight']:g}, critic={cfg['critic']['type']}, "
                     f"seed={cfg['run']['seed']}")
    if summary:
        parts.append(f"status={summary.get('status')}")
    fig = plot_run_overview(data, ", ".join(parts))
    path = Path(out) if out else Path(run_dir) / "overview.png"
    save_figure(fig, path)
    return path
