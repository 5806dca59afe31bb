"""QAT methods and sparsity side by side on one float baseline: WER (dev, test) with 95% intervals, the
paired difference against the strong uniform baseline at the same bits, weight bytes and loss curves.

Every row starts from the same float baseline and gets the same fine-tune budget (--steps, with the
methods' schedules from `mpsearch.quant.methods.hooks.training_hooks`):

- uniform (MSE-fitted per-channel scale), lsq, gq, s8bqat, admm at 8, 6, 5, 4, 3, 2 weight bits;
- csp, magnitude and regrow at 50%, 75% and 90% sparsity, 2:4 (50%) and 1:4 (75%), on 8-bit uniform weights.

Weights only (act_bits null unless --act-bits), every site the same config. Size is the weight storage
`mpsearch.hardware.latency` models on the profile (nna-int8: b-bit weights, bitmask sparse format, a
codebook's centroids). Intervals are percentile bootstraps over utterances (mpsearch.eval.bootstrap);
`delta_wer` is the row's dev WER minus `uniform` at the same bits (8-bit uniform for the sparsity rows),
on the same utterances, with its paired 95% interval (`delta_ci_low`, `delta_ci_high`): a method differs
from uniform only where that interval excludes 0. `loss_drop_last_quarter` is how much the smoothed
training loss still fell over the last quarter of the steps, relative to its value there (near 0: the
loss has flattened); the per-step losses and per-utterance errors go to `<out>.details.json`, which
`analysis/plot_methods.py` draws. Rows are appended as they finish and rows already in the CSV are
skipped, so a killed run resumes.

    python analysis/compare_methods.py --study studies/quickstart.yaml --steps 300 \
        --out analysis/results/compare_methods.csv

The study's float baseline must exist (`mpsearch train STUDY.yaml`, or a `baseline.checkpoint`), unless
--train-baseline.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
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
BITS = (8, 6, 5, 4, 3, 2)
SPARSITIES = tuple((f"{method}-{int(100 * fraction)}", {"method": method, "fraction": fraction})
                   for method in ("csp", "magnitude", "regrow") for fraction in (0.5, 0.75, 0.9)
                   ) + (("nm-2:4", "2:4"), ("nm-1:4", "1:4"))
COLUMNS = ("row", "method", "bits", "sparsity", "density", "dev_wer", "wer_ci_low", "wer_ci_high", "delta_wer",
           "delta_ci_low", "delta_ci_high", "dev_cer", "test_wer", "test_wer_ci_low", "test_wer_ci_high",
           "test_cer", "size_bytes", "avg_weight_bits", "steps", "train_seconds", "final_loss",
           "loss_drop_last_quarter")


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


class LossRecorder:
    """The task, with each training batch's loss kept (the task loss, before any method's penalty)."""

    def __init__(self, task):
        self.task, self.model, self.losses = task, task.model, []

    def loss(self, batch):
        value = self.task.loss(batch)
        self.losses.append(float(value.detach()))
        return value

    def train_batches(self, seed):
        return self.task.train_batches(seed)

    def evaluate(self, split):
        return self.task.evaluate(split)


def fine_tune(study: Study, baseline: torch.nn.Module, cfg: QuantConfig, steps: int, lr: float,
              threads: int) -> tuple[torch.nn.Module, list[float], float, float]:
    """Apply `cfg` everywhere and fine-tune `steps` steps with the method hooks; returns the model, the
    per-step task losses, the seconds and the final smoothed loss."""
    model = apply(baseline, Policy.uniform(cfg))
    task = LossRecorder(study.task(model))
    train_cfg = study.cfg.train.model_copy(update={
        "max_steps": steps, "max_minutes": None, "lr": lr,
        "warmup_steps": min(study.cfg.train.warmup_steps, steps // 10),
        "eval_every": steps + 1, "checkpoint_every": steps + 1, "threads": threads})
    result = train(task, train_cfg, training_hooks(model, steps), progress=False)
    return model, task.losses, result.seconds, result.final_loss


def score(study: Study, model: torch.nn.Module, split: str) -> dict:
    """WER and CER of `split`, the WER's 95% interval and the per-utterance errors behind it."""
    from mpsearch.eval.bootstrap import wer_interval
    from mpsearch.eval.wer import error_rates, utterance_errors

    refs, hyps = study.task(model, augment=False).transcribe(study.data.split(split))
    errors, words = utterance_errors(refs, hyps)
    interval = wer_interval(errors, words)
    return {**error_rates(refs, hyps), "ci_low": interval.low, "ci_high": interval.high, "errors": errors,
            "words": words}


