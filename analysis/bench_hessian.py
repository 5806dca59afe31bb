"""Hessian trace on the quickstart RNN-T: our Hutchinson estimator vs PyHessian's trace loop, same probes.

Both estimate the trace of the Hessian with respect to the site weights (PyHessian is restricted to
them by requires_grad) on one batch, with the same number of Rademacher probes and the first-order
graph reused across probes. Ours also yields every site's trace from the same probes. PyHessian runs
twice: with torch's default (oneDNN) kernels, as a user would run it, and with the native kernels our
estimator selects, which separates the kernel choice from the estimator itself.

Then per-site traces at equal error: our default estimator (adaptive, deflating) and the same without
deflation, each with `--budget` HVPs, against PyHessian run once per site (HAWQ-V2's way), timed for
the probes it would need to reach the per-site errors ours reached.

    python analysis/bench_hessian.py [--probes 30 --budget 120 --threads 1 --study studies/rnnt_methods.yaml]

Without the study's trained baseline (`mpsearch train STUDY`) the RNN-T is randomly initialised;
without its cached train features the batch is random with the shape of a quickstart batch.
"""

from __future__ import annotations

import argparse
import glob
import math
import time
from pathlib import Path

import torch

from mpsearch.config import FeatureConfig, SensitivityConfig, StudyConfig
from mpsearch.data.pipeline import FeatureSet
from mpsearch.data.tokenizer import CharTokenizer
from mpsearch.models import RNNT, RNNTConfig
from mpsearch.sensitivity.hutchinson import estimate_traces
from mpsearch.sensitivity.pyhessian_backend import pyhessian_total_trace
from mpsearch.study import Study


def load_model(study_yaml: str) -> tuple[torch.nn.Module, str, str | None]:
    """The study's trained float baseline and its cached train features, if it has them."""
    study = Study(StudyConfig.from_yaml(study_yaml), progress=False)
    features = sorted(glob.glob(str(study.dir / "features" / "train-*.pt")))
    if (study.baseline_dir / "model.pt").is_file():
        model, _ = study.baseline()
        return model, f"the trained baseline of {study_yaml}", features[0] if features else None
    model = RNNT(RNNTConfig(n_mels=80, vocab_size=CharTokenizer().vocab_size))
    return model, "random initialisation (no trained baseline found)", features[0] if features else None


