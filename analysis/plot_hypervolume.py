"""How the search converged: the hypervolume of the non-dominated set after each complete trial.

Trials are taken in trial-number order; after each COMPLETE trial the front of all complete trials so
far is measured against the study's reference point (the one `mpsearch front` reports), so the last
row equals front.json's hypervolume.

Writes into --out (default analysis/results/<study name>/):
  hypervolume.png  hypervolume against trial number, each trial marked by its origin
  hypervolume.csv  one row per complete trial: trial, origin, the objectives, front_size, hypervolume

    python analysis/plot_hypervolume.py --study studies/quickstart.yaml [--out DIR]
"""

from __future__ import annotations

import math
import sys
from pathlib import Path

from _study_io import run_script, save_figure, write_csv

from mpsearch.config import StudyConfig


def hypervolume_history(table):
    """One row per complete trial, in trial order, with the hypervolume of everything up to it."""
    import numpy as np
    import pandas as pd
    from optuna.trial import TrialState

    from mpsearch.search.pareto import hypervolume, non_dominated

    complete = [t for _, t in sorted(table.trials.items()) if t.state == TrialState.COMPLETE]
    rows, points = [], []
    for trial in complete:
        values = [float(v) for v in trial.values]
        if all(math.isfinite(v) for v in values):
            points.append(values)
        front_size = int(non_dominated(np.array(points)).sum()) if points else 0
        rows.append({"trial": trial.number, "origin": trial.user_attrs.get("origin", ""),
                     **dict(zip(table.objectives, values)), "front_size": front_size,
                     "hypervolume": hypervolume(points, table.reference.values) if points else 0.0})
    return pd.DataFrame(rows, columns=["trial", "origin", *table.objectives, "front_size", "hypervolume"])


def plot_history(table, history, path: Path) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    fig = Figure(figsize=(7.5, 4.5))
    FigureCanvasAgg(fig)
    ax = fig.subplots()
    ax.step(history["trial"], history["hypervolume"], where="post", color="tab:blue", linewidth=1.2, zorder=2)
    # Warm starts (uniform, ILP, supernet) come first; the marker shows which trials moved the front.
    kinds = history["origin"].astype(str).str.replace(r"-.*$", "", regex=True)
    for kind, rows in history.groupby(kinds, sort=False):
        ax.scatter(rows["trial"], rows["hypervolume"], s=24, label=kind or "unknown", zorder=3)
    reference = table.reference.describe()
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("trial number")
    ax.set_ylabel("hypervolume of the front so far")
    ax.set_title(f"{table.study_name}: hypervolume after each complete trial\nreference point {reference}",
                 fontsize=9)
    ax.grid(True, linewidth=0.3)
    ax.legend(fontsize=8, title="trial origin", title_fontsize=8, loc="lower right")
    fig.tight_layout()
    save_figure(fig, path)


def write_hypervolume_analysis(cfg: StudyConfig, folder: Path) -> list[Path]:
    from mpsearch.search.pareto import load_front_table

    table = load_front_table(cfg)
    history = hypervolume_history(table)
    paths = [folder / "hypervolume.png", folder / "hypervolume.csv"]
    plot_history(table, history, paths[0])
    write_csv(history, paths[1])
    return paths


def main(argv: list[str] | None = None) -> int:
    return run_script(__doc__, argv, write_hypervolume_analysis)


if __name__ == "__main__":
    sys.exit(main())
