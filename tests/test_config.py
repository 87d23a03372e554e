import json
import math
import re

import pytest

from particlegan.store.config import (SCHEMA, canonical_json, config_from_json, config_hash, default_config,
                                load_toml, parse_override, resolve_config, to_toml)
from particlegan.errors import ConfigError


def test_defaults_resolve_and_are_complete():
    cfg = resolve_config()
    assert set(cfg) == set(SCHEMA)
    for sec, keys in SCHEMA.items():
        assert set(cfg[sec]) == set(keys)
    assert cfg["target"]["modes"] == 8 and cfg["target"]["radius"] == 0.75
    assert cfg["target"]["sigma"] == 0.075 and cfg["particles"]["init_sigma"] == 0.1
    assert cfg["particles"]["n"] == 256 and cfg["generator"]["phi"] == 0.0


def test_parse_override_types():
    assert parse_override("generator.phi=0.99") == ("generator", "phi", 0.99)
    assert parse_override("run.steps=100") == ("run", "steps", 100)
    assert parse_override("critic.type=rff") == ("critic", "type", "rff")
    assert parse_override("generator.bias=true") == ("generator", "bias", True)
    assert parse_override("loss.alpha_d=inf") == ("loss", "alpha_d", math.inf)
    assert parse_override("critic.mmd_sigmas=[0.1, 0.2]")[2] == [0.1, 0.2]


def _leaf_example(sec, key):
    """A valid non-default value for every key, to prove each one is overridable."""
    spec = SCHEMA[sec][key]
    if spec.choices:
        return next(c for c in spec.choices if c != spec.default)
    return {"int": lambda d: d + 1, "float": lambda d: d * 0.5 if d else 0.5,
            "bool": lambda d: not d, "str": lambda d: d, "path": lambda d: "/data/x.npy",
            "sha256": lambda d: "ab" * 32,
            "float?": lambda d: 0.5, "floats": lambda d: [0.3, 0.6], "ints": lambda d: [8, 16]}[spec.kind](spec.default)


@pytest.mark.parametrize("sec,key", [(s, k) for s in SCHEMA for k in SCHEMA[s]])
def test_every_key_can_be_overridden(sec, key):
    value = _leaf_example(sec, key)
    if isinstance(value, str):
        raw = value
    elif isinstance(value, bool):
        raw = "true" if value else "false"
    else:
        raw = json.dumps(value)
    try:
        cfg = resolve_config(overrides=[f"{sec}.{key}={raw}"])
    except ConfigError as exc:
        # a cross-key rule may legitimately refuse an isolated change; it must name a key
        assert "." in str(exc)
        return
    got = cfg[sec][key]
    if SCHEMA[sec][key].kind == "sha256":  # the hash of a path key that is not set: cleared
        assert got == ""
        return
    assert got == value or (isinstance(value, float) and math.isclose(got, value))


@pytest.mark.parametrize("override,fragment", [
    ("generator.ph=0.5", "did you mean 'phi'"),
    ("genrator.phi=0.5", "did you mean 'generator'"),
    ("dynamics.eta_g=-1", "dynamics.eta_g must be > 0"),
    ("run.steps=abc", "run.steps must be an integer"),
    ("run.steps=1.5", "run.steps must be an integer"),
    ("generator.phi=1.5", "generator.phi"),
    ("generator.phi=-0.5", "PSD range"),
    ("loss.penalty_weight=nan", "loss.penalty_weight must be a finite number"),
    ("dynamics.eta_d=inf", "dynamics.eta_d must be a finite number"),
    ("critic.type=rfff", "did you mean 'rff'"),
    ("generator.bias=1", "generator.bias must be true or false"),
    ("run.steps=true", "run.steps must be an integer"),
    ("noequals", "section.key=value"),
    ("a.b.c=1", "section.key"),
])
def test_bad_values_raise_one_line_errors_naming_the_key(override, fragment):
    with pytest.raises(ConfigError) as err:
        resolve_config(overrides=[override])
    msg = str(err.value)
    assert fragment in msg
    assert "\n" not in msg


