"""QAT methods and sparsity side by side on one float baseline: WER (dev, test) and weight bytes.

Every row starts from the same float baseline and gets the same fine-tune budget (--steps, with the
methods' schedules from `mpsearch.quant.methods.hooks.training_hooks`):

- uniform, lsq, gq, s8bqat, admm at 8, 6, 4, 3, 2 weight bits;
- csp and magnitude at 50% and 75% sparsity, 2:4 (50%) and 1:4 (75%), each on 8-bit uniform weights.

Weights only (act_bits null unless --act-bits), every site the same config. Size is the weight storage
`mpsearch.hardware.latency` models on the profile (nna-int8: b-bit weights, bitmask sparse format).
Rows are appended to the CSV as they finish and rows already in it are skipped, so a killed run resumes.

    python analysis/compare_methods.py --study studies/quickstart.yaml --steps 300 \
        --out analysis/results/compare_methods.csv

The study's float baseline must exist (`mpsearch train STUDY.yaml`), unless --train-baseline.
"""

from __future__ import annotations

import argparse
import csv
import io
import logging
import math
import re
import sys
import time
from pathlib import Path

import torch

from mpsearch.artifacts import write_text
from mpsearch.config import StudyConfig
from mpsearch.hardware import latency
from mpsearch.quant import Policy, QuantConfig, apply, find_sites
from mpsearch.quant.methods.hooks import training_hooks
from mpsearch.study import Study
from mpsearch.training.trainer import train

METHODS = ("uniform", "lsq", "gq", "s8bqat", "admm")
BITS = (8, 6, 4, 3, 2)
SPARSITIES = (("csp-50", {"method": "csp", "fraction": 0.5}), ("csp-75", {"method": "csp", "fraction": 0.75}),
              ("magnitude-50", {"method": "magnitude", "fraction": 0.5}),
              ("magnitude-75", {"method": "magnitude", "fraction": 0.75}),
              ("nm-2:4", "2:4"), ("nm-1:4", "1:4"))
COLUMNS = ("row", "method", "bits", "sparsity", "density", "dev_wer", "dev_cer", "test_wer", "test_cer",
           "size_bytes", "avg_weight_bits", "steps", "train_seconds", "final_loss")


def rows(act_bits: int | None) -> list[tuple[str, QuantConfig | None]]:
    """(label, config) of every row; the float baseline first (config None)."""
    table: list[tuple[str, QuantConfig | None]] = [("float", None)]
    for method in METHODS:
        for bits in BITS:
            cfg = QuantConfig(weight_bits=bits, act_bits=act_bits, method=method)
            table.append((f"{method}-w{bits}", cfg))
    for label, sparsity in SPARSITIES:
        table.append((f"{label}-w8", QuantConfig(weight_bits=8, act_bits=act_bits, sparsity=sparsity)))
    return table


def read_done(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def write_rows(path: Path, table: list[dict]) -> None:
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=COLUMNS)
    writer.writeheader()
    writer.writerows(table)
    write_text(path, out.getvalue())


def fine_tune(study: Study, baseline: torch.nn.Module, cfg: QuantConfig, steps: int, lr: float,
              threads: int) -> tuple[dict, dict, float, float]:
    """Apply `cfg` everywhere, fine-tune `steps` steps with the method hooks, evaluate dev and test."""
    model = apply(baseline, Policy.uniform(cfg))
    task = study.task(model)
    train_cfg = study.cfg.train.model_copy(update={
        "max_steps": steps, "max_minutes": None, "lr": lr,
        "warmup_steps": min(study.cfg.train.warmup_steps, steps // 10),
        "eval_every": steps + 1, "checkpoint_every": steps + 1, "threads": threads})
    result = train(task, train_cfg, training_hooks(model, steps), progress=False)
    return task.evaluate("dev"), task.evaluate("test"), result.seconds, result.final_loss


def format_table(table: list[dict]) -> str:
    shown = ("row", "dev_wer", "test_wer", "dev_cer", "size_bytes", "avg_weight_bits", "train_seconds")
    lines = [f"{shown[0]:<16}" + "".join(f"{c:>16}" for c in shown[1:])]
    for r in table:
        cells = []
        for c in shown[1:]:
            value = float(r[c])
            cells.append(f"{value:>16.4f}" if c.endswith(("wer", "cer")) else f"{value:>16.1f}"
                         if c != "size_bytes" else f"{int(value):>16d}")
        lines.append(f"{r['row']:<16}" + "".join(cells))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--study", default="studies/quickstart.yaml", help="study YAML (baseline reused)")
    parser.add_argument("--steps", type=int, default=300, help="fine-tune steps per row")
    parser.add_argument("--lr", type=float, default=None, help="fine-tune lr (default: study lr / 4)")
    parser.add_argument("--act-bits", type=int, default=None, help="activation bits (default: weights only)")
    parser.add_argument("--profile", default="nna-int8", help="hardware profile for the weight bytes")
    parser.add_argument("--only", default=None, help="regular expression: run only the rows it matches")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (the machine is shared)")
    parser.add_argument("--out", default="analysis/results/compare_methods.csv")
    parser.add_argument("--train-baseline", action="store_true", help="train the float baseline if missing")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s: %(message)s")
    torch.set_num_threads(args.threads)

    study = Study(StudyConfig.from_yaml(args.study), progress=False)
    if not (study.baseline_dir / "model.pt").is_file() and not args.train_baseline:
        print(f"error: no float baseline in {study.baseline_dir}; run `mpsearch train {args.study}` first "
              "or pass --train-baseline.", file=sys.stderr)
        return 2
    baseline, metrics = study.baseline()
    sites = find_sites(baseline)
    lr = args.lr if args.lr is not None else study.cfg.train.lr / 4
    out = Path(args.out)
    table = read_done(out)
    done = {r["row"] for r in table}
    for label, cfg in rows(args.act_bits):
        if label in done or (args.only and not re.search(args.only, label)):
            continue
        start = time.monotonic()
        if cfg is None:
            dev, test, seconds, loss = metrics["dev"], metrics["test"], 0.0, math.nan
            size = sum(s.numel for s in sites) * 4  # float32 weights (the chip cannot run them)
            avg_bits, steps = 32.0, 0
        else:
            torch.manual_seed(study.cfg.train.seed)
            dev, test, seconds, loss = fine_tune(study, baseline, cfg, args.steps, lr, args.threads)
            report = latency(sites, Policy.uniform(cfg), args.profile)
            size, avg_bits, steps = report.memory_bytes, report.avg_weight_bits, args.steps
        sparsity = cfg.sparsity if cfg is not None else None
        table.append({
            "row": label, "method": cfg.method if cfg else "float", "bits": cfg.weight_bits if cfg else 32,
            "sparsity": "" if sparsity is None else (f"{sparsity.n}:{sparsity.m}" if sparsity.method == "nm"
                                                     else f"{sparsity.method}:{sparsity.fraction}"),
            "density": 1.0 if sparsity is None else sparsity.density,
            "dev_wer": dev["wer"], "dev_cer": dev["cer"], "test_wer": test["wer"], "test_cer": test["cer"],
            "size_bytes": size, "avg_weight_bits": avg_bits, "steps": steps,
            "train_seconds": round(seconds, 1), "final_loss": loss})
        write_rows(out, table)
        print(f"{label}: dev WER {dev['wer']:.4f}, test WER {test['wer']:.4f}, {size} bytes "
              f"({time.monotonic() - start:.0f} s)", flush=True)
    print(format_table(table))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
