"""Sweep and run figures: phase diagrams, seed-averaged lines, run overviews."""
import matplotlib
import numpy as np
import pytest
from click.testing import CliRunner

from particlegan.cli import main
from particlegan.errors import DataError
from particlegan.plots.plotting import (_cell_edges, axis_label, plot_phase_diagram, plot_seed_lines, plot_snapshots,
                                  snapshot_panels)
from particlegan.sweeps.sweep import load_base, parse_grid, plan_sweep, run_sweep

PNG = b"\x89PNG\r\n\x1a\n"
TINY = ["particles.n=16", "run.steps=20", "target.n_samples=64", "critic.features=32",
        "dynamics.critic_steps_startup=5", "observables.mmd_samples=64"]


def assert_png(path, min_bytes=10_000):
    data = path.read_bytes()
    assert data[:8] == PNG and len(data) > min_bytes


@pytest.fixture(scope="module")
def sweep_dir(tmp_path_factory):
    """phi x lambda x 2 seeds of tiny runs (in-process: fast)."""
    out = tmp_path_factory.mktemp("plots") / "sw"
    plan = plan_sweep(load_base(None, TINY), [parse_grid("generator.phi=0,0.5"),
                                              parse_grid("loss.penalty_weight=0.1,1.0")], [0, 1])
    report = run_sweep(plan, out, in_process=True)
    assert report.n_ok == 8
    return out


def test_labels_use_symbols():
    assert axis_label("generator.phi") == r"$\phi = g_2/g_1$"
    assert axis_label("dynamics.eta_d") == r"$\eta_D$"
    assert axis_label("loss.penalty_weight") == r"$\lambda$"
    assert axis_label("collapse") == r"collapse $C = \log K - H(p)$"
    assert axis_label("made.up") == "made.up"


@pytest.mark.parametrize("n, expected", [(1, [0]), (8, list(range(8))), (9, [0, 1, 2, 3, 5, 6, 7, 8]),
                                         (1201, [0, 171, 343, 514, 686, 857, 1029, 1200])])
def test_snapshot_panels_keep_first_and_last_and_at_most_eight(n, expected):
    assert snapshot_panels(n).tolist() == expected


def test_plot_snapshots_draws_at_most_eight_panels():
    rng = np.random.default_rng(0)
    fig = plot_snapshots(rng.normal(size=(300, 5, 2)), np.arange(300) * 5, rng.normal(size=(20, 2)),
                         np.zeros((1, 2)))
    titles = [ax.get_title() for ax in fig.axes]
    assert len(fig.axes) == 8 and titles[0] == "step 0" and titles[-1] == "step 1495"


def test_cell_edges_sit_halfway_in_the_axis_scale():
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots()
    ax.set_xscale("log")
    edges = _cell_edges(np.array([1.0, 10.0, 100.0]), ax.xaxis.get_transform())
    np.testing.assert_allclose(edges, 10.0 ** np.array([-0.5, 0.5, 1.5, 2.5]))
    ax.set_yscale("linear")
    np.testing.assert_allclose(_cell_edges(np.array([0.0, 1.0, 3.0]), ax.yaxis.get_transform()),
                               [-0.5, 0.5, 2.0, 4.0])
    plt.close(fig)


def test_phase_diagram_shows_the_means_with_categorical_axes_and_contour():
    cells = [{"generator.phi": phi, "dynamics.update": upd, "mean": phi + (1.0 if upd == "simultaneous" else 0),
              "n": 2} for phi in (0.0, 0.1, 0.5) for upd in ("alternating", "simultaneous")]
    fig = plot_phase_diagram(cells, "generator.phi", "dynamics.update", "collapse", log_x=True)
    ax = fig.axes[0]
    mesh = next(c for c in ax.collections if isinstance(c, matplotlib.collections.QuadMesh))
    np.testing.assert_allclose(np.asarray(mesh.get_array()).reshape(2, 3),
                               [[0.0, 0.1, 0.5], [1.0, 1.1, 1.5]])
    assert ax.get_xscale() == "symlog"  # phi = 0 on a log axis
    assert [t.get_text() for t in ax.get_yticklabels()] == ["alternating", "simultaneous"]
    assert ax.get_xlabel() == r"$\phi = g_2/g_1$" and "collapse" in fig.axes[1].get_ylabel()
    assert ax.get_legend() is None  # no contour between categories
    matplotlib.pyplot.close(fig)