def test_g2_overrides_phi_and_is_checked():
    cfg = resolve_config(overrides=["generator.g1=2.0", "generator.g2=0.5"])
    assert cfg["generator"]["phi"] == 0.25
    with pytest.raises(ConfigError, match="generator.g2"):
        resolve_config(overrides=["generator.g2=3.0"])


@pytest.mark.parametrize("extra,fragment", [
    (["critic.dropout=[0.2]"], "critic.dropout is available for critic.type = 'mlp'"),
    (["critic.type=mlp", "critic.widths=[4, 4]", "critic.dropout=[0.2]"], "1 rates for 2 hidden layers"),
    (["critic.type=mlp", "critic.dropout=[0.2, 1.0]"], "critic.dropout"),
    (["loss.penalty=interpolates", "loss.penalty_form=mean_grad"], "loss.penalty_form = 'mean_grad'"),
])
def test_dropout_and_mean_grad_rules(extra, fragment):
    with pytest.raises(ConfigError, match=re.escape(fragment)):
        resolve_config(overrides=extra)


def test_dropout_accepted_for_the_mlp_critic_of_both_engines():
    cfg = resolve_config(overrides=["critic.type=mlp", "critic.widths=[4, 8, 4]", "critic.dropout=[0, 0.2, 0]",
                                    "critic.output_bias=false"])
    assert cfg["critic"]["dropout"] == [0.0, 0.2, 0.0] and cfg["critic"]["output_bias"] is False
    assert resolve_config(overrides=["critic.type=mlp", "model.type=neural", "critic.dropout=[0, 0.2]"])


def test_cross_key_rules():
    with pytest.raises(ConfigError, match="target.path"):
        resolve_config(overrides=["target.kind=file"])
    with pytest.raises(ConfigError, match="loss.penalty"):
        resolve_config(overrides=["critic.type=kernel"])
    resolve_config(overrides=["critic.type=kernel", "loss.penalty=none"])


