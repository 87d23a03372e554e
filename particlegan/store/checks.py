"""One family of validators for every user-facing value (config keys, factory arguments, kernel
and schedule parameters), so that each rule and its message is written once.

A *check* is a small function ``check(value) -> message | None``: None when the value passes,
otherwise the reason without the name ("must be in [0, 1)"). :func:`require` applies checks and
raises the one-line :class:`particlegan.errors.ConfigError` ``"<name> <reason>, got <value>"``;
the config schema (:mod:`particlegan.store.config`) attaches checks to keys and reports them the
same way. Range checks assume a number; put :func:`real` (or :func:`integer`) first where the
value may be anything.
"""
from __future__ import annotations

import math
import numbers
from typing import Any, Callable

from particlegan.errors import ConfigError  # (no numpy here: the config module is imported by sweep workers first)

Check = Callable[[Any], "str | None"]


def _is_bool(v) -> bool:
    return isinstance(v, bool) or (type(v).__module__ == "numpy" and type(v).__name__ in ("bool", "bool_"))


def is_real(v) -> bool:
    """A real number (Python or numpy, which registers its scalars as numbers.Real; not bool)."""
    return isinstance(v, numbers.Real) and not _is_bool(v)


def real(v) -> str | None:
    return None if is_real(v) else "must be a number"


def finite(v) -> str | None:
    return None if is_real(v) and math.isfinite(float(v)) else "must be a finite number"


def integer(v) -> str | None:
    ok = is_real(v) and math.isfinite(float(v)) and float(v).is_integer()
    return None if ok else "must be an integer"


def flag(v) -> str | None:
    return None if _is_bool(v) else "must be true or false"


def one_of(choices) -> Check:
    """The value is one of ``choices``."""
    return lambda v: None if v in choices else f"must be one of {', '.join(map(repr, choices))}"


def positive(v) -> str | None:
    return None if v > 0 else "must be > 0"


def nonneg(v) -> str | None:
    return None if v >= 0 else "must be >= 0"


def at_least(lo) -> Check:
    return lambda v: None if v >= lo else f"must be >= {lo}"


def interval(lo, hi, closed: str = "[]") -> Check:
    """``lo <= v <= hi`` with the ends open or closed as in ``closed`` ("[]", "[)", "(]", "()")."""
    def check(v):
        above = v >= lo if closed[0] == "[" else v > lo
        below = v <= hi if closed[1] == "]" else v < hi
        return None if above and below else f"must be in {closed[0]}{lo}, {hi}{closed[1]}"
    return check


unit_closed = interval(0, 1, "[]")
unit_open = interval(0, 1, "()")
unit_open_closed = interval(0, 1, "(]")
unit_half_open = interval(0, 1, "[)")


def all_of(*parts: Check) -> Check:
    """One check made of several: the reason of the first that fails (as :func:`require` reports)."""
    def check(v):
        return next((msg for msg in (part(v) for part in parts) if msg), None)
    return check


def each(check: Check, what: str, nonempty: bool = False) -> Check:
    """A check of every element of a list: "must hold <what>" when one fails."""
    def check_all(vs):
        if (nonempty and len(vs) == 0) or any(check(v) for v in vs):
            return f"must {'be a non-empty list of' if nonempty else 'hold'} {what}"
        return None
    return check_all


def pair_of(check: Check, what: str) -> Check:
    """Exactly two values, each passing ``check``."""
    def check_pair(vs):
        try:
            ok = len(vs) == 2 and not any(check(v) for v in vs)
        except TypeError:
            ok = False
        return None if ok else f"must be two {what}"
    return check_pair


def require(name: str, value, *checks: Check):
    """``value`` when every check passes (in order), else ConfigError ``"<name> <reason>, got
    <value!r>"``."""
    msg = all_of(*checks)(value)
    if msg:
        raise ConfigError(f"{name} {msg}, got {value!r}")
    return value
