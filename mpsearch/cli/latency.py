"""`mpsearch latency`: the modelled latency and memory of a policy on the study's hardware profile."""

from __future__ import annotations

import argparse


def add_parser(subparsers) -> None:
    from mpsearch.cli.common import add_study_arguments

    parser = subparsers.add_parser(
        "latency",
        help="per-site modelled latency and memory of a policy on the study's hardware",
        description="Print, for every site of the study's model, the bits, sparsity, stored bytes, time per "
                    "utterance and what bounds it (compute, memory or activations) under the study's hardware "
                    "profile and workload, then the totals. Without --policy: uniform 8-bit.",
        epilog="examples:\n  mpsearch latency studies/quickstart.yaml\n"
               "  mpsearch latency studies/quickstart.yaml --policy best.json --profile cpu-int8",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_study_arguments(parser, progress=False)
    parser.add_argument("--policy", help="policy JSON written by `mpsearch export` (default: uniform 8-bit)")
    parser.add_argument("--profile", help="override the study's hardware profile (name or YAML path)")
    parser.set_defaults(func=run)


def run(args) -> int:
    from mpsearch.cli.common import open_study
    from mpsearch.hardware import RooflineLatencyModel, format_latency_table, load_profile
    from mpsearch.quant import QUANTIZERS, Policy, QuantConfig

    study = open_study(args)
    sites = study.sites()
    names = [s.name for s in sites]
    policy = Policy.load(args.policy) if args.policy else Policy.uniform(QuantConfig(), names)
    policy.validate(sites, QUANTIZERS.names())
    model = study.latency_model()
    if args.profile:
        model = RooflineLatencyModel(load_profile(args.profile), model.workload)
    print(format_latency_table(model(sites, policy)))
    return 0
