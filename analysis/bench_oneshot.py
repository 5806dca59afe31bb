"""One-shot trials against fine-tuned trials on the same random policies, measured side by side in one run.

For a study (default the quickstart: the shipped trained RNN-T, its search space and NNA emulation):
  1. trains the one-shot shared weights (`mpsearch.supernet.oneshot`) for --shared-steps steps, timed;
  2. draws --policies random points of the search space (seeded, uniform per choice set);
  3. scores each point three ways on the study's eval split (its `search.eval_utterances` subset):
       finetuned: the study's own trial (calibrate + `search.finetune` QAT + dev and test scoring), timed;
       oneshot:   the shared weights, calibrated under the policy and scored on dev, no fine-tune, timed;
       ptq:       the float baseline's weights, calibrated and scored the same way (the free reference
                  the one-shot weights must beat);
  4. prints Kendall's tau of oneshot and of ptq WER against finetuned WER, and scored policies per hour
     for a 100-trial study in each mode (one-shot: the shared training, 100 one-shot trials and the
     fine-tuned confirmation of --front-size front policies).

    python analysis/bench_oneshot.py --policies 20 --shared-steps 300 --out analysis/results/bench_oneshot.json
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
    parser.add_argument("--shared-steps", type=int, default=300)
    parser.add_argument("--shared-lr", type=float, default=2e-4)
    parser.add_argument("--random-policies", type=int, default=2, help="random policies per step beside the sandwich's two")
    parser.add_argument("--front-size", type=int, default=8, help="front policies confirmed by a fine-tuned trial")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()

    cfg = StudyConfig.from_yaml(args.study)
    study = Study(cfg, progress=False)
    runner = study.trial_runner()
    space = study.search_space()
    points = random_points(space, args.policies, args.seed)

    shared_cfg = cfg.search.finetune.model_copy(update={"max_steps": args.shared_steps, "lr": args.shared_lr,
                                                        "warmup_steps": max(1, args.shared_steps // 20),
                                                        "augment": True})
    float_model, _ = study.baseline()
    start = time.monotonic()
    state, result = train_shared_weights(float_model, space, lambda m: study.task(m, augment=True), shared_cfg,
                                         args.random_policies)
    shared_seconds = time.monotonic() - start
    print(f"shared weights: {result.steps} steps in {shared_seconds:.0f} s, final loss {result.final_loss:.3f}",
          flush=True)
    shared_model = study.new_model()
    shared_model.load_state_dict(state)
    shared_model.eval()

    rows = []
    for i, params in enumerate(points):
        policy = space.to_policy(params)
        hardware = runner.hardware_metrics(policy)
        t0 = time.monotonic()
        finetuned = runner.run(policy)
        t1 = time.monotonic()
        oneshot = dev_wer(study, runner.quantized_model(policy, shared_model))
        t2 = time.monotonic()
        ptq = dev_wer(study, runner.quantized_model(policy))
        row = {"params": params, "avg_weight_bits": hardware["avg_weight_bits"], "latency_ms": hardware["latency_ms"],
               "finetuned_wer": finetuned["wer"], "finetuned_seconds": t1 - t0,
               "oneshot_wer": oneshot["wer"], "oneshot_ci": [oneshot["wer_ci_low"], oneshot["wer_ci_high"]],
               "oneshot_seconds": t2 - t1, "ptq_wer": ptq["wer"]}
        rows.append(row)
        print(f"[{i + 1}/{len(points)}] {hardware['avg_weight_bits']:.2f} bits: finetuned {finetuned['wer']:.4f} "
              f"({t1 - t0:.0f} s)  oneshot {oneshot['wer']:.4f} ({t2 - t1:.0f} s)  ptq {ptq['wer']:.4f}", flush=True)

    ft = [r["finetuned_wer"] for r in rows]
    tau_oneshot = kendalltau([r["oneshot_wer"] for r in rows], ft).statistic
    tau_ptq = kendalltau([r["ptq_wer"] for r in rows], ft).statistic
    t_ft = float(np.mean([r["finetuned_seconds"] for r in rows]))
    t_os = float(np.mean([r["oneshot_seconds"] for r in rows]))
    finetune_hours = 100 * t_ft / 3600
    oneshot_hours = (shared_seconds + 100 * t_os + args.front_size * t_ft) / 3600
    summary = {
        "command": " ".join([os.path.basename(sys.executable)] + sys.argv),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, torch threads {torch.get_num_threads()}",
        "study": cfg.name, "policies": len(rows), "shared_steps": result.steps, "shared_seconds": shared_seconds,
        "kendall_tau_oneshot_vs_finetuned": tau_oneshot, "kendall_tau_ptq_vs_finetuned": tau_ptq,
        "finetuned_trial_seconds": t_ft, "oneshot_trial_seconds": t_os,
        "policies_per_hour_finetune": 100 / finetune_hours, "policies_per_hour_oneshot": 100 / oneshot_hours,
        "speedup_100_trials": finetune_hours / oneshot_hours,
        "mean_wer": {k: float(np.mean([r[k] for r in rows])) for k in ("finetuned_wer", "oneshot_wer", "ptq_wer")},
        "rows": rows,
    }
    print(f"Kendall tau vs fine-tuned WER over {len(rows)} policies: one-shot {tau_oneshot:.3f} (target >= 0.7), "
          f"PTQ of the float weights {tau_ptq:.3f}")
    print(f"trial seconds: fine-tuned {t_ft:.1f}, one-shot {t_os:.1f}; a 100-trial study: fine-tuned "
          f"{finetune_hours * 60:.1f} min, one-shot {oneshot_hours * 60:.1f} min (shared training "
          f"{shared_seconds / 60:.1f} min + {args.front_size} confirmations): {summary['speedup_100_trials']:.2f}x "
          "scored policies per hour (target >= 5x)")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(summary, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
