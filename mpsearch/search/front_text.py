"""The front as text: the table `mpsearch front` prints (intervals folded into readable columns) and the
sentences on what the paired intervals against uniform 8-bit say."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

from mpsearch.search.pareto import INTERVAL_COLUMNS, UNIFORM_REFERENCE_ORIGIN, format_value

if TYPE_CHECKING:
    import pandas as pd

    from mpsearch.search.pareto import FrontTable


def format_front_table(table: FrontTable, rows: str = "front") -> str:
    """The table as text: `rows` is "front" (the front plus the uniform reference points) or "all"."""
    frame = table.frame
    if rows == "front":
        frame = frame[frame["on_front"] | frame["origin"].astype(str).str.startswith("uniform-")]
    shown = _with_intervals_as_text(frame.copy())
    shown["on_front"] = ["*" if v else "" for v in shown["on_front"]]
    formatters = {c: format_value for c in shown.columns if c not in ("trial", "origin", "on_front")}
    text = shown.to_string(index=False, formatters=formatters, na_rep="-")
    return text + "\n(* on the front)"


def _with_intervals_as_text(frame: pd.DataFrame) -> pd.DataFrame:
    """The interval columns folded into two readable ones: "wer_95ci" and "dwer_vs_u8 [95% CI]"."""
    if "wer_ci_low" in frame:
        position = list(frame.columns).index("wer_ci_low")
        frame.insert(position, "wer_95ci", [_bracket(lo, hi) for lo, hi in zip(frame["wer_ci_low"], frame["wer_ci_high"])])
    if "delta_wer_vs_u8" in frame:
        position = list(frame.columns).index("delta_wer_vs_u8")
        frame.insert(position, "dwer_vs_u8 [95% CI]",
                     [("-" if math.isnan(d) else f"{d:+.4f} " + _bracket(lo, hi))
                      for d, lo, hi in zip(frame["delta_wer_vs_u8"], frame["delta_ci_low"], frame["delta_ci_high"])])
    return frame.drop(columns=[c for c in INTERVAL_COLUMNS if c in frame])


def _bracket(low: float, high: float) -> str:
    return "-" if math.isnan(low) else f"[{low:.4f}, {high:.4f}]"


def not_worse_than_uniform8(frame: pd.DataFrame) -> list[int]:
    """Trials (other than uniform 8-bit itself) whose paired WER difference against uniform 8-bit is not
    significantly above zero: the upper end of its 95% interval is <= 0 or the interval contains 0."""
    if "delta_ci_high" not in frame:
        return []
    rows = frame[(frame["origin"] != UNIFORM_REFERENCE_ORIGIN) & frame["delta_ci_low"].notna()
                 & (frame["delta_ci_low"] <= 0)]
    return [int(n) for n in rows["trial"]]


def interval_summary(table: FrontTable) -> list[str]:
    """Sentences on what the intervals say about the front: which of its policies are not significantly
    worse than uniform 8-bit, and the WER difference the paired intervals resolve on this eval subset."""
    frame = table.frame
    if "delta_ci_high" not in frame or frame["delta_ci_high"].isna().all():
        return []
    lines = []
    reference = frame[frame["origin"] == UNIFORM_REFERENCE_ORIGIN]
    base = float(reference["wer"].iloc[0]) if len(reference) else math.nan
    others = frame[(frame["origin"] != UNIFORM_REFERENCE_ORIGIN) & frame["delta_ci_low"].notna()]
    if len(others):
        half = float(((others["delta_ci_high"] - others["delta_ci_low"]) / 2).median())
        relative = f" ({half / base:.0%} of uniform 8-bit's WER {base:.4f})" if base > 0 else ""
        lines.append(f"paired 95% intervals against uniform 8-bit are +/- {half:.4f} WER wide (median){relative}: "
                     "smaller differences are not resolved by this eval subset")
    front = set(table.front_numbers())
    fine = [n for n in not_worse_than_uniform8(frame) if n in front]
    if fine:
        labels = ", ".join(f"{n} ({frame.loc[frame['trial'] == n, 'origin'].iloc[0]})" for n in fine)
        lines.append(f"front trials not significantly worse than uniform 8-bit (paired 95% interval of the WER "
                     f"difference reaches 0 or below): {labels}")
    else:
        lines.append("every front trial other than uniform 8-bit is significantly worse than it (paired 95% "
                     "interval of the WER difference above 0)")
    return lines
