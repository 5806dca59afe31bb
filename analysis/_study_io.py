"""What the plot scripts share: their command line (--study, --out), the study's config, the output
folder, and writing a figure. The scripts read only stored results: the study folder and its trials."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable
from pathlib import Path

from mpsearch.artifacts import atomic_path
from mpsearch.config import StudyConfig
from mpsearch.errors import MpsearchError

RESULTS_DIR = Path(__file__).resolve().parent / "results"


def parse_args(doc: str, argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=doc.splitlines()[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog="\n".join(doc.splitlines()[1:]).strip())
    parser.add_argument("--study", required=True, metavar="STUDY.yaml",
                        help="the study YAML, e.g. studies/quickstart.yaml")
    parser.add_argument("--out", metavar="DIR", help="where to write the PNG and CSV files "
                                                     "(default: analysis/results/<study name>/)")
    return parser.parse_args(argv)


def output_folder(cfg: StudyConfig, out: str | None) -> Path:
    folder = Path(out) if out else RESULTS_DIR / cfg.name
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def save_figure(fig, path: Path) -> None:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=120)


def write_csv(frame, path: Path) -> None:
    with atomic_path(path) as tmp:
        frame.to_csv(tmp, index=False)


def run_script(doc: str, argv: list[str] | None, write: Callable[[StudyConfig, Path], list[Path]]) -> int:
    """Parse the command line, load the study, call `write(cfg, folder)` and print what it wrote."""
    args = parse_args(doc, argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        cfg = StudyConfig.from_yaml(args.study)
        written = write(cfg, output_folder(cfg, args.out))
    except MpsearchError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    for path in written:
        print(f"wrote {path}")
    return 0
