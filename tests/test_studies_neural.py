"""Studies of the neural engine (sims/): the alpha-GAN ring, optimizers and particle-vs-neural
scripts run end to end (quick versions, each checking a real property); the full studies are
marked slow."""
import csv
import importlib.util
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parent.parent


def _load(rel):
    spec = importlib.util.spec_from_file_location(rel.replace("/", "_"), ROOT / rel)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.mark.trajectory
def test_alpha_gan_ring_quick(tmp_path):
    study = _load("sims/alpha_gan_ring/run_study.py")
    assert study.main(["--quick", "--jobs", "1", "--out", str(tmp_path)]) == 0
    rows = list(csv.DictReader((tmp_path / "results.csv").read_text().splitlines()))
    assert len(rows) == len(study.SETTINGS) * study.QUICK["seeds"]
    assert all(r["status"] == "ok" and 0 <= int(r["modes"]) <= 8 for r in rows)
    md = (tmp_path / "results.md").read_text()
    assert md.count("\n| ") == len(study.SETTINGS) + 1 and "46%" in md and "87%" in md
    assert (tmp_path / "alpha_gan_ring.png").read_bytes()[:4] == b"\x89PNG"
    # --replot redraws from the stored table (seed 0 rerun, bitwise the same run here)
    (tmp_path / "alpha_gan_ring.png").unlink()
    assert study.main(["--quick", "--replot", "--jobs", "1", "--out", str(tmp_path)]) == 0
    assert (tmp_path / "alpha_gan_ring.png").read_bytes()[:4] == b"\x89PNG"


def test_alpha_gan_ring_metric_counts_modes_and_hq_samples():
    """evaluate(): a generator whose output is a constant point on one mode covers exactly that
    mode with HQ fraction 1; a constant point off the ring covers none (failure)."""
    study = _load("sims/alpha_gan_ring/run_study.py")
    from particlegan.store.config import resolve_config

    cfg = resolve_config(overrides=study.base_overrides(study.QUICK))
    gen = study.make_generator(cfg, np.random.default_rng(0))
    theta = np.zeros_like(gen.theta)
    theta[-2:] = [np.cos(2 * np.pi * 3 / 8), np.sin(2 * np.pi * 3 / 8)]  # output bias = mode 3
    ev = study.evaluate(cfg, theta, 300)
    assert ev["modes"] == 1 and ev["hqs"] == 1.0 and not ev["success"] and not ev["failure"]
    theta[-2:] = [0.0, 0.0]
    ev = study.evaluate(cfg, theta, 300)
    assert ev["modes"] == 0 and ev["failure"]


@pytest.mark.slow
def test_alpha_gan_ring_full(tmp_path):
    study = _load("sims/alpha_gan_ring/run_study.py")
    assert study.main(["--jobs", "2", "--out", str(tmp_path)]) == 0
    rows = list(csv.DictReader((tmp_path / "results.csv").read_text().splitlines()))
    assert len(rows) == len(study.SETTINGS) * study.FULL["seeds"]


# ------------------------------------------------------------------ optimizers (5a) ----
@pytest.mark.trajectory
def test_optimizers_quick_every_run_finishes_with_finite_mmd(tmp_path):
    """Tiny version of sims/optimizers: every optimizer (SGD, momentum, Adam, CG-FR, CG-PRP) at
    every grid lr and seed finishes with status ok and a finite MMD^2; the chosen lr is on the
    grid; the table has one row per optimizer."""
    study = _load("sims/optimizers/run_study.py")
    assert study.main(["--quick", "--jobs", "1", "--out", str(tmp_path)]) == 0
    runs = list(csv.DictReader((tmp_path / "runs.csv").read_text().splitlines()))
    n_grid = sum(len(grid) for _, grid in study.OPTIMIZERS.values())
    assert len(runs) == n_grid * len(study.TUNING_SEEDS) + len(study.OPTIMIZERS) * study.QUICK["seeds"]
    for r in runs:
        assert r["status"] == "ok" and np.isfinite(float(r["mmd2_final"])), r
        assert 0 <= int(r["modes_final"]) <= 8
    table = list(csv.DictReader((tmp_path / "results.csv").read_text().splitlines()))
    assert [t["optimizer"] for t in table] == list(study.OPTIMIZERS)
    for t in table:
        assert float(t["lr"]) in study.OPTIMIZERS[t["optimizer"]][1]
    assert (tmp_path / "optimizers.png").read_bytes()[:4] == b"\x89PNG"


