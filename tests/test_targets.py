import numpy as np
import pytest

from particlegan.store.config import resolve_config
from particlegan.model.from_config import init_particles, make_target
from particlegan.model.targets import grid_centres, ring_centres


@pytest.mark.parametrize("dim", [2, 3, 5])
def test_ring_target_geometry(dim):
    cfg = resolve_config(overrides=[f"target.dim={dim}", "target.n_samples=8000"])
    t = make_target(cfg["target"], np.random.default_rng(0))
    assert t.samples.shape == (8000, dim) and t.centres.shape == (8, dim)
    np.testing.assert_allclose(np.linalg.norm(t.centres[:, :2], axis=1), 0.75)
    np.testing.assert_allclose(t.centres[:, 2:], 0.0)
    # each sample belongs to its stratified mode; the spread is sigma in every coordinate
    labels = np.arange(8000) % 8
    resid = t.samples - t.centres[labels]
    np.testing.assert_allclose(resid.std(axis=0), 0.075, rtol=0.05)


def test_grid_target_geometry():
    c = grid_centres(5, 0.5, 3)
    assert c.shape == (25, 3)
    np.testing.assert_allclose(sorted(set(np.round(c[:, 0], 12))), [-1.0, -0.5, 0.0, 0.5, 1.0])
    np.testing.assert_allclose(c.mean(axis=0), 0.0, atol=1e-15)
    np.testing.assert_allclose(ring_centres(4, 1.0, 2), [[1, 0], [0, 1], [-1, 0], [0, -1]], atol=1e-15)


def test_file_target_and_file_init(tmp_path):
    y = np.random.default_rng(0).normal(size=(50, 3))
    np.save(tmp_path / "y.npy", y)
    np.savez(tmp_path / "x.npz", x=y[:10])
    cfg = resolve_config(overrides=["target.kind=file", f"target.path={tmp_path / 'y.npy'}", "target.dim=3",
                                    "particles.init=file", f"particles.init_path={tmp_path / 'x.npz'}",
                                    "particles.n=10"])
    t = make_target(cfg["target"], np.random.default_rng(0))
    np.testing.assert_array_equal(t.samples, y)
    np.testing.assert_array_equal(init_particles(cfg["particles"], 3, np.random.default_rng(0)), y[:10])


def test_gaussian_init_statistics():
    cfg = resolve_config(overrides=["particles.n=20000"])
    x = init_particles(cfg["particles"], 2, np.random.default_rng(0))
    np.testing.assert_allclose(x.std(axis=0), 0.1, rtol=0.03)
    np.testing.assert_allclose(x.mean(axis=0), 0.0, atol=0.004)


def test_target_mean_init_statistics():
    cfg = resolve_config(overrides=["particles.n=20000", "particles.init=target_mean", "particles.init_sigma=0.2"])
    mean = np.array([0.3, -1.5])
    x = init_particles(cfg["particles"], 2, np.random.default_rng(0), target_mean=mean)
    # 2e4 draws: std of the sample mean 1.4e-3, margin 3 std
    np.testing.assert_allclose(x.mean(axis=0), mean, atol=0.0045)
    np.testing.assert_allclose(x.std(axis=0), 0.2, rtol=0.03)
    with pytest.raises(ValueError, match="target mean"):
        init_particles(cfg["particles"], 2, np.random.default_rng(0))


def _write_idx(path, imgs):
    import struct
    path.write_bytes(bytes([0, 0, 8, 3]) + b"".join(struct.pack(">I", n) for n in imgs.shape) + imgs.tobytes())


def test_idx_target_takes_first_images_or_indices_and_normalizes(tmp_path):
    from particlegan.store.config import resolve_config

    imgs = np.random.default_rng(0).integers(0, 256, size=(10, 3, 3)).astype(np.uint8)
    _write_idx(tmp_path / "imgs-idx3-ubyte", imgs)
    base = ["target.kind=idx", f"target.path={tmp_path / 'imgs-idx3-ubyte'}", "target.dim=9"]
    t = make_target(resolve_config(overrides=base + ["target.n_samples=4"])["target"], None)
    np.testing.assert_array_equal(t.samples, imgs[:4].reshape(4, 9).astype(float))
    assert t.centres is t.samples
    cfg = resolve_config(overrides=base + ["target.indices=[7, 2]", 'target.normalize="mnist"'])
    t = make_target(cfg["target"], None)
    np.testing.assert_allclose(t.samples, (imgs[[7, 2]].reshape(2, 9) / 255 - 0.1307) / 0.3081)
    cfg = resolve_config(overrides=base + ["target.n_samples=3", 'target.normalize="unit"'])
    assert make_target(cfg["target"], None).samples.max() <= 1.0


@pytest.mark.parametrize("extra, words", [(["target.dim=8"], "target.dim = 8"),
                                          (["target.indices=[10]"], "target.indices")])
def test_idx_target_mismatches_are_one_line_errors(tmp_path, extra, words):
    from click.testing import CliRunner

    from particlegan.cli import main

    _write_idx(tmp_path / "i", np.zeros((10, 3, 3), np.uint8))
    args = ["run", "--no-plot", "--out", str(tmp_path / "r")]
    for item in ["target.kind=idx", f"target.path={tmp_path / 'i'}", "target.dim=9", *extra]:
        args += ["--set", item]
    res = CliRunner().invoke(main, args)
    assert res.exit_code != 0 and words in res.output and res.output.count("\n") == 1
    assert not (tmp_path / "r").exists()


def test_mnist_study_config_runs_and_its_extract_script_round_trips(tmp_path):
    import struct
    import subprocess
    import sys
    from pathlib import Path

    from particlegan.engine.simulate import simulate
    from particlegan.sweeps.sweep import load_base

    repo = Path(__file__).resolve().parents[1]
    shipped = np.load(repo / "sims" / "mnist" / "targets_first100_uint8.npy")
    assert shipped.shape == (100, 784) and shipped.dtype == np.uint8
    cfg = resolve_config(load_base(repo / "sims" / "mnist" / "config.toml",
                                   ["run.steps=2", "dynamics.critic_steps_startup=1", "dynamics.critic_steps=1"]))
    assert cfg["critic"]["widths"] == [64, 1024, 64] and cfg["target"]["dim"] == 784
    res = simulate(cfg)
    assert res.status == "ok" and res.model.target.samples.shape == (100, 784)
    np.testing.assert_allclose(res.model.target.samples.max(), (1 - 0.1307) / 0.3081)
    imgs = shipped[:7].reshape(7, 28, 28)
    idx = tmp_path / "t-idx3-ubyte"
    idx.write_bytes(bytes([0, 0, 8, 3]) + b"".join(struct.pack(">I", n) for n in imgs.shape) + imgs.tobytes())
    out = tmp_path / "t.npy"
    subprocess.run([sys.executable, str(repo / "sims" / "mnist" / "extract_targets.py"), str(idx), str(out), "5"],
                   check=True)
    np.testing.assert_array_equal(np.load(out), shipped[:5])
