"""The options a quantizer or sparsifier reads from QuantConfig.options: their checks and their values."""

from __future__ import annotations

import math
from typing import Any

from mpsearch.errors import PolicyError
from mpsearch.quant.config import QuantConfig
from mpsearch.quant.parts import WEIGHT_SCALES
from mpsearch.quant.rounding import ROUNDINGS


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


def check_rounding(value: Any) -> None:
    ROUNDINGS.get(value)


def check_momentum(value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 < value <= 1.0:
        raise PolicyError(f"The option 'act_momentum' must be a number in (0, 1]; got {value!r}.")


def check_weight_scale(value: Any) -> None:
    if value not in WEIGHT_SCALES:
        raise PolicyError(f"The option 'weight_scale' must be one of {', '.join(WEIGHT_SCALES.names())}; "
                          f"got {value!r}.")


# Option name -> validator, for the options the base quantizers share. A quantizer class lists the names
# it reads, with their defaults, in `options`.
OPTION_CHECKS = {"rounding": check_rounding, "act_momentum": check_momentum, "weight_scale": check_weight_scale}


def option_value(cfg: QuantConfig, cls: type, name: str) -> Any:
    """The value of option `name` in cfg, or the default of `cls` (a class with an `options` mapping)."""
    return cfg.options.get(name, cls.options[name])