def test_optimizers_study_sets_the_same_optimizer_for_both_players():
    study = _load("sims/optimizers/run_study.py")
    from particlegan.store.config import resolve_config

    cfg = resolve_config(overrides=study.base_overrides(study.QUICK)
                         + study.optimizer_overrides("CG-PRP", 0.03))
    for who in ("generator", "critic"):
        assert cfg[who]["optimizer"] == "cg" and cfg[who]["cg_rule"] == "PRP"
    assert cfg["dynamics"]["eta_g"] == cfg["dynamics"]["eta_d"] == 0.03
    cfg = resolve_config(overrides=study.base_overrides(study.QUICK)
                         + study.optimizer_overrides("Adam (0.5, 0.999)", 1e-3))
    assert cfg["generator"]["betas"] == cfg["critic"]["betas"] == [0.5, 0.999]


@pytest.mark.slow
def test_optimizers_full(tmp_path):
    study = _load("sims/optimizers/run_study.py")
    assert study.main(["--jobs", "2", "--out", str(tmp_path)]) == 0
    table = list(csv.DictReader((tmp_path / "results.csv").read_text().splitlines()))
    assert len(table) == len(study.OPTIMIZERS) and all(int(t["diverged"]) == 0 for t in table)


# ---------------------------------------------------------- particle vs neural (5c) ----
@pytest.mark.trajectory
def test_particle_vs_neural_quick_full_ntk_tracks_the_wide_network(tmp_path):
    """Tiny version of sims/particle_vs_neural: started at the neural generator's outputs, the
    full-empirical-NTK particle trajectory stays within 5% of the neural displacement at early
    times for a wide net (width 1024: ~2%), is closer than the universal-kernel one, and gets
    closer as the width grows (lazy limit)."""
    study = _load("sims/particle_vs_neural/run_study.py")
    assert study.main(["--quick", "--jobs", "1", "--out", str(tmp_path)]) == 0
    rows = list(csv.DictReader((tmp_path / "results.csv").read_text().splitlines()))
    assert len(rows) == len(study.QUICK["widths"]) * study.QUICK["seeds"]
    by_w = {int(r["width"]): {k: float(v) for k, v in r.items()} for r in rows}
    wide, narrow = by_w[max(by_w)], by_w[min(by_w)]
    assert wide["displacement_early"] > 0.1          # the particles really moved
    assert wide["dmax_early_matrix"] < 0.05 * wide["displacement_early"]
    assert wide["dmax_early_matrix"] < wide["dmax_early_universal"]
    assert wide["dmax_early_matrix"] < narrow["dmax_early_matrix"]
    assert abs(wide["mmd2_final_matrix"] - wide["mmd2_final_neural"]) < 1e-3
    for name in ("particle_vs_neural.png", "particle_vs_neural_width.png"):
        assert (tmp_path / name).read_bytes()[:4] == b"\x89PNG"
    assert "full NTK" in (tmp_path / "results.md").read_text()


@pytest.mark.slow
def test_particle_vs_neural_full(tmp_path):
    study = _load("sims/particle_vs_neural/run_study.py")
    assert study.main(["--jobs", "2", "--out", str(tmp_path)]) == 0
    rows = list(csv.DictReader((tmp_path / "results.csv").read_text().splitlines()))
    assert len(rows) == len(study.FULL["widths"]) * study.FULL["seeds"]
    wide = [r for r in rows if int(r["width"]) == max(study.FULL["widths"])]
    assert all(float(r["dmax_early_matrix"]) < 0.05 * float(r["displacement_early"]) for r in wide)
