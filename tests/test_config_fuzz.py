"""Property-based and fuzz tests of the config loader: it returns a valid config or raises
ConfigError — never any other exception, never a partially valid config."""
import math
import tomllib

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from particlegan.store.config import SCHEMA, load_toml, resolve_config, to_toml
from particlegan.errors import ConfigError

SECTIONS = list(SCHEMA)
KEYS = [(s, k) for s in SCHEMA for k in SCHEMA[s]]

scalars = st.one_of(
    st.none(), st.booleans(), st.integers(min_value=-10**6, max_value=10**6),
    st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=12),
    st.lists(st.floats(allow_nan=True, allow_infinity=True), max_size=3),
    st.dictionaries(st.text(max_size=4), st.integers(), max_size=2),
)
near_names = st.one_of(st.sampled_from([k for _, k in KEYS]), st.text(min_size=1, max_size=10))


def _assert_valid(cfg):
    assert set(cfg) == set(SCHEMA)
    for sec, keys in SCHEMA.items():
        assert set(cfg[sec]) == set(keys)
        for k, spec in keys.items():
            v = cfg[sec][k]
            if spec.kind == "float":
                assert isinstance(v, float) and not math.isnan(v)
            if spec.kind == "int":
                assert isinstance(v, int) and not isinstance(v, bool)
            if spec.choices:
                assert v in spec.choices
    n = cfg["particles"]["n"]
    assert -1 / (n - 1) <= cfg["generator"]["phi"] <= 1


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.dictionaries(st.one_of(st.sampled_from(SECTIONS), st.text(max_size=8)),
                       st.one_of(st.dictionaries(near_names, scalars, max_size=4), scalars), max_size=4))
def test_random_user_dicts_give_valid_config_or_config_error(user):
    try:
        cfg = resolve_config(user)
    except ConfigError as exc:
        assert "\n" not in str(exc)
        return
    _assert_valid(cfg)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(KEYS), st.text(max_size=10)), max_size=3))
def test_random_overrides_give_valid_config_or_config_error(items):
    overrides = [f"{s}.{k}={v}" for (s, k), v in items]
    try:
        cfg = resolve_config(overrides=overrides)
    except ConfigError as exc:
        assert "\n" not in str(exc)
        return
    _assert_valid(cfg)


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=200))
def test_random_toml_text_gives_valid_config_or_config_error(tmp_path_factory, text):
    p = tmp_path_factory.mktemp("fuzz") / "c.toml"
    p.write_text(text, encoding="utf-8")
    try:
        cfg = resolve_config(load_toml(p))
    except ConfigError as exc:
        assert "\n" not in str(exc)
        return
    _assert_valid(cfg)


@settings(max_examples=150, deadline=None)
@given(st.data())
def test_mutated_valid_configs(tmp_path_factory, data):
    """Start from the valid default TOML and corrupt one line: still valid or ConfigError."""
    lines = to_toml(resolve_config()).splitlines()
    i = data.draw(st.integers(0, len(lines) - 1))
    mutation = data.draw(st.sampled_from(["delete", "garble", "dup", "value"]))
    if mutation == "delete":
        del lines[i]
    elif mutation == "garble":
        lines[i] = lines[i][: data.draw(st.integers(0, max(0, len(lines[i]) - 1)))]
    elif mutation == "dup":
        lines.insert(i, lines[i])
    elif "=" in lines[i]:
        key = lines[i].split("=")[0]
        lines[i] = key + "= " + data.draw(st.sampled_from(["-1", "nan", "inf", "\"x\"", "[]", "1e999", "true",
                                                           "0", "{a=1}", "-inf", "1.5", "\"\""]))
    p = tmp_path_factory.mktemp("mut") / "c.toml"
    p.write_text("\n".join(lines))
    try:
        cfg = resolve_config(load_toml(p))
    except ConfigError as exc:
        assert "\n" not in str(exc)
        return
    _assert_valid(cfg)


def test_default_toml_is_valid_toml():
    assert tomllib.loads(to_toml(resolve_config()))
