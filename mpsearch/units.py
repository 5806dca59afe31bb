"""Numbers as people read them: error rates in percent, sizes in KiB/MiB, times in ms or µs.

Metric names carry their unit (`latency_ms`, `size_bytes`, `time_us`, `wer`); the helpers here pick a
readable unit from the name and, for a column or an axis, from the largest value."""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

ERROR_RATES = ("wer", "cer")


@dataclass(frozen=True)
class Unit:
    """Multiply a stored value by `scale` to read it in `symbol`."""

    symbol: str
    scale: float = 1.0


def is_error_rate(name: str) -> bool:
    """`wer`, `test_wer`, `dev.cer`, ...: a fraction of words (characters) wrong."""
    return name.rsplit(".", 1)[-1].removeprefix("test_").removeprefix("dev_") in ERROR_RATES


def axis_unit(name: str, values: Iterable[Any]) -> Unit:
    """One unit for every value of a column or axis, chosen by the metric's name and its largest value."""
    if is_error_rate(name):
        return Unit("%", 100.0)
    finite = [abs(float(v)) for v in values if _is_number(v) and math.isfinite(float(v))]
    largest = max(finite, default=0.0)
    if name.endswith("_bytes"):
        return _size_unit(largest)
    if name.endswith("_ms"):
        return _time_unit(largest * 1e3)
    if name.endswith("_us"):
        return _time_unit(largest, from_us=True)
    return Unit("")


def format_bytes(value: Any) -> str:
    if not _is_number(value) or not math.isfinite(float(value)):
        return "-"
    unit = _size_unit(abs(float(value)))
    return _with_unit(float(value) * unit.scale, unit)


def format_ms(value: Any) -> str:
    """A duration stored in milliseconds, in ms (µs below 0.1 ms, s from 10 s)."""
    if not _is_number(value) or not math.isfinite(float(value)):
        return "-"
    unit = _time_unit(abs(float(value)) * 1e3, from_us=False)
    return _with_unit(float(value) * unit.scale, unit)


def format_rate(value: Any, low: Any = None, high: Any = None) -> str:
    """An error rate as a percentage, with its interval when given: "12.3% [11.1, 13.6]"."""
    return _with_interval(value, low, high, "{:.1f}", "%")


def format_delta(value: Any, low: Any = None, high: Any = None) -> str:
    """A difference of error rates in percentage points, signed, with its interval: "+0.40 [-0.31, 1.12]"."""
    return _with_interval(value, low, high, "{:+.2f}", "")


def _with_interval(value: Any, low: Any, high: Any, spec: str, suffix: str) -> str:
    """`value` in percent as `spec` formats it, then " [low, high]" when both ends are numbers."""
    if not _is_number(value) or math.isnan(float(value)):
        return "-"
    text = spec.format(100 * float(value)) + suffix
    if _is_number(low) and _is_number(high) and not (math.isnan(float(low)) or math.isnan(float(high))):
        text += f" [{spec.format(100 * float(low))}, {spec.format(100 * float(high))}]"
    return text


def format_in(value: Any, unit: Unit) -> str:
    """A value in a unit chosen for its whole column (the symbol goes in the column's header)."""
    if not _is_number(value) or not math.isfinite(float(value)):
        return "-"
    return _significant(float(value) * unit.scale)


def format_metric(name: str, value: Any) -> str:
    """One value of a named metric with its unit: wer 0.123 -> "12.3%", size_bytes 3120 -> "3.05 KiB"."""
    if isinstance(value, bool) or not _is_number(value):
        return "-" if value is None else str(value)
    if math.isnan(float(value)):
        return "-"
    if is_error_rate(name):
        return format_rate(value)
    if name.endswith("_bytes"):
        return format_bytes(value)
    if name.endswith("_ms"):
        return format_ms(value)
    if name.endswith("_us"):
        return format_ms(float(value) / 1e3)
    if name.endswith("_seconds"):
        return f"{_significant(float(value))} s"
    return _significant(float(value))


def _size_unit(largest: float) -> Unit:
    if largest >= 1024 ** 3:
        return Unit("GiB", 1 / 1024 ** 3)
    if largest >= 1024 ** 2:
        return Unit("MiB", 1 / 1024 ** 2)
    if largest >= 1024:
        return Unit("KiB", 1 / 1024)
    return Unit("B")


def _time_unit(largest_us: float, from_us: bool = False) -> Unit:
    # `scale` converts from the stored unit (ms, or us with from_us) to the chosen one.
    to_stored = 1.0 if from_us else 1e-3
    if largest_us >= 1e7:
        return Unit("s", 1e-6 / to_stored)
    if largest_us >= 100:
        return Unit("ms", 1e-3 / to_stored)
    return Unit("µs", 1.0 / to_stored)


def _with_unit(scaled: float, unit: Unit) -> str:
    return f"{_significant(scaled)} {unit.symbol}" if unit.symbol else _significant(scaled)


def _significant(value: float) -> str:
    """Whole numbers whole; others to 3 significant digits, without exponent below a million."""
    if not math.isfinite(value):
        return str(value)
    if value == int(value) and abs(value) < 1e15:
        return f"{int(value):,}"
    magnitude = abs(value)
    if magnitude >= 1000:
        return f"{value:,.0f}"
    if magnitude >= 0.001:
        digits = max(0, 2 - math.floor(math.log10(magnitude)))
        return f"{value:.{digits}f}"
    return f"{value:.3g}"


def _is_number(value: Any) -> bool:
    if value is None or isinstance(value, (bool, str, bytes)):
        return False
    try:
        float(value)
    except (TypeError, ValueError):
        return False
    return True
