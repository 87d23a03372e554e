"""particlegan from Python, in five steps: run, inspect, store and reload, sweep, phase plot.

Usage (from anywhere; writes into OUT, default ./tutorial_out):

    python sims/tutorial/tutorial.py [OUT] [--quick]

``--quick`` (used by the test suite) shrinks the runs to a few steps.
"""
import sys
from pathlib import Path

import particlegan as pg


def main(out: Path, quick: bool) -> None:
    small = {"particles": {"n": 64}, "run": {"steps": 20 if quick else 600, "record_every": 5}}

    # 1. one run from a partial config: everything else takes its default, every value is checked
    free = pg.run({**small, "generator": {"phi": 0.0}}, seed=0)
    locked = pg.run({**small, "generator": {"phi": 0.99}}, seed=0)
    for name, r in (("phi = 0", free), ("phi = 0.99", locked)):
        print(f"{name:>10}: status {r.status}, collapse C = {r.summary['collapse']:.3f}, "
              f"{r.summary['modes_covered']:.0f}/8 modes, {len(r.series['step'])} recorded steps, "
              f"snapshots {r.snapshots.shape}")

    # 2. store a run (as `particlegan run --out`) and read it back
    stored = pg.run({**small, "generator": {"phi": 0.5}}, out=out / "run_phi05", force=True)
    again = pg.load_run(out / "run_phi05")
    assert (again.series["collapse"] == stored.series["collapse"]).all()
    print(f"stored in {again.path}: run id {again.meta['run_id']}, git {again.meta['git']}")

    # 3. a sweep over phi x 2 seeds (resumable: rerunning skips the finished runs)
    report = pg.grid_sweep(small, grid={"generator.phi": [0.0, 0.3, 0.9]}, seeds=2, out=out / "sweep",
                      in_process=True)
    print(report.describe())

    # 4. the sweep as a table (a pandas DataFrame when pandas is installed)
    table = pg.load_sweep(out / "sweep")
    print(table if hasattr(table, "groupby") else {k: v[:3] for k, v in table.items()})
    for rec in pg.list_runs(out / "sweep", where=["generator.phi=0.9"]):
        print("phi = 0.9 run", rec["run_id"], "collapse", round(rec["summary"]["collapse"], 3))

    # 5. a figure: seed-averaged collapse against phi
    from particlegan.plots.plotting import lines_plot

    path, _ = lines_plot(out / "sweep", "generator.phi", "collapse", None, False, False, (),
                         out / "collapse_vs_phi.png")
    print("figure:", path)


if __name__ == "__main__":
    args = [a for a in sys.argv[1:] if not a.startswith("--")]
    main(Path(args[0] if args else "tutorial_out"), "--quick" in sys.argv)
