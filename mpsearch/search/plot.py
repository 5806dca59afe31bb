"""front.png: every complete trial, the uniform-precision points labelled with their bits, and the front
as a step line, in the first two objectives."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from mpsearch.artifacts import atomic_path
from mpsearch.search.pareto import non_dominated

if TYPE_CHECKING:
    from mpsearch.search.pareto import FrontTable

AXIS_LABELS = {
    "wer": "WER (dev)",
    "cer": "CER (dev)",
    "perplexity": "perplexity",
    "latency_ms": "modelled latency (ms per utterance)",
    "size_bytes": "weight size (bytes)",
    "avg_weight_bits": "average weight bits",
}


def plot_front(table: FrontTable, path: str | Path) -> None:
    """Write the front of `table` to `path` (PNG); with more than two objectives, the first two are drawn
    and the front trials of all objectives are highlighted."""
    # A bare Figure on the Agg canvas leaves pyplot's global backend and figure list alone.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    x_name, y_name = table.objectives[:2]
    frame = table.frame
    fig = Figure(figsize=(7.5, 5.0))
    FigureCanvasAgg(fig)
    ax = fig.subplots()
    ax.scatter(frame[x_name], frame[y_name], s=18, color="0.65", label="complete trials", zorder=2)

    front = table.front
    ax.scatter(front[x_name], front[y_name], s=36, color="tab:blue", label="front", zorder=3)
    # The staircase joins the points no other point beats in the two drawn objectives.
    drawn = front[[x_name, y_name]].to_numpy(dtype=float)
    if len(drawn):
        stairs = drawn[non_dominated(drawn)]
        stairs = stairs[np.lexsort((stairs[:, 1], stairs[:, 0]))]
        ax.step(stairs[:, 0], stairs[:, 1], where="post", color="tab:blue", linewidth=1.2, zorder=3)

    # 95% bootstrap intervals of the error rate, so that differences inside the noise look like it
    for axis, name in (("x", x_name), ("y", y_name)):
        if f"{name}_ci_low" in frame and frame[f"{name}_ci_low"].notna().any():
            shown = frame[frame["on_front"] | frame["origin"].astype(str).str.startswith("uniform-")]
            err = np.vstack([shown[name] - shown[f"{name}_ci_low"], shown[f"{name}_ci_high"] - shown[name]])
            err = np.nan_to_num(np.clip(err, 0, None))
            ax.errorbar(shown[x_name], shown[y_name], **{f"{axis}err": err}, fmt="none", ecolor="tab:blue",
                        elinewidth=0.8, capsize=2, alpha=0.7, zorder=2.5, label="95% interval")

    uniform = frame[frame["origin"].astype(str).str.startswith("uniform-")]
    if len(uniform):
        ax.scatter(uniform[x_name], uniform[y_name], s=60, marker="s", facecolors="none",
                   edgecolors="tab:red", linewidths=1.5, label="uniform precision", zorder=4)
        for _, row in uniform.iterrows():
            bits = str(row["origin"]).removeprefix("uniform-")
            ax.annotate(f"{bits}-bit", (row[x_name], row[y_name]), textcoords="offset points", xytext=(6, 4),
                        fontsize=8, color="tab:red")

    ax.set_xlabel(AXIS_LABELS.get(x_name, x_name))
    ax.set_ylabel(AXIS_LABELS.get(y_name, y_name))
    reference = ", ".join(f"{o}={v:.4g}" for o, v in table.reference.as_dict().items())
    title = (f"{table.study_name}: {len(front)} of {len(frame)} points on the front, hypervolume "
             f"{table.hypervolume:.4g}\nreference point ({reference})")
    if len(table.objectives) > 2:
        title += f"; showing {x_name} and {y_name}"
    ax.set_title(title, fontsize=9)
    ax.grid(True, linewidth=0.3)
    _pad_error_axis(ax, x_name, "x")
    _pad_error_axis(ax, y_name, "y")
    # below the axes, never over the points
    ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.14), ncol=4, frameon=False)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=120)


MIN_ERROR_SPAN = 0.02  # an error-rate axis spans at least 2 points: a 0.001 spread is not a shape


def _pad_error_axis(ax, name: str, axis: str) -> None:
    if name not in ("wer", "cer"):
        return
    low, high = ax.get_xlim() if axis == "x" else ax.get_ylim()
    if high - low < MIN_ERROR_SPAN:
        middle = (low + high) / 2
        low, high = max(0.0, middle - MIN_ERROR_SPAN / 2), max(0.0, middle - MIN_ERROR_SPAN / 2) + MIN_ERROR_SPAN
        (ax.set_xlim if axis == "x" else ax.set_ylim)(low, high)