def test_phase_diagram_contour_sits_at_the_midpoint_level():
    cells = [{"generator.phi": phi, "dynamics.eta_d": eta, "mean": phi * 10 + eta, "n": 1}
             for phi in (0.0, 0.5, 1.0) for eta in (0.01, 0.1, 1.0)]
    fig = plot_phase_diagram(cells, "generator.phi", "dynamics.eta_d", "collapse", log_y=True)
    ax = fig.axes[0]
    assert ax.get_yscale() == "log" and ax.get_ylabel() == r"$\eta_D$"
    texts = [t.get_text() for t in ax.get_legend().get_texts()]
    assert texts == [f"transition: collapse = {0.5 * (0.01 + 11.0):.3g}"]
    fig = plot_phase_diagram(cells, "generator.phi", "dynamics.eta_d", "collapse", level=2.0)
    assert [t.get_text() for t in fig.axes[0].get_legend().get_texts()] == ["transition: collapse = 2"]
    matplotlib.pyplot.close("all")


def test_seed_lines_draw_mean_with_standard_error():
    groups = {0.0: [{"loss.penalty_weight": 0.1, "mean": 1.0, "sem": 0.1, "n": 2},
                    {"loss.penalty_weight": 1.0, "mean": 2.0, "sem": 0.2, "n": 2}],
              0.5: [{"loss.penalty_weight": 0.1, "mean": 3.0, "sem": np.nan, "n": 1},
                    {"loss.penalty_weight": 1.0, "mean": np.inf, "sem": np.nan, "n": 1}]}
    fig = plot_seed_lines(groups, "loss.penalty_weight", "collapse", "generator.phi", log_x=True,
                          vlines=[{"x": 0.3, "hue": 0.0, "label": "lambda_c"}])
    ax = fig.axes[0]
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    assert sorted(labels) == sorted([r"$\phi = g_2/g_1$ = 0", r"$\phi = g_2/g_1$ = 0.5", "lambda_c"])
    assert any("not drawn" in t.get_text() for t in ax.texts)  # the inf point
    matplotlib.pyplot.close(fig)


def test_plot_phase_cli(sweep_dir):
    res = CliRunner().invoke(main, ["plot", "phase", str(sweep_dir), "--x", "generator.phi",
                                    "--y", "loss.penalty_weight", "--z", "collapse", "--log-x", "--log-y"])
    assert res.exit_code == 0, res.output
    path = sweep_dir / "phase_collapse.png"
    assert res.output.strip() == str(path)
    assert_png(path)
    out = sweep_dir / "custom.png"
    res = CliRunner().invoke(main, ["plot", "phase", str(sweep_dir), "--x", "loss.penalty_weight",
                                    "--y", "generator.phi", "--z", "mmd2", "--level", "0.01", "--out", str(out)])
    assert res.exit_code == 0, res.output
    assert_png(out)


def test_plot_phase_side_by_side_shares_one_colour_scale(sweep_dir, tmp_path):
    """Two sweeps (here the same one twice) -> two panels, one colour range spanning both."""
    out = tmp_path / "two.png"
    res = CliRunner().invoke(main, ["plot", "phase", str(sweep_dir), str(sweep_dir), "--x", "generator.phi",
                                    "--y", "loss.penalty_weight", "--label", "RBF", "--label", "ReLU",
                                    "--out", str(out)])
    assert res.exit_code == 0, res.output
    assert_png(out)
    from particlegan.plots.plotting import phase_plot

    with pytest.raises(DataError, match="1 label"):
        phase_plot([sweep_dir, sweep_dir], "generator.phi", "loss.penalty_weight", "collapse", labels=["x"])
    res = CliRunner().invoke(main, ["plot", "phase", str(sweep_dir), str(sweep_dir), "--x", "generator.phi",
                                    "--y", "loss.penalty_weight", "--label", "only one"])
    assert res.exit_code == 2 and res.output.count("\n") == 1


