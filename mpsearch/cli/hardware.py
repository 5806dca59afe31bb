"""`mpsearch hardware`: show a hardware profile, or calibrate one from measured layer latencies."""

from __future__ import annotations

import argparse


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "hardware",
        help="show or calibrate hardware profiles for the latency model",
        description="Hardware profiles describe an accelerator (clock, MACs per cycle, memories, supported "
                    "bit widths, sparse format) for the roofline latency model.",
    )
    parser.set_defaults(func=lambda args: parser.print_help() or 0)
    actions = parser.add_subparsers(title="actions", metavar="ACTION")

    show = actions.add_parser("show", help="print a profile (shipped name or YAML path)",
                              description="Print a hardware profile as YAML, after validating it.",
                              epilog="example:  mpsearch hardware show nna-int8")
    show.add_argument("profile", help="shipped profile name (e.g. nna-int8, cpu-int8) or a profile YAML")
    show.set_defaults(func=run_show)

    calibrate = actions.add_parser(
        "calibrate", help="fit a profile's rates to measured layer latencies",
        description="Fit the free rates of a base profile (MAC rate, off-chip and activation bandwidth, "
                    "per-layer overhead) to a CSV of measured layer latencies and write the fitted profile. "
                    "Prints the median and worst relative error of the fit.",
        epilog="example:  mpsearch hardware calibrate --measurements analysis/results/cpu_int8_measurements.csv "
               "--profile my-cpu.yaml --base cpu-int8",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    calibrate.add_argument("--measurements", required=True, metavar="FILE.csv",
                           help="columns in_features, out_features, weight_bits, batch, time_us "
                                "(see analysis/measure_cpu_int8.py)")
    calibrate.add_argument("--profile", required=True, metavar="OUT.yaml", help="where to write the fitted profile")
    calibrate.add_argument("--base", default="cpu-int8",
                           help="profile whose fixed fields and starting rates are used (default: cpu-int8)")
    calibrate.add_argument("--fit", metavar="NAMES",
                           help="comma-separated parameters to fit (default: every fittable one the base sets)")
    calibrate.set_defaults(func=run_calibrate)


def run_show(args) -> int:
    from mpsearch.hardware.profile import load_profile

    print(load_profile(args.profile).to_yaml(), end="")
    return 0


def run_calibrate(args) -> int:
    from pathlib import Path

    import pandas as pd

    from mpsearch.errors import ConfigError
    from mpsearch.hardware.calibrate import calibrate
    from mpsearch.hardware.profile import load_profile

    path = Path(args.measurements)
    if not path.is_file():
        raise ConfigError(f"Measurement file '{path}' does not exist; make one with analysis/measure_cpu_int8.py.")
    try:
        measurements = pd.read_csv(path)
    except (ValueError, pd.errors.ParserError) as exc:
        raise ConfigError(f"{path} is not a readable CSV ({exc}).") from None
    base = load_profile(args.base)
    free = [name.strip() for name in args.fit.split(",") if name.strip()] if args.fit else None
    fitted, report = calibrate(measurements, base, free=free, source=str(path))
    name = Path(args.profile).stem
    fitted = fitted.model_copy(update={"name": name})
    fitted.save(args.profile)
    print(report.summary())
    print(f"median relative error {report.median_rel_error:.1%}, worst {report.worst_rel_error:.1%}")
    print(f"wrote {args.profile}")
    return 0
