"""The report's figures: the front drawn so that noise does not read as shape, and the knee policy's
latency per site. Both draw on a bare Agg Figure, leaving pyplot's global state alone."""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from mpsearch.artifacts import atomic_path
from mpsearch.units import axis_unit, is_error_rate

if TYPE_CHECKING:
    from mpsearch.hardware.latency import LatencyReport
    from mpsearch.search.pareto import FrontTable

# An error-rate axis never spans less than this (3 points of WER): a front whose trials differ by a
# tenth of a point is flat, and a zoomed axis would draw that noise as a curve.
MIN_ERROR_SPAN = 0.03
AXIS_NAMES = {
    "wer": "WER (dev)",
    "cer": "CER (dev)",
    "perplexity": "perplexity",
    "latency_ms": "modelled latency per utterance",
    "size_bytes": "weight size",
    "avg_weight_bits": "average weight bits",
}


def front_axis_note(table: FrontTable) -> str | None:
    """What the front figure does to an error-rate axis whose trials barely differ; None when nothing."""
    for name in table.objectives[:2]:
        if not is_error_rate(name):
            continue
        low, high = _extent(table.frame, name)
        # Widened by a fifth or more: worth saying why the points sit in a band.
        if high - low < 0.8 * MIN_ERROR_SPAN:
            label = name.upper()
            return (f"The trials' {label}s{' and their intervals' if f'{name}_ci_low' in table.frame else ''} "
                    f"span only {100 * (high - low):.2f} points; the {label} axis is drawn "
                    f"{100 * MIN_ERROR_SPAN:g} points wide so that differences this small do not look like the "
                    "shape of a front.")
    return None


