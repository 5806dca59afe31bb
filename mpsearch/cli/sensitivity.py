"""`mpsearch sensitivity`: per-site Hessian traces and the Omega table of a study's float baseline."""

from __future__ import annotations


def add_parser(subparsers) -> None:
    from mpsearch.cli.common import add_study_arguments
    from mpsearch.sensitivity.backends import BACKENDS

    parser = subparsers.add_parser(
        "sensitivity",
        help="per-site Hessian traces and Omega of the study's baseline (reused when unchanged)",
        description="Estimate each site's Hessian trace (Hutchinson, with standard errors) on a few training "
                    "batches of the study's float baseline (trained first if needed), tabulate the HAWQ-V2 "
                    "metric Omega(site, bits, method), and write sensitivity.json and sensitivity.png in the "
                    "study folder. A stored report is reused unless the baseline or the sensitivity settings "
                    "changed.",
        epilog="example:  mpsearch sensitivity studies/quickstart.yaml",
    )
    add_study_arguments(parser)
    parser.add_argument("--backend", choices=BACKENDS.names(),
                        help="override sensitivity.backend "
                             "(pyhessian needs `pip install 'mpsearch[hessian]'`)")
    parser.add_argument("--method", help="method whose Omega the table shows (default: the first of "
                                         "sensitivity.methods)")
    parser.set_defaults(func=run)


def run(args) -> int:
    from mpsearch.cli.common import open_study
    from mpsearch.sensitivity.report import format_sensitivity_table
    from mpsearch.sensitivity.stage import PLOT_FILE, REPORT_FILE

    study = open_study(args)
    report = study.run("sensitivity", sensitivity_backend=args.backend).sensitivity
    print(format_sensitivity_table(report, args.method))
    print(f"wrote {study.dir / REPORT_FILE} and {study.dir / PLOT_FILE}")
    return 0
