"""What the study commands share: the study argument, `--no-progress`, and opening the study."""

from __future__ import annotations

import argparse

STUDY_HELP = "study YAML, e.g. studies/quickstart.yaml"


def add_study_arguments(parser: argparse.ArgumentParser, help: str = STUDY_HELP, progress: bool = True) -> None:
    """The positional study YAML and, for commands that train or search, `--no-progress`."""
    parser.add_argument("study", help=help)
    if progress:
        parser.add_argument("--no-progress", action="store_true", help="hide progress bars")


def study_config(args: argparse.Namespace):
    """The validated StudyConfig of `args.study`."""
    from mpsearch.config import StudyConfig

    return StudyConfig.from_yaml(args.study)


def open_study(args: argparse.Namespace, cfg=None):
    """The Study of `args.study` (or of `cfg`, already read), with progress bars unless `--no-progress`."""
    from mpsearch.study import Study

    return Study(cfg or study_config(args), progress=not getattr(args, "no_progress", True))
