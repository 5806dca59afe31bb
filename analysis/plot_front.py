"""The Pareto front of a study's stored trials, and the bits each searched group gets along it.

Writes into --out (default analysis/results/<study name>/):
  front.png       every complete trial, the uniform-precision points and the front (as `mpsearch front`)
  front_bits.png  each group's weight bits for the front trials, in order of modelled latency
  front.csv       the front trials in order of latency: metrics, per-group bits and methods
  trials.csv      every distinct complete trial, with an on_front column

    python analysis/plot_front.py --study studies/quickstart.yaml [--out DIR]
"""

from __future__ import annotations

import sys
from pathlib import Path

from _study_io import run_script, save_figure, write_csv

from mpsearch.config import StudyConfig


def front_by_latency(table):
    """The front rows in order of latency (then the first objective), whatever the objectives are."""
    order = ["latency_ms", *(o for o in table.objectives if o != "latency_ms"), "trial"]
    return table.front.sort_values(order, kind="stable").reset_index(drop=True)


def plot_front_bits(table, front, path: Path) -> None:
    import numpy as np
    import pandas as pd
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    groups = [c for c in table.group_columns if c.endswith(".weight_bits")]
    # A group whose bits were fixed but differ across its sites reads "4/8": no single number to plot.
    bits = np.array([pd.to_numeric(front[c], errors="coerce").to_numpy(dtype=float) for c in groups]).reshape(
        len(groups), len(front))
    fig = Figure(figsize=(max(6.0, 0.6 * len(front) + 3.0), max(3.0, 0.45 * len(groups) + 2.0)))
    FigureCanvasAgg(fig)
    ax = fig.subplots()
    finite = bits[np.isfinite(bits)]
    if bits.size:
        vmin, vmax = (finite.min(), finite.max()) if finite.size else (0.0, 8.0)
        image = ax.imshow(np.ma.masked_invalid(bits), aspect="auto", cmap="viridis", vmin=vmin, vmax=vmax)
        fig.colorbar(image, ax=ax, label="weight bits", ticks=sorted(set(finite.tolist())))
        for (i, j), value in np.ndenumerate(bits):
            bright = np.isfinite(value) and vmax > vmin and (value - vmin) / (vmax - vmin) > 0.6
            ax.text(j, i, "-" if np.isnan(value) else f"{value:g}", ha="center", va="center", fontsize=8,
                    color="black" if bright else "white")
    ax.set_yticks(range(len(groups)))
    ax.set_yticklabels([g.removesuffix(".weight_bits") for g in groups], fontsize=8)
    ax.set_xticks(range(len(front)))
    ax.set_xticklabels([f"#{int(t)}\n{lat:.4g} ms" for t, lat in zip(front["trial"], front["latency_ms"])],
                       fontsize=7)
    ax.set_xlabel("front trials, by modelled latency (trial number, latency)")
    ax.set_title(f"{table.study_name}: weight bits per group along the front", fontsize=9)
    fig.tight_layout()
    save_figure(fig, path)


def write_front_analysis(cfg: StudyConfig, folder: Path) -> list[Path]:
    from mpsearch.search.pareto import load_front_table
    from mpsearch.search.plot import plot_front

    table = load_front_table(cfg)
    front = front_by_latency(table)
    paths = [folder / "front.png", folder / "front_bits.png", folder / "front.csv", folder / "trials.csv"]
    plot_front(table, paths[0])
    plot_front_bits(table, front, paths[1])
    write_csv(front, paths[2])
    write_csv(table.frame, paths[3])
    return paths


def main(argv: list[str] | None = None) -> int:
    return run_script(__doc__, argv, write_front_analysis)


if __name__ == "__main__":
    sys.exit(main())
