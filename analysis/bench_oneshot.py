"""One-shot trials against fine-tuned trials on the same random policies, measured side by side in one run.

For a study (default the quickstart: the shipped trained RNN-T, its search space and NNA emulation):
  1. trains one-shot shared weights (`mpsearch.supernet.oneshot`) for each --shared STEPS:LR variant
     (default: the study's own, `search.shared_training`), timed;
  2. draws --policies random points of the search space (seeded, uniform per choice set);
  3. scores each point on the study's eval split (its `search.eval_utterances` subset):
       finetuned: the study's own trial (calibrate + `search.finetune` QAT + dev and test scoring), timed;
       oneshot:   each variant's shared weights, calibrated under the policy and scored on dev, no
                  fine-tune, timed;
       ptq:       the float baseline's weights, calibrated and scored the same way (the free reference
                  the one-shot weights must beat);
  4. prints, per variant, Kendall's tau of its one-shot WER against finetuned WER (with a 95% bootstrap
     interval over the policies) and scored policies per hour for a 100-trial study against fine-tuned
     trials: with the fine-tuned confirmation of --front-size front policies (what a one-shot study
     pays) and without it (the shared training and the trials alone).

    python analysis/bench_oneshot.py --policies 20 --shared 150:2e-4 --shared 45:1e-4 --out analysis/results/bench_oneshot.json
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch
from scipy.stats import kendalltau

from mpsearch.config import StudyConfig
from mpsearch.eval.bootstrap import wer_interval
from mpsearch.eval.wer import error_rates, utterance_errors
from mpsearch.study import Study
from mpsearch.supernet.network import choice_sets
from mpsearch.supernet.oneshot import train_shared_weights


def random_points(space, count: int, seed: int) -> list[dict]:
    rng = np.random.default_rng(seed)
    sets = choice_sets(space)
    points = []
    while len(points) < count:
        params = {}
        for cs in sets:
            params.update(cs.params(int(rng.integers(len(cs.choices)))))
        if params not in points:
            points.append(params)
    return points


def kendall_tau_interval(x: list[float], y: list[float], seed: int = 0, draws: int = 2000) -> tuple[float, float]:
    """A 95% percentile-bootstrap interval of Kendall's tau, resampling the policies."""
    rng = np.random.default_rng(seed)
    x, y = np.asarray(x), np.asarray(y)
    taus = []
    for _ in range(draws):
        pick = rng.integers(len(x), size=len(x))
        tau = kendalltau(x[pick], y[pick]).statistic
        if np.isfinite(tau):
            taus.append(tau)
    return float(np.percentile(taus, 2.5)), float(np.percentile(taus, 97.5))


def parse_variant(text: str) -> tuple[int, float]:
    try:
        steps, lr = text.split(":")
        return int(steps), float(lr)
    except ValueError:
        raise argparse.ArgumentTypeError(f"'{text}' is not STEPS:LR (e.g. 150:2e-4)") from None


