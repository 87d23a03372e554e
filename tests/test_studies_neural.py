"""Studies of the neural engine (sims/): the alpha-GAN ring script runs end to end (quick
version); the full study is marked slow."""
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


def test_alpha_gan_ring_quick(tmp_path):
    study = _load("sims/alpha_gan_ring/run_study.py")
    assert study.main(["--quick", "--jobs", "1", "--out", str(tmp_path)]) == 0
    rows = list(csv.DictReader((tmp_path / "results.csv").read_text().splitlines()))
    assert len(rows) == len(study.SETTINGS) * study.QUICK["seeds"]
    assert all(r["status"] == "ok" and 0 <= int(r["modes"]) <= 8 for r in rows)
    md = (tmp_path / "results.md").read_text()
    assert md.count("\n| ") == len(study.SETTINGS) + 1 and "46%" in md and "87%" in md
    assert (tmp_path / "alpha_gan_ring.png").read_bytes()[:4] == b"\x89PNG"


def test_alpha_gan_ring_metric_counts_modes_and_hq_samples():
    """evaluate(): a generator whose output is a constant point on one mode covers exactly that
    mode with HQ fraction 1; a constant point off the ring covers none (failure)."""
    study = _load("sims/alpha_gan_ring/run_study.py")
    from particlegan.config import resolve_config

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
