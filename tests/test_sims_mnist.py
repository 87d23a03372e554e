"""sims/mnist/run_study.py: the MNIST (phi, lrD) study against the paper's collapse map.
Quick version (2 x 2 cells, 5 steps, small critic) here; the full study under the slow marker."""
import importlib.util
import math
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
PAPER = REPO.parent / "shared" / "reference" / "mnist" / "paper_collapse_map.csv"


def _study():
    spec = importlib.util.spec_from_file_location("mnist_study", REPO / "sims" / "mnist" / "run_study.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_grids_are_the_papers():
    s = _study()
    assert len(s.PHI_GRID) == 26 and s.PHI_GRID[0] == 0.0
    assert s.PHI_GRID[1] == pytest.approx(0.01) and s.PHI_GRID[-1] == pytest.approx(10 ** -0.01)
    assert [round(v, 7) for v in s.LRD_ROWS[:3]] == [1e-4, round(10 ** (-4 + 2 / 12), 7), round(10 ** (-4 + 4 / 12), 7)]
    assert s.SLICE_LRD == pytest.approx(4.6416e-4, rel=1e-4) and s.SLICE_PHI == pytest.approx(0.09886, rel=1e-3)


@pytest.mark.skipif(not PAPER.exists(), reason="shared reference data not present")
def test_paper_map_snaps_to_the_grid_and_agrees_with_itself():
    s = _study()
    paper = s.paper_map()
    lrds = sorted({k[0] for k in paper})
    assert lrds == s.LRD_ROWS  # every calibration row, values snapped exactly
    assert all(k[1] in s.PHI_GRID for k in paper)
    cmp = s.compare(paper, paper, s.LRD_ROWS, s.PHI_GRID)
    assert cmp["same_side"] == 1.0 and cmp["n_common"] == len(paper)
    assert all(r["steps_apart"] in (0,) or math.isnan(r["steps_apart"]) for r in cmp["rows"])
    # a map that collapses everywhere disagrees exactly on the paper's uncollapsed cells
    everywhere = {k: 4.6 for k in paper}
    below = sum(v <= 2 for v in paper.values())
    assert s.compare(everywhere, paper, s.LRD_ROWS, s.PHI_GRID)["same_side"] == pytest.approx(1 - below / len(paper))


@pytest.mark.skipif(not PAPER.exists(), reason="shared reference data not present")
def test_quick_study_writes_map_tables_and_figure(tmp_path):
    s = _study()
    assert s.main(["--quick", "--out", str(tmp_path), "--jobs", "1"]) == 0
    rows = (tmp_path / "results.csv").read_text().splitlines()
    assert rows[0] == "lr_d,phi,collapse,paper_collapse" and len(rows) == 1 + 4
    vals = [float(r.split(",")[2]) for r in rows[1:]]
    assert all(0 <= v <= math.log(12) + 1e-9 for v in vals)  # C of 12 particles on 12 targets
    md = (tmp_path / "results_tables.md").read_text()
    assert "same side of C = 2" in md and "phi_c ours" in md
    assert (tmp_path / "mnist_mode_collapse.png").stat().st_size > 10_000
    # resumable: a second call runs nothing and gives the same table
    assert s.main(["--quick", "--out", str(tmp_path), "--jobs", "1"]) == 0
    assert (tmp_path / "results_tables.md").read_text() == md


@pytest.mark.skipif(not PAPER.exists(), reason="shared reference data not present")
def test_quick_candidate_normalisation_writes_its_own_tables(tmp_path, capsys):
    s = _study()
    assert s.main(["--quick", "--only", "mean", "--out", str(tmp_path), "--jobs", "1"]) == 0
    rows = s.load_results(tmp_path / "ablation" / "mean" / "results.csv")
    assert len(rows) == 1 and rows[0]["status"] == "ok"
    cfg = s.load_run(tmp_path / "ablation" / "mean" / "runs" / rows[0]["run_id"])["config"]
    assert cfg["generator"]["normalization"] == "mean"
    md = (tmp_path / "results_mean.md").read_text()
    assert "--only mean" in md and "phi_c ours" in md
    assert (tmp_path / "mnist_mode_collapse_mean.png").stat().st_size > 0
    assert s.main(["--only", "nonsense", "--out", str(tmp_path)]) == 2
    assert "not an ablation" in capsys.readouterr().err


@pytest.mark.skipif(not PAPER.exists(), reason="shared reference data not present")
def test_quick_heldout_rows_run_the_candidate_off_the_study_grid(tmp_path):
    s = _study()
    assert not set(s.HELDOUT_LRD) & set(s.STUDY_LRD) and len(s.HELDOUT_LRD) == len(s.LRD_ROWS) - len(s.STUDY_LRD)
    assert s.main(["--quick", "--only", "interp28", "--heldout", "--out", str(tmp_path), "--jobs", "1"]) == 0
    d = tmp_path / "heldout" / "interp28" / f"lrd_{s.HELDOUT_LRD[0]:.3g}"
    rows = s.load_results(d / "results.csv")
    assert len(rows) == 1 and rows[0]["status"] == "ok"
    cfg = s.load_run(d / "runs" / rows[0]["run_id"])["config"]
    assert cfg["generator"]["normalization"] == "interpolated" and cfg["generator"]["interp_c"] == 28
    assert cfg["dynamics"]["eta_d"] == s.HELDOUT_LRD[0]
    md = (tmp_path / "results_interp28_heldout.md").read_text()
    assert "--heldout" in md and f"{s.HELDOUT_LRD[0]:.3g}" in md
    assert s.main(["--quick", "--heldout", "--out", str(tmp_path), "--jobs", "1"]) == 0  # the chosen settings
    rows = s.load_results(tmp_path / "heldout" / "chosen" / d.name / "results.csv")
    cfg = s.load_run(tmp_path / "heldout" / "chosen" / d.name / "runs" / rows[0]["run_id"])["config"]
    assert cfg["generator"]["normalization"] == "spectral"
    assert "--heldout:" in (tmp_path / "results_chosen_heldout.md").read_text()


@pytest.mark.slow
def test_full_study_reproduces_the_uncoupled_runs(tmp_path):
    """The full grid (~1 h on 2 cores). Asserted: the part of the paper's map the study
    reproduces (sims/mnist/results.md): C(phi = 0) within the issue's 0.2 of the paper's on the
    rows lrD >= 4.64e-4 where the paper has a phi = 0 run, and every run finished. The collapse
    boundary goals (90% same side of C = 2, phi_c within one step) are not met by the chosen
    coupling normalisation and are reported in results.md, not asserted."""
    s = _study()
    assert s.main(["--out", str(tmp_path), "--write-to", str(tmp_path), "--jobs", "2"]) == 0
    rows = s.load_results(tmp_path / "grid" / "results.csv")
    assert len(rows) == len(s.STUDY_PHI) * len(s.STUDY_LRD) and all(r["status"] == "ok" for r in rows)
    cmp = s.compare(s.our_map(rows), s.paper_map(), s.STUDY_LRD, s.STUDY_PHI)
    checked = [r for r in cmp["rows"] if r["lrd"] >= 4.6e-4 and np.isfinite(r["c0_paper"])]
    assert checked and all(abs(r["c0_ours"] - r["c0_paper"]) <= 0.2 for r in checked)


@pytest.mark.skipif(not PAPER.exists(), reason="shared reference data not present")
def test_quick_seed_study_writes_the_median_map_goals(tmp_path):
    s = _study()
    assert s.main(["--quick", "--seeds", "--out", str(tmp_path), "--jobs", "1"]) == 0
    md = (tmp_path / "results_seeds.md").read_text()
    seed_table = md.split("## Goals")[0]
    rows = [line for line in seed_table.splitlines() if line.startswith("| 0.000464 | ")]
    assert len(rows) == 2  # the quick grid's two phi on its first row, three seeds each
    seeds = [[float(v) for v in r.split("|")[3:6]] for r in rows]
    assert all(0 <= c <= math.log(12) + 1e-9 for row in seeds for c in row)
    medians = [float(r.split("|")[6]) for r in rows]
    assert medians == [pytest.approx(float(np.median(row)), abs=0.006) for row in seeds]
    assert "median of three seeds" in md and (tmp_path / "seeds_0.000464" / "results.csv").exists()
    # resumable: the seed sweep is found complete and the table is the same
    assert s.main(["--quick", "--seeds", "--out", str(tmp_path), "--jobs", "1"]) == 0
    assert (tmp_path / "results_seeds.md").read_text() == md


@pytest.mark.skipif(not PAPER.exists(), reason="shared reference data not present")
def test_quick_low_rows_run_the_papers_unconverged_rows(tmp_path):
    s = _study()
    assert s.LOW_LRD == pytest.approx([1e-5, 10 ** (-5 + 7 / 24)]) and s.LOW_PHI[0] == 0.0
    assert s.main(["--quick", "--low-rows", "--out", str(tmp_path), "--jobs", "1"]) == 0
    d = tmp_path / "lowrows" / "chosen" / f"lrd_{s.LOW_LRD[0]:.3g}"
    rows = s.load_results(d / "results.csv")
    assert len(rows) == 1 and rows[0]["status"] == "ok"
    assert s.load_run(d / "runs" / rows[0]["run_id"])["config"]["dynamics"]["eta_d"] == s.LOW_LRD[0]
    md = (tmp_path / "results_lowrows.md").read_text()
    paper = s.paper_map(s.LOW_LRD)[(s.LOW_LRD[0], 0.0)]
    assert f"| 1e-05 | 0 | {rows[0]['collapse_cos']:.2f} | {paper:.2f} |" in md
    assert s.main(["--quick", "--low-rows", "--only", "mean", "--out", str(tmp_path), "--jobs", "1"]) == 0
    d = tmp_path / "lowrows" / "mean" / f"lrd_{s.LOW_LRD[0]:.3g}"
    rows = s.load_results(d / "results.csv")
    assert s.load_run(d / "runs" / rows[0]["run_id"])["config"]["generator"]["normalization"] == "mean"
    assert "--low-rows --only mean" in (tmp_path / "results_mean_lowrows.md").read_text()


def test_a_tabulated_map_reads_back(tmp_path):
    """map_from_tables (a candidate's committed results_NAME.md) inverts write_tables to two decimals."""
    s = _study()
    lrds, phis = s.STUDY_LRD[:2], s.STUDY_PHI[:3]
    ours = {(lr, p): 0.123 + 1.7 * i for i, (lr, p) in enumerate((lr, p) for lr in lrds for p in phis)}
    del ours[(lrds[1], phis[2])]  # a cell not run: '-'
    cmp = s.compare(ours, {}, lrds, phis)
    s.write_tables(tmp_path / "t.md", ours, {}, cmp, lrds, phis)
    back = s.map_from_tables(tmp_path / "t.md")
    assert back.keys() == ours.keys() and all(abs(back[k] - v) <= 0.005 for k, v in ours.items())


@pytest.mark.skipif(not PAPER.exists(), reason="shared reference data not present")
def test_quick_candidate_seed_study_keeps_its_own_runs(tmp_path):
    s = _study()
    assert s.main(["--quick", "--only", "interp28", "--seeds", "--out", str(tmp_path), "--jobs", "1"]) == 0
    d = tmp_path / f"seeds_interp28_{s.LRD_ROWS[4]:.3g}"
    rows = s.load_results(d / "results.csv")
    assert sorted(int(r["seed"]) for r in rows) == [1, 1, 2, 2]
    cfg = s.load_run(d / "runs" / rows[0]["run_id"])["config"]
    assert cfg["generator"]["normalization"] == "interpolated" and cfg["generator"]["interp_c"] == 28
    assert "--only interp28 --seeds" in (tmp_path / "results_interp28_seeds.md").read_text()