def dev_wer(study: Study, model: torch.nn.Module) -> dict:
    """WER with its interval on the study's eval subset, as a trial scores it (dev only)."""
    cfg = study.cfg.search
    task = study.task(model, augment=False)
    subset = study.data.split(cfg.eval_split).subset(cfg.eval_utterances, seed=cfg.seed)
    refs, hyps = task.transcribe(subset)
    errors, words = utterance_errors(refs, hyps)
    interval = wer_interval(errors, words)
    return {"wer": error_rates(refs, hyps)["wer"], "wer_ci_low": interval.low, "wer_ci_high": interval.high}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--study", default="studies/quickstart.yaml")
    parser.add_argument("--policies", type=int, default=20)
    parser.add_argument("--shared", type=parse_variant, action="append", metavar="STEPS:LR",
                        help="a shared training to compare (repeatable); default the study's own")
    parser.add_argument("--random-policies", type=int, help="random policies per step beside the sandwich's two "
                                                            "(default the study's search.oneshot.random_policies)")
    parser.add_argument("--front-size", type=int, default=8, help="front policies confirmed by a fine-tuned trial")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()

    cfg = StudyConfig.from_yaml(args.study)
    study = Study(cfg, progress=False)
    runner = study.trial_runner()
    space = study.search_space()
    points = random_points(space, args.policies, args.seed)
    oneshot = cfg.search.oneshot
    random_policies = oneshot.random_policies if args.random_policies is None else args.random_policies
    own = cfg.search.shared_training
    variants = args.shared or [(own.max_steps, own.lr)]

    float_model, _ = study.baseline()
    shared = []
    for steps, lr in variants:
        name = f"{steps}:{lr:g}"
        train_cfg = own.model_copy(update={"max_steps": steps, "lr": lr, "warmup_steps": min(own.warmup_steps, steps)})
        start = time.monotonic()
        state, result = train_shared_weights(float_model, space, lambda m: study.task(m, augment=train_cfg.augment),
                                             train_cfg, random_policies)
        seconds = time.monotonic() - start
        print(f"shared weights {name}: {result.steps} steps in {seconds:.0f} s, final loss {result.final_loss:.3f}",
              flush=True)
        model = study.new_model()
        model.load_state_dict(state)
        shared.append({"name": name, "steps": result.steps, "lr": lr, "augment": train_cfg.augment,
                       "seconds": seconds, "model": model.eval()})

    rows = []
    for i, params in enumerate(points):
        policy = space.to_policy(params)
        hardware = runner.hardware_metrics(policy)
        t0 = time.monotonic()
        finetuned = runner.run(policy)
        t1 = time.monotonic()
        row = {"params": params, "avg_weight_bits": hardware["avg_weight_bits"], "latency_ms": hardware["latency_ms"],
               "finetuned_wer": finetuned["wer"], "finetuned_seconds": t1 - t0, "oneshot": {}}
        for variant in shared:
            t2 = time.monotonic()
            scored = dev_wer(study, runner.quantized_model(policy, variant["model"]))
            row["oneshot"][variant["name"]] = {"wer": scored["wer"], "ci": [scored["wer_ci_low"], scored["wer_ci_high"]],
                                               "seconds": time.monotonic() - t2}
        row["ptq_wer"] = dev_wer(study, runner.quantized_model(policy))["wer"]
        rows.append(row)
        shown = "  ".join(f"oneshot {n} {r['wer']:.4f} ({r['seconds']:.0f} s)" for n, r in row["oneshot"].items())
        print(f"[{i + 1}/{len(points)}] {hardware['avg_weight_bits']:.2f} bits: finetuned {finetuned['wer']:.4f} "
              f"({t1 - t0:.0f} s)  {shown}  ptq {row['ptq_wer']:.4f}", flush=True)

    ft = [r["finetuned_wer"] for r in rows]
    t_ft = float(np.mean([r["finetuned_seconds"] for r in rows]))
    finetune_hours = 100 * t_ft / 3600
    ptq = [r["ptq_wer"] for r in rows]
    summary = {
        "command": " ".join([os.path.basename(sys.executable)] + sys.argv),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, torch threads {torch.get_num_threads()}",
        "study": cfg.name, "policies": len(rows), "random_policies": random_policies, "front_size": args.front_size,
        "finetuned_trial_seconds": t_ft, "policies_per_hour_finetune": 100 / finetune_hours,
        "kendall_tau_ptq_vs_finetuned": kendalltau(ptq, ft).statistic,
        "kendall_tau_ptq_ci": kendall_tau_interval(ptq, ft),
        "mean_finetuned_wer": float(np.mean(ft)), "mean_ptq_wer": float(np.mean(ptq)),
        "variants": [],
        "rows": rows,
    }
    print(f"{len(rows)} policies; fine-tuned trial {t_ft:.1f} s, a 100-trial study {finetune_hours * 60:.1f} min; "
          f"Kendall tau of PTQ of the float weights vs fine-tuned WER {summary['kendall_tau_ptq_vs_finetuned']:.3f}")
    for variant in shared:
        scored = [r["oneshot"][variant["name"]] for r in rows]
        wers = [r["wer"] for r in scored]
        t_os = float(np.mean([r["seconds"] for r in scored]))
        trials_hours = (variant["seconds"] + 100 * t_os) / 3600
        study_hours = trials_hours + args.front_size * t_ft / 3600
        result = {"name": variant["name"], "shared_steps": variant["steps"], "shared_lr": variant["lr"],
                  "augment": variant["augment"], "shared_seconds": variant["seconds"],
                  "kendall_tau_oneshot_vs_finetuned": kendalltau(wers, ft).statistic,
                  "kendall_tau_ci": kendall_tau_interval(wers, ft), "mean_oneshot_wer": float(np.mean(wers)),
                  "oneshot_trial_seconds": t_os, "policies_per_hour_oneshot": 100 / study_hours,
                  "speedup_100_trials": finetune_hours / study_hours,
                  "speedup_100_trials_without_confirmation": finetune_hours / trials_hours}
        summary["variants"].append(result)
        low, high = result["kendall_tau_ci"]
        print(f"shared {variant['name']} ({variant['seconds'] / 60:.1f} min): Kendall tau vs fine-tuned WER "
              f"{result['kendall_tau_oneshot_vs_finetuned']:.3f} [{low:.2f}, {high:.2f}] (target >= 0.7); one-shot "
              f"trial {t_os:.1f} s; a 100-trial study {study_hours * 60:.1f} min with {args.front_size} fine-tuned "
              f"confirmations: {result['speedup_100_trials']:.2f}x scored policies per hour, "
              f"{result['speedup_100_trials_without_confirmation']:.2f}x without them (target >= 5x)")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(summary, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
