"""`mpsearch train`: the float baseline of a study, or a model trained with an exported policy."""

from __future__ import annotations

import argparse
import json


def add_parser(subparsers) -> None:
    from mpsearch.cli.common import add_study_arguments

    parser = subparsers.add_parser(
        "train",
        help="train the study's float baseline, or a quantized model with --policy",
        description="Without --policy: train the float baseline named by a study YAML and write "
                    "baseline/metrics.json (dev and test WER/CER, or perplexity for a language model) in the "
                    "study folder; an interrupted run resumes from its last checkpoint and a finished baseline "
                    "is reused.\n\nWith --policy P.json (from `mpsearch export`): quantize the baseline as the "
                    "policy says, under the study's emulation (search.emulation, NNA by default), fine-tune it "
                    "with the search's recipe (search.finetune) for --steps steps, and write "
                    "trained/<policy name>/ (metrics.json, model.pt, policy.json and, under NNA emulation, "
                    "the integer export model.npz). With the default steps this reproduces the trial's WER.",
        epilog="examples:\n  mpsearch train studies/quickstart.yaml\n"
               "  mpsearch export studies/quickstart.yaml --pick knee --out knee.json\n"
               "  mpsearch train studies/quickstart.yaml --policy knee.json --steps 400",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_study_arguments(parser)
    parser.add_argument("--policy", help="policy JSON written by `mpsearch export`")
    parser.add_argument("--steps", type=int, help="fine-tune steps with --policy (default search.finetune.max_steps)")
    parser.set_defaults(func=run)


def run(args) -> int:
    from pathlib import Path

    from mpsearch.cli.common import open_study, study_config
    from mpsearch.errors import ConfigError

    cfg = study_config(args)
    if args.steps is not None and (args.policy is None or args.steps < 1):
        raise ConfigError("--steps sets the fine-tune of --policy and must be at least 1; pass both.")
    study = open_study(args, cfg)
    if args.policy:
        from mpsearch.quant import Policy
        from mpsearch.search.retrain import train_with_policy

        policy = Policy.load(args.policy)
        metrics, out = train_with_policy(study, policy, Path(args.policy).stem, args.steps)
        print(json.dumps({k: v for k, v in metrics.items() if k not in ("integer_export", "utterances")}, indent=2))
        print(f"model, metrics and integer export written to {out}")
        return 0
    metrics = study.run("baseline").baseline
    summary = {k: metrics[k] for k in ("model", "parameters", "train_steps", "train_seconds", "dev", "test")}
    print(json.dumps(summary, indent=2))
    print(f"baseline written to {study.baseline_dir}")
    return 0