def test_load_toml_errors(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_toml(tmp_path / "missing.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("[run\nsteps = 3\n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_toml(bad)
    wrong = tmp_path / "wrong.toml"
    wrong.write_text("run = 3\n")
    with pytest.raises(ConfigError, match="must be a table"):
        resolve_config(load_toml(wrong))


def test_toml_roundtrip_and_hash_stability(tmp_path):
    cfg = resolve_config(overrides=["generator.phi=0.3", "loss.alpha_d=inf", "critic.mmd_sigmas=[0.1,0.4]"])
    p = tmp_path / "c.toml"
    p.write_text(to_toml(cfg))
    again = resolve_config(load_toml(p))
    assert again == cfg
    assert config_hash(again) == config_hash(cfg)
    assert config_hash(resolve_config(overrides=["generator.phi=0.31"])) != config_hash(cfg)


def test_canonical_json_roundtrip(tmp_path):
    cfg = resolve_config(overrides=["run.seed=7", "generator.g2=0.2"])
    p = tmp_path / "config.json"
    p.write_text(canonical_json(cfg))
    assert config_from_json(p) == cfg


def test_default_config_is_a_fresh_copy():
    a = default_config()
    a["critic"]["mmd_sigmas"].append(9.0)
    assert default_config()["critic"]["mmd_sigmas"] == [0.2]


def test_mlp_critic_in_both_models_with_per_layer_widths():
    for model in ("particle", "neural"):
        cfg = resolve_config(overrides=["critic.type=mlp", f"model.type={model}", "critic.widths=[64, 1024, 64]"])
        assert cfg["critic"]["widths"] == [64, 1024, 64]
    assert resolve_config(overrides=["critic.widths=32"])["critic"]["widths"] == [32]
    for bad, words in (("[0, 4]", ">= 1"), ("[1.5]", "integers"), ('["a"]', "integers"), ("true", "integers")):
        with pytest.raises(ConfigError, match=words):
            resolve_config(overrides=[f"critic.widths={bad}"])


def test_kid_observable_and_schedule_defaults():
    cfg = resolve_config()
    assert cfg["observables"]["kid"] is False
    assert (cfg["observables"]["kid_subsets"], cfg["observables"]["kid_subset_size"]) == (10, 200)
    assert cfg["schedule"] == {"kind": "none", "every": 50, "window": 10, "p_threshold": 0.1,
                               "patience": 3, "factor": 0.5, "floor": 1e-6}
    from particlegan.maths.mmd import KIDLearningRateSchedule

    assert set(cfg["schedule"]) == set(KIDLearningRateSchedule.CONFIG_KEYS)


@pytest.mark.parametrize("override,fragment", [
    ("schedule.kind=kd", "schedule.kind must be one of 'none', 'kid', got 'kd' (did you mean 'kid'?)"),
    ("schedule.every=0", "schedule.every must be >= 1"),
    ("schedule.every=2.5", "schedule.every must be an integer"),
    ("schedule.window=0", "schedule.window must be >= 1"),
    ("schedule.p_threshold=1.5", "schedule.p_threshold must be in [0, 1]"),
    ("schedule.p_threshold=-0.1", "schedule.p_threshold must be in [0, 1]"),
    ("schedule.patience=0", "schedule.patience must be >= 1"),
    ("schedule.factor=1.0", "schedule.factor must be in (0, 1)"),
    ("schedule.factor=0", "schedule.factor must be in (0, 1)"),
    ("schedule.floor=-1e-3", "schedule.floor must be >= 0"),
    ("schedule.flor=0", "did you mean 'floor'"),
    ("observables.kid=1", "observables.kid must be true or false"),
    ("observables.kid_subsets=0", "observables.kid_subsets must be >= 1"),
    ("observables.kid_subset_size=1", "observables.kid_subset_size must be >= 2"),
])
def test_schedule_and_kid_keys_are_validated(override, fragment):
    with pytest.raises(ConfigError) as err:
        resolve_config(overrides=[override])
    msg = str(err.value)
    assert fragment in msg and "\n" not in msg


def test_kid_schedule_cross_key_rules():
    with pytest.raises(ConfigError, match=r"schedule.floor .* dynamics.eta_g") as err:
        resolve_config(overrides=["schedule.kind=kid", "dynamics.eta_g=1e-3", "schedule.floor=1e-2"])
    assert "\n" not in str(err.value)
    with pytest.raises(ConfigError, match="particles.n >= 3"):
        resolve_config(overrides=["schedule.kind=kid", "particles.n=2"])
    # the same values are fine while the schedule is off
    resolve_config(overrides=["dynamics.eta_g=1e-3", "schedule.floor=1e-2", "particles.n=2"])
    cfg = resolve_config(overrides=["schedule.kind=kid", "schedule.every=7", "observables.kid=true"])
    assert cfg["schedule"]["every"] == 7 and cfg["observables"]["kid"] is True


# ---- hardening: hostile config files, integer range, schema version, data identity ----------
@pytest.mark.parametrize("text,fragment", [
    ("[1, 2, 3]", "must hold a JSON object"),
    ('"just a string"', "must hold a JSON object"),
    ('{"schema_version": 99, "config": {}}', "schema_version 99"),
    ('{"schema_version": 1}', "no 'config' table"),
])
def test_hostile_json_configs_are_one_line_errors(tmp_path, text, fragment):
    from particlegan.store.config import config_from_json

    p = tmp_path / "c.json"
    p.write_text(text)
    with pytest.raises(ConfigError, match=fragment) as err:
        config_from_json(p)
    assert "\n" not in str(err.value)


def test_resolve_config_refuses_a_non_table():
    with pytest.raises(ConfigError, match="table of sections"):
        resolve_config([("run", {})])


@pytest.mark.parametrize("text,fragment", [
    ("[run]\nsteps = 99999999999999999999\n", "run.steps = 99999999999999999999 is out of the 64-bit"),
    ("[run]\nseed = 9223372036854775808\n", "out of the 64-bit integer range"),
    ("[dynamics]\neta_g = 1" + "0" * 400 + "\n", "too large for a floating-point number"),
])
def test_integers_beyond_int64_in_toml_are_refused(tmp_path, text, fragment):
    from particlegan.store.config import config_from_sources

    p = tmp_path / "c.toml"
    p.write_text(text)
    with pytest.raises(ConfigError, match=fragment):
        config_from_sources(p)


def test_bias_without_sigma_b_under_ntk_is_refused():
    with pytest.raises(ConfigError, match="generator.bias = true has no effect with generator.sigma_b = 0"):
        resolve_config(overrides=["generator.bias=true"])
    assert resolve_config(overrides=["generator.bias=true", "generator.sigma_b=1"])["generator"]["bias"]
    assert resolve_config(overrides=["generator.bias=true", "generator.parameterization=standard"])


def test_bias_with_sigma_b_changes_the_ntk_generator_outputs():
    """The combination that is allowed does act: biases (sigma_b > 0) move G(z)."""
    import numpy as np

    from particlegan.model.from_config import make_generator
    from particlegan.maths import nn

    base = ["model.type=neural", "particles.n=8", "generator.width=16"]
    plain = make_generator(resolve_config(overrides=base), np.random.default_rng(0))
    biased = make_generator(resolve_config(overrides=base + ["generator.bias=true", "generator.sigma_b=1"]),
                            np.random.default_rng(0))
    z = np.random.default_rng(1).normal(size=(8, plain.layer_sizes[0]))
    assert not np.allclose(nn.mlp_apply(plain, z), nn.mlp_apply(biased, z))


def test_data_paths_are_absolute_and_hashed(tmp_path, monkeypatch):
    import hashlib

    import numpy as np

    from particlegan.store.config import config_from_json, config_from_sources, canonical_json

    np.save(tmp_path / "y.npy", np.arange(20.0).reshape(10, 2))
    (tmp_path / "c.toml").write_text('[target]\nkind = "file"\npath = "y.npy"\n')
    other = tmp_path / "other"
    other.mkdir()
    monkeypatch.chdir(other)
    cfg = config_from_sources(tmp_path / "c.toml")
    assert cfg["target"]["path"] == str(tmp_path / "y.npy")
    assert cfg["target"]["path_sha256"] == hashlib.sha256((tmp_path / "y.npy").read_bytes()).hexdigest()
    stored = tmp_path / "config.json"
    stored.write_text(canonical_json(cfg))
    assert config_from_json(stored) == cfg  # reruns from any directory
    np.save(tmp_path / "y.npy", np.arange(20.0).reshape(10, 2) + 1)
    with pytest.raises(ConfigError, match="target.path file .* has changed since this config was stored"):
        config_from_json(stored)
    # pointing a stored config at another file drops the old hash instead of refusing
    np.save(other / "z.npy", np.ones((10, 2)))
    cfg2 = resolve_config(json.loads(stored.read_text())["config"], ["target.path=z.npy"])
    assert cfg2["target"]["path"] == str(other / "z.npy")
    assert cfg2["target"]["path_sha256"] == hashlib.sha256((other / "z.npy").read_bytes()).hexdigest()


def test_backend_auto_resolves_to_cpu_when_numba_is_installed_and_is_stored_resolved(monkeypatch):
    import importlib.util

    from particlegan import numba_setup
    from particlegan.store.config import config_hash

    assert importlib.util.find_spec("numba") is not None  # a test dependency
    assert resolve_config()["run"]["backend"] == "cpu"
    assert resolve_config(overrides=["run.backend=auto"]) == resolve_config()
    assert resolve_config(overrides=["run.backend=numpy"])["run"]["backend"] == "numpy"
    assert config_hash(resolve_config()) == config_hash(resolve_config(overrides=["run.backend=cpu"]))
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "numba" else real_find_spec(name, *a))
    assert numba_setup.default_backend() == "numpy"
    assert resolve_config()["run"]["backend"] == "numpy"
