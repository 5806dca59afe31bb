"""The method comparison as figures: dev and test WER (with 95% intervals where the CSV has them) against
weight size for every quantization method (one line per method over its bit widths) and every sparsity
row, from the CSV that `analysis/compare_methods.py` writes; and, beside it (`<out>-loss.png`), every
row's training loss per step from the CSV's `.details.json`, to see whether the fine-tune had flattened.

    python analysis/plot_methods.py --csv analysis/results/compare_methods.csv --out analysis/results/methods.png
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def plot_methods(csv_path: Path, out: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import pandas as pd

    rows = pd.read_csv(csv_path)
    float_row = rows[rows["method"] == "float"]
    quantized = rows[(rows["method"] != "float") & rows["sparsity"].isna()]
    sparse = rows[rows["sparsity"].notna()]
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2), sharey=True)
    for ax, split in zip(axes, ("dev", "test")):
        column = f"{split}_wer"
        for method, group in quantized.groupby("method", sort=False):
            group = group.sort_values("size_bytes")
            low, high = ("wer_ci_low", "wer_ci_high") if split == "dev" else ("test_wer_ci_low", "test_wer_ci_high")
            errors = None
            if low in group and group[low].notna().all():
                errors = [100 * (group[column] - group[low]), 100 * (group[high] - group[column])]
            ax.errorbar(group["size_bytes"] / 1024, 100 * group[column], yerr=errors, marker="o", capsize=2,
                        label=method)
            for _, row in group.iterrows():
                ax.annotate(f"{int(row['bits'])}", (row["size_bytes"] / 1024, 100 * row[column]),
                            textcoords="offset points", xytext=(3, 3), fontsize=7)
        if len(sparse):
            ax.scatter(sparse["size_bytes"] / 1024, 100 * sparse[column], marker="x", color="black",
                       label="8-bit + sparsity", zorder=3)
            for _, row in sparse.iterrows():
                ax.annotate(str(row["row"]), (row["size_bytes"] / 1024, 100 * row[column]),
                            textcoords="offset points", xytext=(3, -9), fontsize=6)
        if len(float_row):
            ax.axhline(100 * float_row[column].iloc[0], color="grey", linestyle="--", linewidth=1, label="float")
        ax.set_xlabel("weight storage (KiB)")
        ax.set_title(f"{split} WER")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("WER (%)")
    axes[1].legend(fontsize=8)
    fig.suptitle(f"methods compared on one baseline ({csv_path.name}); labels: weight bits")
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=120)
    plt.close(fig)
    details = csv_path.with_suffix(".details.json")
    if details.is_file():
        plot_losses(details, out.with_name(f"{out.stem}-loss{out.suffix}"))
    return out


def plot_losses(details_path: Path, out: Path) -> Path:
    """Each row's per-step training loss (a moving mean over a tenth of the steps), one panel per method."""
    import json

    import matplotlib.pyplot as plt
    import numpy as np

    details = {row: d for row, d in json.loads(details_path.read_text()).items() if d.get("loss")}
    methods = sorted({row.rsplit("-w", 1)[0].split("-")[0] for row in details})
    fig, axes = plt.subplots(1, max(1, len(methods)), figsize=(3.2 * max(1, len(methods)), 3.2), sharey=True,
                             squeeze=False)
    for ax, method in zip(axes[0], methods):
        for row, d in details.items():
            if row.split("-")[0] != method:
                continue
            loss = np.asarray(d["loss"], dtype=float)
            window = max(1, len(loss) // 10)
            smooth = np.convolve(loss, np.ones(window) / window, mode="valid")
            ax.plot(np.arange(len(smooth)) + window, smooth, linewidth=1, label=row.split("-", 1)[1])
        ax.set_title(method)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=6)
    axes[0][0].set_ylabel("training loss")
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--csv", required=True, help="a CSV written by analysis/compare_methods.py")
    parser.add_argument("--out", required=True, help="the PNG to write")
    args = parser.parse_args(argv)
    if not Path(args.csv).is_file():
        print(f"error: '{args.csv}' does not exist; run analysis/compare_methods.py first.", file=sys.stderr)
        return 2
    print(f"wrote {plot_methods(Path(args.csv), Path(args.out))}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
