"""`mpsearch train`: the float baseline of a study (later: training with an exported policy)."""

from __future__ import annotations

import json


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "train",
        help="train the study's float baseline (reused when it already exists)",
        description="Train the float baseline named by a study YAML and write baseline/metrics.json "
                    "(dev and test WER/CER, or perplexity for a language model) in the study folder. "
                    "An interrupted run resumes from its last checkpoint; a finished baseline is reused.",
        epilog="example:  mpsearch train studies/quickstart.yaml",
    )
    parser.add_argument("study", help="study YAML, e.g. studies/quickstart.yaml")
    parser.add_argument("--no-progress", action="store_true", help="hide progress bars")
    parser.set_defaults(func=run)


def run(args) -> int:
    from mpsearch.config import StudyConfig
    from mpsearch.study import Study

    study = Study(StudyConfig.from_yaml(args.study), progress=not args.no_progress)
    _, metrics = study.baseline()
    summary = {k: metrics[k] for k in ("model", "parameters", "train_steps", "train_seconds", "dev", "test")}
    print(json.dumps(summary, indent=2))
    print(f"baseline written to {study.baseline_dir}")
    return 0
