"""`mpsearch report`: one self-contained HTML page describing a study from its stored results."""

from __future__ import annotations

import argparse


def add_parser(subparsers) -> None:
    from mpsearch.cli.common import add_study_arguments

    parser = subparsers.add_parser(
        "report",
        help="write report.html: settings, baseline, sensitivity, front, chosen policies, latency per site",
        description="Read the study folder and its stored trials (nothing is trained or searched) and write one "
                    "HTML file with the settings the study ran with, the float baseline's metrics, the "
                    "sensitivity table, the front table and plot with the hypervolume, the knee policy and any "
                    "trained policies, and the knee policy's modelled latency per site. Figures are embedded, so "
                    "the file opens anywhere on its own. Sections whose results are not stored yet say which "
                    "command makes them.",
        epilog="examples:\n"
               "  mpsearch report studies/quickstart.yaml                 # runs/quickstart/report.html\n"
               "  mpsearch report studies/quickstart.yaml --out q.html\n"
               "  mpsearch report copies/quickstart/                      # a study folder: its own settings and trials",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_study_arguments(parser, help="study YAML, e.g. studies/quickstart.yaml, or a study folder that has run "
                                     "(one copied elsewhere included)", progress=False)
    parser.add_argument("--out", metavar="PATH.html", help="where to write the report (default: report.html in "
                                                           "the study folder)")
    parser.set_defaults(func=run)


def run(args) -> int:
    from pathlib import Path

    from mpsearch.cli.common import study_config
    from mpsearch.report import study_config_of_folder, write_report

    if Path(args.study).is_dir():
        print(write_report(study_config_of_folder(args.study), args.out, folder=args.study))
    else:
        print(write_report(study_config(args), args.out))
    return 0