def test_phase_diagram_panels_use_the_given_colour_range():
    cells = [{"generator.phi": p, "dynamics.eta_d": e, "mean": p + e, "n": 1}
             for p in (0.0, 0.5) for e in (0.1, 0.2)]
    fig, axes = matplotlib.pyplot.subplots(1, 2)
    plot_phase_diagram(cells, "generator.phi", "dynamics.eta_d", "collapse", ax=axes[0], vmin=0.0, vmax=3.0,
                       title="left")
    mesh = [c for c in axes[0].collections if hasattr(c, "get_clim")][0]
    assert mesh.get_clim() == (0.0, 3.0) and axes[0].get_title() == "left"
    matplotlib.pyplot.close(fig)


def test_plot_lines_cli(sweep_dir):
    res = CliRunner().invoke(main, ["plot", "lines", str(sweep_dir), "--x", "loss.penalty_weight",
                                    "--y", "mmd2", "--hue", "generator.phi", "--log-x", "--log-y"])
    assert res.exit_code == 0, res.output
    assert_png(sweep_dir / "lines_mmd2_vs_loss.penalty_weight.png")
    res = CliRunner().invoke(main, ["plot", "lines", str(sweep_dir), "--x", "loss.penalty_weight",
                                    "--y", "convergence_time", "--threshold", "10", "--series", "mmd2",
                                    "--where", "generator.phi=0.5"])
    assert res.exit_code == 0, res.output
    assert_png(sweep_dir / "lines_convergence_time_vs_loss.penalty_weight.png")


@pytest.mark.parametrize("args, words", [
    (["lines", "--x", "generator.phi", "--y", "collapse"], ["also varies loss.penalty_weight", "--where"]),
    (["lines", "--x", "generator.phi", "--y", "nope", "--hue", "loss.penalty_weight"], ["no column 'nope'"]),
    (["lines", "--x", "generator.phi", "--y", "convergence_time", "--hue", "loss.penalty_weight"],
     ["--threshold"]),
    (["phase", "--x", "generator.phi", "--y", "loss.penalty_weight", "--where", "generator.phi=0.3"],
     ["no run"]),
])
def test_plot_refusals_are_one_line_errors(sweep_dir, args, words):
    res = CliRunner().invoke(main, ["plot", args[0], str(sweep_dir)] + args[1:])
    assert res.exit_code == 2
    assert res.output.count("\n") == 1 and "Traceback" not in res.output
    for word in words:
        assert word in res.output


def test_plot_run_cli(sweep_dir, tmp_path):
    run_dir = next((sweep_dir / "runs").iterdir())
    res = CliRunner().invoke(main, ["plot", "run", str(run_dir)])
    assert res.exit_code == 0, res.output
    assert res.output.strip() == str(run_dir / "overview.png")
    assert_png(run_dir / "overview.png", min_bytes=30_000)
    res = CliRunner().invoke(main, ["plot", "run", str(tmp_path)])
    assert res.exit_code == 2 and "no result.npz" in res.output


