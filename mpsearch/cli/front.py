"""`mpsearch front` (the Pareto front of a study's trials) and `mpsearch export` (one trial's Policy)."""

from __future__ import annotations

import argparse


def add_parser(subparsers) -> None:
    from mpsearch.cli.common import add_study_arguments

    front = subparsers.add_parser(
        "front",
        help="the Pareto front of a study's trials: table, front.csv, front.png and hypervolume",
        description="Read the study's stored trials and print the non-dominated ones (all objectives minimised) "
                    "with the uniform-precision reference points: WER, modelled latency, size, average bits and "
                    "the bits and method of every searched group. Then print the hypervolume against the "
                    "reference point (search.reference_point, else WER 1.0 and 1.1 x the uniform 8-bit trial's "
                    "value for the other objectives). Writes front.csv (every complete trial, with an on_front "
                    "column), front.png and front.json (hypervolume, reference point, trial counts, front trial "
                    "numbers) into the study folder.",
        epilog="examples:\n"
               "  mpsearch front studies/quickstart.yaml\n"
               "  mpsearch front studies/quickstart.yaml --all        # every complete trial, not just the front\n"
               "\n"
               "browse the trials live (pip install optuna-dashboard):\n"
               "  optuna-dashboard sqlite:///runs/<study>/optuna.db\n"
               "\n"
               "then export a trial:  mpsearch export studies/quickstart.yaml --pick knee --out best.json",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_study_arguments(front, progress=False)
    front.add_argument("--all", action="store_true", help="print every complete trial, not only the front and "
                                                          "the uniform points")
    front.add_argument("--no-plot", action="store_true", help="skip front.png (matplotlib not needed)")
    front.set_defaults(func=run_front)

    export = subparsers.add_parser(
        "export",
        help="write one trial's bit-width Policy as JSON (by number, the knee, or under a limit)",
        description="Choose one complete trial of the study and write its Policy (per-site bits, method, "
                    "sparsity, plus the model's site list) as JSON, for `mpsearch train --policy`. Choose by "
                    "trial number (see `mpsearch front`), the knee of the front (the point farthest from the "
                    "line joining the front's extremes, objectives scaled to [0, 1]), the lowest WER within a "
                    "latency limit, or the lowest latency within a WER limit.",
        epilog="examples:\n"
               "  mpsearch export studies/quickstart.yaml --pick knee --out best.json\n"
               "  mpsearch export studies/quickstart.yaml --trial 12 --out trial12.json\n"
               "  mpsearch export studies/quickstart.yaml --max-latency-ms 2.5 --out fast.json\n"
               "  mpsearch export studies/quickstart.yaml --max-wer 0.15 --out accurate.json\n"
               "\n"
               "then:  mpsearch train studies/quickstart.yaml --policy best.json",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_study_arguments(export, progress=False)
    choice = export.add_mutually_exclusive_group(required=True)
    choice.add_argument("--trial", type=int, metavar="N", help="trial number N (must be COMPLETE)")
    choice.add_argument("--pick", choices=["knee"], help="knee: the best trade-off point of the front")
    choice.add_argument("--max-latency-ms", type=float, metavar="X",
                        help="the lowest WER among trials with modelled latency <= X ms")
    choice.add_argument("--max-wer", type=float, metavar="Y",
                        help="the lowest latency among trials with WER <= Y (a fraction: 0.15 is 15%%)")
    export.add_argument("--out", required=True, metavar="P.json", help="where to write the policy JSON")
    export.set_defaults(func=run_export)


def run_front(args) -> int:
    from mpsearch.cli.common import study_config

    print_front(study_config(args), rows="all" if args.all else "front", plot=not args.no_plot)
    return 0


def print_front(cfg, rows: str = "front", plot: bool = True, written_front=None):
    """Write the front's files (unless `written_front`, the (table, files) a study run wrote) and print its
    table, counts and hypervolume; returns the FrontTable."""
    from mpsearch.search.front_files import write_front
    from mpsearch.search.front_text import format_front_table, interval_summary
    from mpsearch.search.record import older_baseline_note
    from mpsearch.search.storage import storage_url

    table, written = written_front or write_front(cfg, plot=plot)
    print(format_front_table(table, rows=rows))
    counts = table.summary()["trials"]
    print(f"\n{len(table.front)} point(s) on the front of {len(table.frame)} distinct complete trial(s) "
          f"({counts['complete']} complete, {counts['failed']} failed)")
    print(f"hypervolume {table.hypervolume:.6g} against the reference point {table.reference.describe()}")
    for line in [*interval_summary(table), older_baseline_note(len(table.older_baseline))]:
        if line:
            print(line)
    print(f"wrote {', '.join(str(p) for p in written)}")
    print(f"browse: optuna-dashboard {storage_url(cfg)}")
    return table


def run_export(args) -> int:
    from mpsearch.cli.common import study_config
    from mpsearch.search.pareto import METRIC_COLUMNS, format_value, load_front_table
    from mpsearch.search.pick import pick_trial
    from mpsearch.search.record import older_baseline_note

    cfg = study_config(args)
    table = load_front_table(cfg)
    picked = pick_trial(table, trial=args.trial, pick=args.pick, max_latency_ms=args.max_latency_ms,
                        max_wer=args.max_wer)
    row = picked.row
    print(f"trial {picked.number} ({row['origin'] or 'unknown origin'}), chosen as {picked.reason}"
          f"{'' if row['on_front'] else '; not on the front'}")
    for name in [*table.objectives, *(c for c in METRIC_COLUMNS if c not in table.objectives and c in row),
                 *table.group_columns]:
        print(f"  {name:<28} {format_value(row.get(name))}")
    if table.older_baseline:
        print(f"  ({older_baseline_note(len(table.older_baseline))})")
    picked.policy.save(args.out)
    print(f"wrote {args.out}; train it with:  mpsearch train {args.study} --policy {args.out}")
    return 0
