"""`mpsearch onnx-check`: a trained policy's ONNX graphs in onnxruntime against the integer executor."""

from __future__ import annotations

import argparse


def add_parser(subparsers) -> None:
    from mpsearch.cli.common import add_study_arguments

    parser = subparsers.add_parser(
        "onnx-check",
        help="run a trained model's ONNX graphs in onnxruntime and compare them with the integer executor",
        description="Read trained/<policy>/ (written by `mpsearch train STUDY --policy P.json` under NNA "
                    "emulation): model.npz, the integer export, and its ONNX graphs (built from model.npz first if "
                    "they are missing): model.encoder.onnx, model.predictor.onnx, model.joiner.onnx for an RNN-T, "
                    "model.ctc.onnx for a Conformer with a CTC head. Run "
                    "both over the dev set, or --utterances of it, and report per layer the fraction of int8 "
                    "codes onnxruntime computes exactly as the reference executor does and the largest "
                    "difference in codes, then the WER and CER of greedy decoding with each and how many "
                    "transcripts are identical. Writes onnx_check.json in the trained folder. Needs `pip "
                    "install 'mpsearch[onnx]'`.",
        epilog="examples:\n"
               "  mpsearch onnx-check studies/quickstart.yaml --trained runs/quickstart/trained/knee\n"
               "  mpsearch onnx-check studies/quickstart.yaml --trained runs/quickstart/trained/knee --utterances 50",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_study_arguments(parser)
    parser.add_argument("--trained", required=True, metavar="DIR", help="a trained/<policy>/ folder of the study")
    parser.add_argument("--utterances", type=int, metavar="N", help="a fixed seeded subset of N dev utterances")
    parser.add_argument("--split", default="dev", choices=["dev", "test"], help="split to run (default dev)")
    parser.set_defaults(func=run)


def _print(report: dict) -> None:
    width = max(len(name) for name in report["layers"]) if report["layers"] else 5
    print(f"{'layer':<{width}}  exact codes  max diff  codes")
    for name, agreement in report["layers"].items():
        print(f"{name:<{width}}  {agreement['exact']:>11.4%}  {agreement['max_code_diff']:>8}  {agreement['codes']}")
    n = report["utterances"]
    for who in ("onnx", "executor"):
        print(f"{who:<8} WER {report[who]['wer']:.4f}  CER {report[who]['cer']:.4f}")
    print(f"identical transcripts: {report['identical_transcripts']} of {n}")


def run(args) -> int:
    from pathlib import Path

    from mpsearch.artifacts import write_json
    from mpsearch.cli.common import open_study, study_config
    from mpsearch.errors import ConfigError
    from mpsearch.onnx import export_onnx, onnx_paths
    from mpsearch.onnx.check import check_split, open_check

    if args.utterances is not None and args.utterances < 1:
        raise ConfigError(f"--utterances must be at least 1; got {args.utterances}.")
    cfg = study_config(args)
    npz = Path(args.trained) / "model.npz"
    if not npz.is_file():
        raise ConfigError(f"{npz} does not exist; train a policy under NNA emulation with "
                          f"`mpsearch train {args.study} --policy P.json` and pass its trained/<policy>/ folder.")
    if not all(path.is_file() for path in onnx_paths(npz).values()):
        print(f"building the ONNX graphs from {npz}")
        export_onnx(npz)
    check = open_check(npz)
    study = open_study(args, cfg)
    split = study.data.split(args.split).subset(args.utterances, seed=cfg.search.seed)
    report = check_split(check, split.batches(cfg.data.max_batch_frames), study.data.tokenizer.decode,
                         progress=(len(split) if not args.no_progress else None))
    report["split"] = args.split
    write_json(Path(args.trained) / "onnx_check.json", report, sort_keys=False)
    _print(report)
    print(f"report written to {Path(args.trained) / 'onnx_check.json'}")
    return 0
