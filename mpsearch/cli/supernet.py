"""`mpsearch supernet`: the differentiable mixed-precision search's lambda sweep on a study's baseline."""

from __future__ import annotations


def add_parser(subparsers) -> None:
    from mpsearch.cli.common import add_study_arguments

    parser = subparsers.add_parser(
        "supernet",
        help="differentiable bit-width search: one policy per lambda (reused when unchanged)",
        description="Train a supernet on the study's float baseline (trained first if needed): every group of "
                    "the study's search space (search.space) mixes its candidate bit widths and sparsity by "
                    "learned probabilities, under a penalty of lambda times the expected latency on the "
                    "study's hardware profile. One policy per lambda of supernet.lambdas is derived (argmax "
                    "per group) and written to supernet.json and supernet/lambda-<lambda>.policy.json in the "
                    "study folder; with search.warm_start.supernet: true the search starts from them. A "
                    "stored sweep is reused unless its settings, the space, the hardware or the baseline "
                    "changed.",
        epilog="example:  mpsearch supernet studies/quickstart.yaml",
    )
    add_study_arguments(parser, help="study YAML with search.space set, e.g. studies/quickstart.yaml")
    parser.set_defaults(func=run)


def run(args) -> int:
    from mpsearch.cli.common import open_study
    from mpsearch.supernet.report import format_supernet_table
    from mpsearch.supernet.stage import POLICY_FOLDER, SWEEP_FILE

    study = open_study(args)
    candidates = study.run("supernet").supernet
    print(format_supernet_table(candidates))
    print(f"wrote {study.dir / SWEEP_FILE} and {study.dir / POLICY_FOLDER}/")
    return 0