def loss_drop(losses: list[float]) -> float:
    """How much the loss (mean of each tenth of the steps) fell over the last quarter, relative."""
    if len(losses) < 8:
        return math.nan
    tenth = max(1, len(losses) // 10)
    late = sum(losses[-tenth:]) / tenth
    at = len(losses) * 3 // 4
    before = sum(losses[at - tenth // 2:at + (tenth + 1) // 2]) / tenth
    return (before - late) / abs(before) if before else math.nan


def reference_row(row: dict) -> str | None:
    """The uniform row a CSV row is compared with: the same bits, 8-bit for the sparsity rows."""
    if row["method"] == "float":
        return None
    return f"uniform-w{8 if row['sparsity'] else int(row['bits'])}"


def paired(details: dict, row: str, reference: str | None) -> tuple[float, float, float]:
    from mpsearch.eval.bootstrap import paired_delta

    if reference is None or reference not in details or row not in details:
        return math.nan, math.nan, math.nan
    a, b = details[row]["dev"], details[reference]["dev"]
    delta = paired_delta(a["errors"], b["errors"], a["words"])
    return delta.value, delta.low, delta.high


def format_table(table: list[dict]) -> str:
    shown = ("row", "dev_wer", "delta_wer", "test_wer", "dev_cer", "size_bytes", "avg_weight_bits", "train_seconds")
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
    if study.checkpoint_path is None and not (study.baseline_dir / "model.pt").is_file() and not args.train_baseline:
        print(f"error: no float baseline in {study.baseline_dir}; run `mpsearch train {args.study}` first "
              "or pass --train-baseline.", file=sys.stderr)
        return 2
    baseline, _ = study.baseline()
    sites = find_sites(baseline)
    lr = args.lr if args.lr is not None else study.cfg.train.lr / 4
    out = Path(args.out)
    details_path = out.with_suffix(".details.json")
    table = read_done(out)
    details = json.loads(details_path.read_text()) if details_path.is_file() else {}
    done = {r["row"] for r in table}
    for label, cfg in rows(args.act_bits):
        if label in done or (args.only and not re.search(args.only, label)):
            continue
        start = time.monotonic()
        if cfg is None:
            model, losses, seconds, loss = baseline, [], 0.0, math.nan
            size = sum(s.numel for s in sites) * 4  # float32 weights (the chip cannot run them)
            avg_bits, steps = 32.0, 0
        else:
            torch.manual_seed(study.cfg.train.seed)
            model, losses, seconds, loss = fine_tune(study, baseline, cfg, args.steps, lr, args.threads)
            report = latency(sites, Policy.uniform(cfg), args.profile)
            size, avg_bits, steps = report.memory_bytes, report.avg_weight_bits, args.steps
        dev, test = score(study, model, "dev"), score(study, model, "test")
        details[label] = {"loss": [round(v, 4) for v in losses],
                          **{split: {"errors": r["errors"], "words": r["words"]} for split, r in
                             (("dev", dev), ("test", test))}}
        write_text(details_path, json.dumps(details))
        sparsity = cfg.sparsity if cfg is not None else None
        row = {
            "row": label, "method": cfg.method if cfg else "float", "bits": cfg.weight_bits if cfg else 32,
            "sparsity": "" if sparsity is None else (f"{sparsity.n}:{sparsity.m}" if sparsity.method == "nm"
                                                     else f"{sparsity.method}:{sparsity.fraction}"),
            "density": 1.0 if sparsity is None else sparsity.density,
            "dev_wer": dev["wer"], "wer_ci_low": dev["ci_low"], "wer_ci_high": dev["ci_high"],
            "dev_cer": dev["cer"], "test_wer": test["wer"], "test_wer_ci_low": test["ci_low"],
            "test_wer_ci_high": test["ci_high"], "test_cer": test["cer"], "size_bytes": size,
            "avg_weight_bits": avg_bits, "steps": steps, "train_seconds": round(seconds, 1), "final_loss": loss,
            "loss_drop_last_quarter": loss_drop(losses)}
        table.append(row)
        # every row's paired delta, so a uniform row finishing after the rows compared with it fills theirs
        for each in table:
            each["delta_wer"], each["delta_ci_low"], each["delta_ci_high"] = paired(details, each["row"],
                                                                                   reference_row(each))
        delta = (row["delta_wer"], row["delta_ci_low"], row["delta_ci_high"])
        write_rows(out, table)
        print(f"{label}: dev WER {dev['wer']:.4f} [{dev['ci_low']:.4f}, {dev['ci_high']:.4f}], "
              f"vs uniform {delta[0]:+.4f} [{delta[1]:+.4f}, {delta[2]:+.4f}], test WER {test['wer']:.4f}, "
              f"{size} bytes ({time.monotonic() - start:.0f} s)", flush=True)
    print(format_table(table))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
