"""The `mpsearch` command: thin subcommands over the library. Only this package prints."""

from __future__ import annotations

import argparse
import logging
import sys

from mpsearch import __version__
from mpsearch.errors import MpsearchError

# Commands that train or evaluate models pick their torch thread count from the cores free at start-up.
TORCH_COMMANDS = ("train", "search", "resume", "sensitivity", "supernet")

# Each module adds its subcommand(s) with `add_parser(subparsers)` and sets `func` on them.
_COMMAND_MODULES = [
    "mpsearch.cli.data",
    "mpsearch.cli.train",
    "mpsearch.cli.sensitivity",
    "mpsearch.cli.latency",
    "mpsearch.cli.hardware",
    "mpsearch.cli.search",
    "mpsearch.cli.front",
    "mpsearch.cli.supernet",
    "mpsearch.cli.report",
    "mpsearch.cli.onnx_check",
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mpsearch",
        description="Search per-layer bit widths and sparsity for on-device speech models.",
        epilog="Start with:  mpsearch search studies/quickstart.yaml   (the whole pipeline; see README.md)",
    )
    parser.add_argument("--version", action="version", version=f"mpsearch {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug messages")
    subparsers = parser.add_subparsers(title="commands", metavar="COMMAND", dest="command")
    import importlib

    for name in _COMMAND_MODULES:
        importlib.import_module(name).add_parser(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
    if not hasattr(args, "func"):
        parser.print_help()
        return 0
    try:
        if args.command in TORCH_COMMANDS:
            from mpsearch.runtime import apply_thread_policy

            workers = getattr(args, "workers", None)
            # `auto` is resolved by the search backend, which applies the policy again per trial
            apply_thread_policy(workers if isinstance(workers, int) else 1)
        return int(args.func(args) or 0)
    except MpsearchError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted; finished work is saved, re-run the same command to continue", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