def test_plot_run_draws_an_image_run_as_image_grids(tmp_path):
    """A run whose dimension is a square (here 16 = 4 x 4) is drawn as images: particles 0, 7, 14
    at each drawn snapshot and the targets, under the cosine series it recorded."""
    from particlegan.engine.simulate import run_to_dir
    from particlegan.plots.plotting import plot_run_overview
    from particlegan.store.config import resolve_config
    from particlegan.sweeps.analysis import load_run

    cfg = resolve_config(overrides=["target.dim=16", "particles.n=16", "target.n_samples=32", "run.steps=6",
                                    "run.record_every=2", "run.snapshots=6", "critic.features=32",
                                    "dynamics.critic_steps_startup=2", "observables.mmd_samples=16",
                                    "observables.cosine=true"])
    run_to_dir(cfg, tmp_path / "r")
    data = load_run(tmp_path / "r")
    fig = plot_run_overview(data, "image run")
    grids = [ax for ax in fig.axes if ax.images]
    assert len(grids) == (4 + 1) * 3  # 4 of the 6 snapshots and the targets, x particles 0, 7, 14
    assert grids[0].images[0].get_array().shape == (4, 4)
    np.testing.assert_array_equal(grids[-1].images[0].get_array(), data["target_samples"][14].reshape(4, 4))
    titles = [ax.get_title() for ax in fig.axes if not ax.images]
    assert "targets hit" in titles and not any("modes covered" in t for t in titles)
    res = CliRunner().invoke(main, ["plot", "run", str(tmp_path / "r")])
    assert res.exit_code == 0, res.output
    assert_png(tmp_path / "r" / "overview.png", min_bytes=20_000)


def test_movie_of_two_runs_side_by_side(tmp_path):
    """`plot movie`: one GIF frame per stored snapshot, runs side by side, written atomically."""
    from PIL import Image

    base = ["particles.n=24", "run.steps=12", "run.record_every=2", "target.n_samples=100",
            "critic.features=32", "dynamics.critic_steps_startup=5"]
    runs = []
    for phi, snaps in (("0", 5), ("0.9", 3)):
        d = tmp_path / f"phi{phi}"
        sets = [a for o in base + [f"generator.phi={phi}", f"run.snapshots={snaps}"] for a in ("--set", o)]
        assert CliRunner().invoke(main, ["run", *sets, "--no-plot", "--out", str(d)]).exit_code == 0
        runs.append(str(d))
    out = tmp_path / "m.gif"
    res = CliRunner().invoke(main, ["plot", "movie", *runs, "--out", str(out), "--label", "covering"])
    assert res.exit_code == 0, res.output
    with Image.open(out) as im:
        assert im.n_frames == 5 and im.size[0] > im.size[1]  # the longer run sets the frame count
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.gif", "phi0", "phi0.9"]  # no temp file left
    bad = CliRunner().invoke(main, ["plot", "movie", str(tmp_path), "--out", str(tmp_path / "x.gif")])
    assert bad.exit_code == 2 and "not a finished run directory" in bad.output
    bad = CliRunner().invoke(main, ["plot", "movie", *runs, "--out", str(tmp_path / "x.mp4")])
    assert bad.exit_code == 2 and ".gif" in bad.output


def test_particle_mosaic_places_particle_r_n_plus_c_at_tile_r_c():
    from particlegan.plots.plotting_movie import particle_mosaic

    x = np.random.default_rng(0).normal(size=(7, 9))  # 7 particles of 3 x 3 images, fewer than 3 x 3 tiles
    m = particle_mosaic(x, 3, n=3)
    assert m.shape == (9, 9)
    for i in range(9):
        r, c = divmod(i, 3)
        tile = m[3 * r:3 * r + 3, 3 * c:3 * c + 3]
        if i < len(x):
            np.testing.assert_array_equal(tile, x[i].reshape(3, 3))
        else:
            assert np.isnan(tile).all()


def test_movie_of_an_image_run_shows_its_particles_as_images(tmp_path):
    """d = 16 (4 x 4 images) with the cosine observables: frames of a particle mosaic beside the
    cosine collapse; one frame per snapshot, the frames change."""
    from PIL import Image

    sets = ["target.dim=16", "particles.n=16", "target.n_samples=32", "run.steps=8", "run.record_every=2",
            "run.snapshots=4", "critic.features=32", "dynamics.critic_steps_startup=2",
            "observables.mmd_samples=16", "observables.cosine=true", "dynamics.eta_g=0.5"]
    d = tmp_path / "img"
    args = [a for o in sets for a in ("--set", o)]
    assert CliRunner().invoke(main, ["run", *args, "--no-plot", "--out", str(d)]).exit_code == 0
    out = tmp_path / "img.gif"
    res = CliRunner().invoke(main, ["plot", "movie", str(d), "--out", str(out)])
    assert res.exit_code == 0, res.output
    with Image.open(out) as im:
        assert im.n_frames == 4
        first = np.asarray(im.convert("L")).copy()
        im.seek(3)
        last = np.asarray(im.convert("L"))
    assert not np.array_equal(first, last)