def plot_front(table: FrontTable, path: str | Path) -> None:
    """The first two objectives of every distinct complete trial, the front as a step line, uniform
    precision points labelled, 95% intervals as error bars where the table has them; legend outside."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    from mpsearch.search.pareto import non_dominated

    x_name, y_name = table.objectives[:2]
    frame = table.frame
    x_unit, y_unit = axis_unit(x_name, frame[x_name]), axis_unit(y_name, frame[y_name])
    fig = Figure(figsize=(8.0, 4.6), layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.subplots()

    def scaled(rows, name, unit):
        return rows[name].to_numpy(dtype=float) * unit.scale

    ax.scatter(scaled(frame, x_name, x_unit), scaled(frame, y_name, y_unit), s=18, color="0.6",
               label="complete trials", zorder=2)
    front = table.front
    fx, fy = scaled(front, x_name, x_unit), scaled(front, y_name, y_unit)
    errors = {n: _interval(front, n) for n in (x_name, y_name)}
    if any(e is not None for e in errors.values()):
        xerr, yerr = (None if errors[n] is None else errors[n] * u.scale
                      for n, u in ((x_name, x_unit), (y_name, y_unit)))
        ax.errorbar(fx, fy, xerr=xerr, yerr=yerr, fmt="none", ecolor="tab:blue", alpha=0.45, capsize=2,
                    linewidth=1, label="95% interval", zorder=2)
    ax.scatter(fx, fy, s=36, color="tab:blue", label="front", zorder=3)
    if len(front):
        points = np.column_stack([fx, fy])
        stairs = points[non_dominated(points)]
        stairs = stairs[np.lexsort((stairs[:, 1], stairs[:, 0]))]
        ax.step(stairs[:, 0], stairs[:, 1], where="post", color="tab:blue", linewidth=1.2, zorder=3)

    _set_limits(ax, frame, x_name, x_unit, "x")
    _set_limits(ax, frame, y_name, y_unit, "y")
    uniform = frame[frame["origin"].astype(str).str.startswith("uniform-")]
    if len(uniform):
        ux, uy = scaled(uniform, x_name, x_unit), scaled(uniform, y_name, y_unit)
        ax.scatter(ux, uy, s=60, marker="s", facecolors="none", edgecolors="tab:red", linewidths=1.5,
                   label="uniform precision", zorder=4)
        (x0, x1), (y0, y1) = ax.get_xlim(), ax.get_ylim()
        for x, y, origin in zip(ux, uy, uniform["origin"]):
            # Labels point into the plot, away from the nearer edges, so none is cut off.
            right = x > (x0 + x1) / 2
            top = y > (y0 + y1) / 2
            ax.annotate(f"{str(origin).removeprefix('uniform-')}-bit", (x, y), textcoords="offset points",
                        xytext=(-7 if right else 7, -9 if top else 5), ha="right" if right else "left",
                        fontsize=8, color="tab:red", annotation_clip=False)

    ax.set_xlabel(_axis_label(x_name, x_unit))
    ax.set_ylabel(_axis_label(y_name, y_unit))
    title = f"{table.study_name}: {len(front)} of {len(frame)} distinct points on the front"
    if len(table.objectives) > 2:
        title += f" (showing {x_name}, {y_name})"
    ax.set_title(title, fontsize=9)
    ax.grid(True, linewidth=0.3)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0.0, frameon=False)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)


def plot_latency(report: LatencyReport, path: str | Path) -> None:
    """Horizontal bars of each site's modelled time, coloured by what bounds it; legend above the bars."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.patches import Patch

    rows = report.rows
    times = np.array([r.time_us for r in rows], dtype=float)
    unit = axis_unit("time_us", times)
    fig = Figure(figsize=(8.0, 1.6 + 0.28 * len(rows)), layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.subplots()
    palette = ["tab:blue", "tab:orange", "tab:green", "tab:red", "tab:purple"]
    colours = {bound: palette[i % len(palette)] for i, bound in enumerate(dict.fromkeys(r.bound for r in rows))}
    ax.barh(range(len(rows)), times * unit.scale, color=[colours[r.bound] for r in rows])
    ax.set_yticks(range(len(rows)))
    ax.set_yticklabels([f"{r.name} ({r.weight_bits}b)" for r in rows], fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel(f"modelled time per utterance ({unit.symbol})")
    ax.set_title(f"{report.profile}: {report.latency_ms:.4g} ms in all", fontsize=9)
    handles = [Patch(color=colour, label=f"{bound}-bound") for bound, colour in colours.items()]
    ax.legend(handles=handles, fontsize=8, loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0.0,
              frameon=False)
    ax.grid(True, axis="x", linewidth=0.3)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)


def _interval(frame, name: str) -> np.ndarray | None:
    """Asymmetric error bars (2 x n) from `<name>_ci_low`/`<name>_ci_high`, or None without them."""
    low, high = f"{name}_ci_low", f"{name}_ci_high"
    if low not in frame or high not in frame or frame[low].isna().all():
        return None
    value = frame[name].to_numpy(dtype=float)
    below = np.nan_to_num(value - frame[low].to_numpy(dtype=float)).clip(min=0)
    above = np.nan_to_num(frame[high].to_numpy(dtype=float) - value).clip(min=0)
    return np.vstack([below, above])


def _extent(frame, name: str) -> tuple[float, float]:
    """The smallest and largest value of a column, its interval ends included."""
    columns = [c for c in (name, f"{name}_ci_low", f"{name}_ci_high") if c in frame]
    values = frame[columns].to_numpy(dtype=float).ravel()
    values = values[np.isfinite(values)]
    return (float(values.min()), float(values.max())) if len(values) else (math.nan, math.nan)


def _set_limits(ax, frame, name: str, unit, axis: str) -> None:
    if not is_error_rate(name):
        ax.margins(**{axis: 0.08})
        return
    low, high = _extent(frame, name)
    if not math.isfinite(low):
        return
    span = max(high - low, MIN_ERROR_SPAN)
    pad = 0.08 * span
    centre = (low + high) / 2
    start = max(0.0, centre - span / 2 - pad)
    limits = (start * unit.scale, (start + span + 2 * pad) * unit.scale)
    (ax.set_xlim if axis == "x" else ax.set_ylim)(*limits)


def _axis_label(name: str, unit) -> str:
    label = AXIS_NAMES.get(name, name)
    if not unit.symbol:
        return label
    return f"{label[:-1]}, {unit.symbol})" if label.endswith(")") else f"{label} ({unit.symbol})"
