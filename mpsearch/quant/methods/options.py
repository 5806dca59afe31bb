"""Validation of the numeric options a method reads from QuantConfig.options."""

from __future__ import annotations

import math
from typing import Any

from mpsearch.errors import PolicyError


def check_number(name: str, value: Any, lo: float, hi: float = math.inf, *, integer: bool = False,
                 lo_open: bool = False, allow_none: bool = False) -> None:
    """Raise a PolicyError unless `value` is a number (an integer if asked) in [lo, hi] ((lo, hi] if
    lo_open); None passes when allow_none."""
    if value is None and allow_none:
        return
    kind = int if integer else (int, float)
    low_ok = value > lo if lo_open else value >= lo
    if isinstance(value, bool) or not isinstance(value, kind) or not (low_ok and value <= hi) \
            or (isinstance(value, float) and not math.isfinite(value)):
        what = "an integer" if integer else "a number"
        bounds = f"{'(' if lo_open else '['}{lo:g}, {hi:g}]"
        raise PolicyError(f"The option '{name}' must be {what} in {bounds}; got {value!r}.")


def check_choice(name: str, value: Any, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise PolicyError(f"The option '{name}' must be one of {', '.join(choices)}; got {value!r}.")