def test_phase_cells_stop_at_the_physical_range_and_ticks_sit_at_the_grid():
    """phi = 0.98 on a log axis would get a cell up to ~1.8 > 1: clipped at phi = 1; the phi = 0
    cell of a symlog axis does not reach negative phi; ticks are the grid values."""
    phis, etas = [0.0, 0.01, 0.1, 0.98], [0.001, 0.01]
    cells = [{"generator.phi": p, "dynamics.eta_d": e, "mean": p, "n": 3} for p in phis for e in etas]
    fig = plot_phase_diagram(cells, "generator.phi", "dynamics.eta_d", "collapse", log_x=True, log_y=True)
    ax = fig.axes[0]
    lo, hi = ax.get_xlim()
    assert hi == pytest.approx(1.0) and lo == pytest.approx(0.0)
    assert list(ax.get_xticks()) == phis and [t.get_text() for t in ax.get_xticklabels()] == ["0", "0.01", "0.1", "0.98"]
    assert list(ax.get_yticks()) == etas
    matplotlib.pyplot.close(fig)


def test_tick_labels_of_a_log_grid_have_three_significant_digits():
    etas = list(np.logspace(-3, -2, 4))  # 0.001, 0.00215443..., 0.00464158..., 0.01
    cells = [{"generator.phi": p, "dynamics.eta_d": e, "mean": p, "n": 1} for p in (0.1, 0.2) for e in etas]
    fig = plot_phase_diagram(cells, "generator.phi", "dynamics.eta_d", "collapse", log_y=True)
    assert [t.get_text() for t in fig.axes[0].get_yticklabels()] == ["0.001", "0.00215", "0.00464", "0.01"]
    matplotlib.pyplot.close(fig)


def test_side_by_side_panels_have_one_colour_bar(sweep_dir, tmp_path):
    from particlegan.plots.plotting import phase_plot

    seen = {}
    orig = matplotlib.figure.Figure.savefig

    def spy(fig, *a, **k):
        seen["n_axes"] = len(fig.axes)
        return orig(fig, *a, **k)

    matplotlib.figure.Figure.savefig = spy
    try:
        phase_plot([sweep_dir, sweep_dir], "generator.phi", "loss.penalty_weight", "collapse",
                   out=tmp_path / "two.png", labels=["a", "b"])
    finally:
        matplotlib.figure.Figure.savefig = orig
    assert seen["n_axes"] == 3  # two panels and a single shared colour bar


@pytest.mark.parametrize("values,scale", [([0.8, 0.1, 0.01], "log"), ([0.8, 0.01, -0.004, 0.002], "asinh")])
def test_signed_log_scale_is_smooth_through_zero(values, scale):
    """MMD^2 curves that dip below 0 get the asinh scale (no symlog cliff at the threshold):
    its transform has a continuous slope at +-floor, unlike symlog's."""
    from particlegan.plots.plotting import set_signed_log_scale

    fig, ax = matplotlib.pyplot.subplots()
    assert set_signed_log_scale(ax, values, floor=0.01) == scale
    assert ax.get_yscale() == scale
    if scale == "asinh":
        t = ax.yaxis.get_transform()
        y = np.array([0.0099, 0.01, 0.0101])
        slopes = np.diff(t.transform(y.reshape(-1, 1)).ravel()) / np.diff(y)
        assert slopes[0] == pytest.approx(slopes[1], rel=0.05)
    matplotlib.pyplot.close(fig)
