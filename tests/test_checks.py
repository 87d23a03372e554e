"""The one family of validators (particlegan.store.checks): each check at its boundaries, the
one-line message format, and the same rule giving the same message through the config schema
and through the factories that use it directly."""
import math

import numpy as np
import pytest

from particlegan.errors import ConfigError
from particlegan.maths import stability
from particlegan.store import checks
from particlegan.sweeps import sweep


@pytest.mark.parametrize("check,good,bad", [
    (checks.real, [0, -1.5, np.float32(2), np.int64(3)], [True, "1", None, [1]]),
    (checks.finite, [0.0, -1e300], [math.inf, -math.inf, math.nan, "x"]),
    (checks.integer, [3, 3.0, np.int64(-2)], [2.5, math.inf, "3", True]),
    (checks.flag, [True, False, np.bool_(True)], [0, 1, "true", None]),
    (checks.positive, [1e-300, 1], [0, -1]),
    (checks.nonneg, [0, 2], [-1e-300]),
    (checks.at_least(3), [3, 4.5], [2.999]),
    (checks.unit_open, [1e-9, 0.999], [0, 1]),
    (checks.unit_closed, [0, 1], [-1e-9, 1.0000001]),
    (checks.unit_open_closed, [1, 0.5], [0]),
    (checks.unit_half_open, [0, 0.5], [1]),
    (checks.one_of(("a", "b")), ["a", "b"], ["c", None]),
    (checks.all_of(checks.real, checks.positive), [1, 0.5], [0, -1, "a"]),
    (checks.each(checks.positive, "numbers > 0", nonempty=True), [[1], [1, 2]], [[], [1, 0]]),
    (checks.each(checks.nonneg, "integers >= 0"), [[], [0, 3]], [[-1]]),
    (checks.pair_of(checks.unit_half_open, "numbers in [0, 1)"), [(0, 0.9), [0.5, 0.5]], [(0.5,), (0.1, 1), 3]),
])
def test_each_check_passes_and_fails_at_its_boundaries(check, good, bad):
    for v in good:
        assert check(v) is None, v
    for v in bad:
        msg = check(v)
        assert isinstance(msg, str) and msg.startswith("must "), (v, msg)


def test_require_returns_the_value_or_raises_one_line_naming_it():
    assert checks.require("x.y", 0.5, checks.real, checks.unit_open) == 0.5
    with pytest.raises(ConfigError) as err:
        checks.require("x.y", "a", checks.real, checks.unit_open)  # stops at the first failing check
    assert str(err.value) == "x.y must be a number, got 'a'"
    with pytest.raises(ConfigError, match=r"^x\.y must be in \(0, 1\), got 1$"):
        checks.require("x.y", 1, checks.real, checks.unit_open)


@pytest.mark.parametrize("override,option,value", [
    ("critic.momentum=1.0", "momentum", 1.0),
    ("critic.betas=[0.5, 1.0]", "betas", (0.5, 1.0)),
    ("critic.lr_power=1.5", "lr_power", 1.5),
    ("critic.adam_eps=0", "eps", 0.0),
])
def test_the_config_and_the_optimizer_factory_report_a_rule_the_same_way(override, option, value):
    """One rule, one message: a bad optimizer value fails with the same sentence whether the
    config schema or make_optimizer (the Python API) catches it."""
    from particlegan.model.optimizers import make_optimizer
    from particlegan.store.config import resolve_config

    base = {"momentum": "momentum", "betas": "adam", "lr_power": "sgd", "eps": "adam"}[option]
    with pytest.raises(ConfigError) as from_config:
        resolve_config(overrides=[f"critic.optimizer={base}", override])
    key = override.split("=")[0].split(".")[1]
    kw = {"lr_schedule": "diminishing"} if option == "lr_power" else {}
    with pytest.raises(ConfigError) as from_factory:
        make_optimizer(base, 0.1, key_prefix="critic", key_names={option: key}, **kw, **{option: value})
    reason = lambda e: str(e.value).split(", got")[0]  # noqa: E731 (the values print as given)
    assert reason(from_config) == reason(from_factory)
    assert reason(from_config).startswith(f"critic.{key} must ")


@pytest.mark.parametrize("call,message", [
    (lambda: stability.kernel_eigenvalues(1.0, 0.1, 0),
     "number of particles n must be >= 1, got 0"),
    (lambda: stability.timescale_ratio(0.1, 2.5),
     "number of particles n must be an integer, got 2.5"),
    (lambda: stability.dispersion_relation(
        "gaussian", [1.0], rho0=-1.0, sigma=1.0), "rho0 must be > 0, got -1.0"),
    (lambda: stability.fourier_symbol(
        "distance_induced", [1.0], beta=2.0), "kernel 'distance_induced' parameter beta must be in (0, 1], got 2.0"),
    (lambda: sweep.parse_seeds("1,-2"),
     "--seeds: a seed must be >= 0, got -2"),
])
def test_stability_and_sweep_arguments_use_the_same_family(call, message):
    """The analysis functions and the sweep's options report through checks.require too."""
    with pytest.raises(ConfigError) as info:
        call()
    assert str(info.value) == message
