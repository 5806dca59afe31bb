"""Per-site sensitivity from the study's stored report (<study dir>/sensitivity.json): the Hessian trace
of each site with its standard error, and the Omega table (sites x bits, one panel per method).

Writes into --out (default analysis/results/<study name>/):
  sensitivity_traces.png  per-site Hessian trace with +-1 standard error bars
  omega_heatmap.png       Omega(site, bits) on a log colour scale; Omega 0 (a negative trace) in grey
  sensitivity.csv         one row per site: numel, trace, stderr, rel_stderr, probes, omega_<method>_<bits>

    python analysis/plot_sensitivity.py --study studies/quickstart.yaml [--out DIR]
"""

from __future__ import annotations

import sys
from pathlib import Path

from _study_io import run_script, save_figure, write_csv

from mpsearch.config import StudyConfig


def plot_omega(report, path: Path) -> None:
    import numpy as np
    from matplotlib import colormaps
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.colors import LogNorm
    from matplotlib.figure import Figure

    methods, bits, sites = report.methods, report.bits, report.sites
    fig = Figure(figsize=(2.2 + 1.0 * len(bits) * max(1, len(methods)), 1.5 + 0.32 * len(sites)),
                 layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, max(1, len(methods)), squeeze=False)[0]
    tables = {m: report.omega_for(m) for m in methods}
    values = np.array([[[tables[m].get(s, {}).get(b, np.nan) for b in bits] for s in sites] for m in methods])
    positive = values[np.isfinite(values) & (values > 0)]
    # Omega spans orders of magnitude across sites and bits; zeros (negative traces) cannot sit on a log scale.
    norm = LogNorm(vmin=positive.min(), vmax=positive.max()) if positive.size else None
    cmap = colormaps["magma_r"].with_extremes(bad="0.85")
    for ax, method, grid in zip(axes, methods, values):
        shown = np.ma.masked_where(~np.isfinite(grid) | (grid <= 0), grid)
        image = ax.imshow(shown, aspect="auto", cmap=cmap, norm=norm)
        for (i, j), value in np.ndenumerate(grid):
            dark = norm is not None and np.isfinite(value) and value > 0 and norm(value) > 0.6
            ax.text(j, i, "-" if not np.isfinite(value) else f"{value:.2g}", ha="center", va="center", fontsize=7,
                    color="white" if dark else "black")
        ax.set_xticks(range(len(bits)))
        ax.set_xticklabels([f"{b}-bit" for b in bits], fontsize=8)
        ax.set_yticks(range(len(sites)))
        ax.set_yticklabels(sites if ax is axes[0] else [], fontsize=8)
        ax.set_title(f"Omega, method {method}", fontsize=9)
    if norm is not None and len(methods):
        fig.colorbar(image, ax=list(axes), label="Omega = tr(H)/n x ||Q(W) - W||^2 (grey: 0)")
    fig.suptitle(f"{len(sites)} sites; Omega 0 marks a site scored insensitive (negative trace estimate)",
                 fontsize=8)
    save_figure(fig, path)


def write_sensitivity_analysis(cfg: StudyConfig, folder: Path) -> list[Path]:
    from mpsearch.report import sensitivity_frame
    from mpsearch.sensitivity.report import SensitivityReport, plot_traces
    from mpsearch.sensitivity.stage import REPORT_FILE

    report = SensitivityReport.load(cfg.study_dir / REPORT_FILE)
    paths = [folder / "sensitivity_traces.png", folder / "omega_heatmap.png", folder / "sensitivity.csv"]
    plot_traces(report, paths[0])
    plot_omega(report, paths[1])
    write_csv(sensitivity_frame(report), paths[2])
    return paths


def main(argv: list[str] | None = None) -> int:
    return run_script(__doc__, argv, write_sensitivity_analysis)


if __name__ == "__main__":
    sys.exit(main())