def load_batch(features: str | None, max_batch_frames: int, seed: int):
    if features and Path(features).is_file():
        stored = torch.load(features)
        feats = list(torch.split(stored["feats"], stored["frames"]))
        split = FeatureSet(feats, stored["texts"], CharTokenizer(), FeatureConfig())
        batch = next(iter(split.batches(max_batch_frames, shuffle=True, seed=seed)))
        tensors = (batch.feats, batch.feat_lens, batch.targets, batch.target_lens)
        return tensors, f"a train batch of {features}"
    gen = torch.Generator().manual_seed(seed)
    size, frames, labels = 40, 300, 40  # ~3 s commands, 40 of them fill 12000 frames
    feat_lens = torch.randint(frames // 2, frames + 1, (size,), generator=gen)
    feat_lens[0] = frames
    target_lens = torch.randint(labels // 2, labels + 1, (size,), generator=gen)
    target_lens[0] = labels
    batch = (torch.randn(size, frames, 80, generator=gen), feat_lens,
             torch.randint(1, CharTokenizer().vocab_size, (size, labels), generator=gen), target_lens)
    return batch, "a random batch of quickstart shape (no cached features found)"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--probes", type=int, default=30)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--study", default="studies/rnnt_methods.yaml",
                        help="study whose trained baseline and cached train features are used")
    parser.add_argument("--max-batch-frames", type=int, default=12000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--tol", type=float, default=0.05, help="relative error the default estimator stops at")
    parser.add_argument("--budget", type=int, default=120, help="HVP budget of our per-site estimators")
    parser.add_argument("--per-site-probes", type=int, default=16,
                        help="probes of each per-site PyHessian run (HAWQ-V2's way); 0 skips them")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    model, model_note, features = load_model(args.study)
    batch, batch_note = load_batch(features, args.max_batch_frames, args.seed)
    feats, feat_lens, _, target_lens = batch
    n_params = sum(p.numel() for p in model.parameters())
    print(f"model: RNN-T, {n_params:,} parameters, {model_note}")
    print(f"batch: {batch_note}: {feats.shape[0]} utterances, {feats.shape[1]} frames max "
          f"({int(feat_lens.sum())} valid), {int(target_lens.max())} labels max")
    print(f"probes: {args.probes} each, {args.threads} thread(s), torch {torch.__version__}")

    def ours(probes: int, tol: float, deflation_rank: int = 0):
        # tol 1e-9 is out of reach: every site is probed every time, the same HVPs as PyHessian's loop;
        # with a real tol, converged sites stop being probed (the estimator's default behaviour)
        cfg = SensitivityConfig(batches=1, min_probes=min(8, probes), max_probes=probes, tol=tol, seed=args.seed,
                                deflation_rank=deflation_rank)
        estimate = estimate_traces(model, [batch], cfg)
        return estimate, sum(estimate.traces), estimate.total_stderr

    def pyhessian(probes: int, native: bool):
        trace, error, done = pyhessian_total_trace(model, [batch], max_probes=probes, tol=-math.inf,
                                                   seed=args.seed, native_rnn=native)
        assert done == probes
        return None, trace, error

    runs = [("ours, every site every probe", lambda probes: ours(probes, 1e-9)),
            ("PyHessian trace, torch defaults", lambda probes: pyhessian(probes, False)),
            ("PyHessian trace, native kernels", lambda probes: pyhessian(probes, True))]
    for _, run in runs:  # warm-up: first calls allocate and initialise; not timed
        run(2)
    rows, estimates = [], []
    for label, run in runs:
        start = time.perf_counter()
        estimate, trace, error = run(args.probes)
        probes = max(estimate.probes) if estimate is not None else args.probes
        rows.append((label, time.perf_counter() - start, trace, error, probes))
        if estimate is not None:
            estimates.append((label, estimate, rows[-1][1]))

    print()
    print(f"{'estimator':34s} {'seconds':>8s} {'probes':>7s} {'s/probe':>8s} {'trace':>12s} {'± stderr':>10s}")
    for label, seconds, trace, error, probes in rows:
        print(f"{label:34s} {seconds:8.2f} {probes:7d} {seconds / probes:8.3f} {trace:12.4g} {error:10.3g}")
    ours_s = rows[0][1]
    print()
    print(f"whole-model trace, same HVPs: PyHessian (torch defaults) / ours {rows[1][1] / ours_s:.2f}x; "
          f"PyHessian (native kernels) / ours {rows[2][1] / ours_s:.2f}x")
    print(f"error ratio ours / PyHessian (defaults): {rows[0][3] / rows[1][3]:.2f} "
          "(same estimator of the same trace: ~1 expected)")

    per_site = []
    for label, rank in ((f"ours, tol {args.tol:g}, deflating (default)", SensitivityConfig().deflation_rank),
                        (f"ours, tol {args.tol:g}, no deflation", 0)):
        start = time.perf_counter()
        estimate, _, _ = ours(args.budget, args.tol, rank)
        per_site.append((label, estimate, time.perf_counter() - start))
    print()
    for label, estimate, seconds in estimates + per_site:
        rel = sorted((e / abs(t) if t else math.inf, s.name)
                     for t, e, s in zip(estimate.traces, estimate.stderrs, estimate.sites))
        below = sum(r < args.tol for r, _ in rel)
        print(f"per-site relative errors, {label}: best {rel[0][0]:.1%} ({rel[0][1]}), median "
              f"{rel[len(rel) // 2][0]:.1%}, worst {rel[-1][0]:.1%} ({rel[-1][1]}); {below}/{len(rel)} sites "
              f"under {args.tol:.0%}; probes per site {min(estimate.probes)}-{max(estimate.probes)}, {seconds:.1f} s")

    if args.per_site_probes:
        per_site_comparison(model, batch, per_site, args)


def per_site_comparison(model, batch, ours: list, args) -> None:
    """PyHessian per site (each site's weights probed alone), and the time it would need to reach the
    standard error each of our per-site runs reached on every site, from its own per-probe variance."""
    k = args.per_site_probes
    print()
    print(f"PyHessian per site, {k} probes each (HAWQ-V2's way: one run per site), against {ours[0][0]}:")
    print(f"{'site':30s} {'ours trace':>11s} {'± se':>9s} {'PyH trace':>11s} {'± se':>9s} {'s/probe':>8s} "
          f"{'s to match':>10s}")
    needed = [0.0] * len(ours)
    for index, site in enumerate(ours[0][1].sites):
        start = time.perf_counter()
        theirs, their_error, _ = pyhessian_total_trace(model, [batch], sites=[site], max_probes=k,
                                                       tol=-math.inf, seed=args.seed)
        per_probe = (time.perf_counter() - start) / k
        # probes PyHessian needs for our standard error: its per-probe variance over ours
        matches = [per_probe * k * (their_error / e.stderrs[index]) ** 2 if e.stderrs[index] > 0 else math.inf
                   for _, e, _ in ours]
        needed = [n + m for n, m in zip(needed, matches)]
        first = ours[0][1]
        print(f"{site.name:30s} {first.traces[index]:11.4g} {first.stderrs[index]:9.2g} {theirs:11.4g} "
              f"{their_error:9.2g} {per_probe:8.3f} {matches[0]:10.1f}")
    for (label, _, seconds), total in zip(ours, needed):
        print(f"PyHessian per site needs ~{total:.1f} s to match the per-site errors of {label}, which took "
              f"{seconds:.1f} s: {total / seconds:.2f}x")


if __name__ == "__main__":
    main()
