"""Tests of `particlegan ntk`: JSON keys, the wide two-layer ReLU closed form (g1 = 1,
g2 = 1/(2 pi) for sigma_w = 1 on the sphere), the written particle config, bad input."""
import json
import math

import numpy as np
import pytest
from click.testing import CliRunner

from particlegan.cli import main
from particlegan.store.config import config_from_sources

REQUIRED = {"g1", "g2", "phi", "offdiag_std", "width", "latent_dim"}


def _ntk(tmp_path, *sets, extra=()):
    args = ["ntk", "--json", "--out", str(tmp_path / "p.toml"), *extra]
    for s in sets:
        args += ["--set", s]
    res = CliRunner().invoke(main, args)
    assert res.exit_code == 0, res.output
    return json.loads(res.output)


def test_json_keys_and_written_particle_config(tmp_path):
    rep = _ntk(tmp_path, "particles.n=16", "generator.width=64", "generator.latent_dim=8")
    assert REQUIRED <= set(rep)
    assert rep["width"] == 64 and rep["latent_dim"] == 8 and rep["n"] == 16
    assert rep["phi"] == pytest.approx(rep["g2"] / rep["g1"], rel=1e-14)
    cfg = config_from_sources(tmp_path / "p.toml")
    assert cfg["model"]["type"] == "particle" and cfg["generator"]["kernel"] == "universal"
    assert cfg["generator"]["g1"] == rep["g1"] and cfg["generator"]["phi"] == rep["phi"]
    assert cfg["generator"]["normalization"] == "ntk" and cfg["particles"]["n"] == 16


def test_wide_two_layer_relu_on_high_dim_sphere_matches_closed_form(tmp_path):
    """width 4096, bias-free ReLU, NTK parameterisation, latents on the sphere of radius
    sqrt(256): g1 and g2 within 10% of sigma_w^4 = 1 and sigma_w^4/(2 pi) (A2.3)."""
    rep = _ntk(tmp_path, "particles.n=64", "generator.width=4096", "generator.latent_dim=256",
               "generator.latent=sphere", "generator.depth=1", "generator.activation=relu",
               "generator.bias=false", "generator.parameterization=ntk")
    assert abs(rep["g1"] / 1.0 - 1) < 0.10
    assert abs(rep["g2"] / (1 / (2 * math.pi)) - 1) < 0.10
    assert abs(rep["phi"] * 2 * math.pi - 1) < 0.10
    # the report's own closed forms agree with these constants
    assert rep["sphere_limit"]["phi"] == pytest.approx(1 / (2 * math.pi), rel=1e-12)
    assert abs(rep["closed_form"]["rel_err_g1"]) < 0.05 and abs(rep["closed_form"]["rel_err_g2"]) < 0.10


def test_gaussian_latents_compare_with_the_same_latent_closed_form(tmp_path):
    rep = _ntk(tmp_path, "particles.n=32", "generator.width=2048", "generator.latent_dim=64",
               "generator.latent=gaussian")
    assert abs(rep["closed_form"]["rel_err_g1"]) < 0.10 and abs(rep["closed_form"]["rel_err_g2"]) < 0.15


def test_no_closed_form_outside_its_assumptions(tmp_path):
    rep = _ntk(tmp_path, "particles.n=8", "generator.width=32", "generator.depth=2")
    assert "closed_form" not in rep and "sphere_limit" not in rep
    rep = _ntk(tmp_path, "particles.n=8", "generator.width=32", "generator.bias=true",
               "generator.sigma_b=0.5")
    assert "closed_form" in rep and "sphere_limit" not in rep
    assert rep["phi"] > 1 / (2 * math.pi)  # biases raise phi (A2.3)


def test_matrix_option_writes_the_kernel_and_a_matrix_config(tmp_path):
    npy = tmp_path / "k" / "ntk.npy"
    npy.parent.mkdir()
    rep = _ntk(tmp_path, "particles.n=12", "generator.width=64", extra=["--matrix", str(npy)])
    K = np.load(npy)
    assert K.shape == (12, 12) and np.allclose(K, K.T)
    assert np.mean(np.diag(K)) == pytest.approx(rep["g1"], rel=1e-12)
    cfg = config_from_sources(tmp_path / "p.toml")
    assert cfg["generator"]["kernel"] == "matrix" and cfg["generator"]["matrix_path"] == str(npy)
    res = CliRunner().invoke(main, ["run", str(tmp_path / "p.toml"), "--set", "run.steps=3",
                                    "--out", str(tmp_path / "run"), "--no-plot"])
    assert res.exit_code == 0, res.output


def test_init_option_starts_the_particles_at_the_generator_outputs(tmp_path):
    """--init: the particle run's step-0 snapshot is the neural run's (same generator, latents)."""
    from particlegan.engine.simulate import simulate

    npy = tmp_path / "x0.npy"
    sets = ["particles.n=12", "generator.width=64", "run.steps=2", "run.record_every=1"]
    rep = _ntk(tmp_path, *sets, extra=["--init", str(npy)])
    assert rep["init_path"] == str(npy)
    pcfg = config_from_sources(tmp_path / "p.toml")
    assert pcfg["particles"]["init"] == "file" and pcfg["particles"]["init_path"] == str(npy)
    neural = simulate(config_from_sources(None, sets + ["model.type=neural"]))
    particle = simulate(pcfg)
    assert np.array_equal(np.load(npy), neural.snapshots[0])
    assert np.array_equal(particle.snapshots[0], neural.snapshots[0])


def test_out_that_is_a_directory_is_refused_before_measuring(tmp_path):
    (tmp_path / "d").mkdir()
    res = CliRunner().invoke(main, ["ntk", "--out", str(tmp_path / "d"), "--set", "particles.n=8",
                                    "--matrix", str(tmp_path / "nope" / "k.npy")])
    assert res.exit_code == 2 and "is a directory" in res.output and res.output.count("\n") == 1
    assert not (tmp_path / "nope").exists() and list((tmp_path / "d").iterdir()) == []


def test_text_output(tmp_path):
    res = CliRunner().invoke(main, ["ntk", "--out", str(tmp_path / "p.toml"), "--set", "particles.n=8",
                                    "--set", "generator.width=16"])
    assert res.exit_code == 0 and "phi" in res.output and "sphere limit" in res.output


@pytest.mark.parametrize("args,fragment", [
    (["--set", "generator.width=0"], "generator.width"),
    (["--set", "generator.activation=sigmoid"], "generator.activation"),
    (["--set", "generator.latent=cube"], "generator.latent"),
    (["missing.toml"], "missing.toml"),
    (["--matrix", "k.txt"], "--matrix"),
    (["--init", "x0.csv"], "--init"),
    (["--matrix", "/nonexistent_dir_pg/k.npy"], "directory '/nonexistent_dir_pg' does not exist"),
    (["--init", "/nonexistent_dir_pg/x0.npy"], "does not exist"),
])
def test_bad_input_is_a_one_line_error(tmp_path, args, fragment):
    res = CliRunner().invoke(main, ["ntk", "--out", str(tmp_path / "p.toml"), *args])
    assert res.exit_code == 2
    assert res.output.startswith("error:") and fragment in res.output
    assert res.output.count("\n") == 1 and "Traceback" not in res.output
