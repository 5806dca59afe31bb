"""`mpsearch data`: build the synthetic corpus, convert LibriSpeech, check manifests."""

from __future__ import annotations

import argparse
import inspect
import time
from pathlib import Path

_EPILOG = """\
examples:
  mpsearch data synth --out corpus/                 4000 utterances: corpus/{train,dev,test}.jsonl
  mpsearch data synth --out tiny/ --utterances 200 --seed 1
  mpsearch data librispeech LibriSpeech/dev-clean --out manifests/dev.jsonl
  mpsearch data check manifests/dev.jsonl           list every problem by line; exit 1 on errors

Manifests are JSONL, one utterance per line:
  {"audio_filepath": "audio/train/x.wav", "duration": 2.1, "text": "call mom", "speaker": "en-us+m1"}
A relative audio_filepath is relative to the manifest's folder."""


def _positive(value: str) -> int:
    number = int(value)
    if number < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer; got {value}")
    return number


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "data",
        help="build, convert and check speech corpora (JSONL manifests)",
        description="Build the built-in synthetic corpus, convert LibriSpeech, and check manifests.",
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.set_defaults(func=lambda args: parser.print_help())
    commands = parser.add_subparsers(title="data commands")

    synth = _command(commands, "synth", _synth)
    synth.add_argument("--out", required=True, type=Path, metavar="DIR", help="corpus folder to create")
    synth.add_argument("--utterances", type=_positive, default=4000, metavar="N",
                       help="total over train/dev/test, split 80/10/10 (default 4000)")
    synth.add_argument("--seed", type=int, default=0, metavar="S", help="random seed (default 0)")
    synth.add_argument("--voices", choices=("standard", "wide"), default="standard",
                       help="train/dev speakers: 14 voices, or 25 for better unseen-voice WER (default standard)")
    synth.add_argument("--workers", type=_positive, default=None, metavar="K",
                       help="parallel processes (default: one per CPU); results do not depend on it")

    libri = _command(commands, "librispeech", _librispeech)
    libri.add_argument("path", type=Path, metavar="PATH", help="folder to search, e.g. LibriSpeech/dev-clean")
    libri.add_argument("--out", required=True, type=Path, metavar="FILE.jsonl", help="manifest to write")

    check = _command(commands, "check", _check)
    check.add_argument("manifest", type=Path, metavar="FILE.jsonl", help="manifest to check")


def _command(commands: argparse._SubParsersAction, name: str, func) -> argparse.ArgumentParser:
    # A command's help line and description are its handler's docstring, so the two cannot drift apart.
    help_line, _, description = inspect.getdoc(func).partition("\n\n")
    parser = commands.add_parser(name, help=help_line, description=" ".join(description.split()))
    parser.set_defaults(func=func)
    return parser


def _synth(args: argparse.Namespace) -> int:
    """synthesize the built-in spoken-command corpus

    Speak generated voice-assistant commands with espeak-ng voices and add noise; write 16 kHz WAVs and
    train/dev/test manifests. Re-running reuses a finished corpus and resumes an interrupted one; the same
    seed gives identical files.
    """
    from mpsearch.data.synth import split_sizes, synthesize_corpus

    start = time.perf_counter()
    manifests = synthesize_corpus(args.out, utterances=args.utterances, seed=args.seed, workers=args.workers,
                                  voices=args.voices)
    sizes = split_sizes(args.utterances)
    for split, path in manifests.items():
        print(f"{split:>5}: {path}  ({sizes[split]} utterances)")
    print(f"corpus ready in {time.perf_counter() - start:.1f} s")
    return 0


def _librispeech(args: argparse.Namespace) -> int:
    """write a manifest for a LibriSpeech folder

    Find every <speaker>/<chapter>/*.trans.txt under PATH and write one manifest line per utterance,
    transcript lower-cased, speaker from the folder name.
    """
    from mpsearch.data.librispeech import librispeech_to_manifest

    count = librispeech_to_manifest(args.path, args.out)
    print(f"wrote {count} utterances to {args.out}")
    return 0


def _check(args: argparse.Namespace) -> int:
    """list a manifest's problems; exit 1 on errors

    Check every line of a manifest and print FILE:LINE: problems. Exit 1 if any is an error; warnings (audio
    that will be resampled or averaged) alone exit 0.
    """
    from mpsearch.data.manifest import check_manifest

    problems = check_manifest(args.manifest)
    for problem in problems:
        print(f"{args.manifest}:{problem.line}: {problem.severity}: {problem.message}")
    errors = sum(p.is_error for p in problems)
    warnings = len(problems) - errors
    if problems:
        print(f"{args.manifest}: {errors} error(s), {warnings} warning(s)")
    else:
        print(f"{args.manifest}: no problems")
    return 1 if errors else 0
