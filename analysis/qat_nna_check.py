"""Float vs 8-bit PTQ vs 8-bit QAT under NNA emulation, on a study's trained float RNN-T.

Measures, on the same eval utterances (a fixed, seeded random subset of --eval-split when --max-utts
is given, else the whole split):
  1. float:      the stored float baseline, greedy decoding (model.greedy_decode);
  2. ptq:        uniform 8-bit weights + activations, apply(..., emulation="nna"), calibrate_nna on
                 --calib-batches train batches, no fine-tune, export_int, decoded by the numpy
                 RNNTExecutor (and by the emulated model, which must agree bit for bit);
  3. qat:        the same calibrated emulated model fine-tuned for --steps steps (the forward is the
                 chip's integers, gradients straight-through), decoded by the emulated model's
                 greedy_decode and, unless --skip-qat-executor, by the executor on its export.
Also times a float training step and an emulated training step on the same machine.

    python analysis/qat_nna_check.py --study studies/quickstart.yaml --steps 2 --max-utts 20 \
        --out analysis/results/qat_nna_check_tiny.json
"""

from __future__ import annotations

import argparse
import copy
import json
import tempfile
import time
from pathlib import Path

import torch

from mpsearch.config import StudyConfig, TrainConfig
from mpsearch.data.pipeline import FeatureSet
from mpsearch.eval.wer import error_rates
from mpsearch.hardware import load_profile
from mpsearch.quant import Policy, QuantConfig, apply
from mpsearch.quant.nna import NNANumerics, calibrate_nna, export_int
from mpsearch.quant.nna.executor import RNNTExecutor
from mpsearch.study import Study
from mpsearch.training.trainer import train


def subset(split: FeatureSet, max_utts: int | None, seed: int) -> tuple[FeatureSet, list[int]]:
    """A fixed random subset of `max_utts` utterances (the whole split when None or larger)."""
    n = len(split)
    if not max_utts or max_utts >= n:
        return split, list(range(n))
    idx = sorted(torch.randperm(n, generator=torch.Generator().manual_seed(seed))[:max_utts].tolist())
    part = copy.copy(split)
    part.raw = [split.raw[i] for i in idx]
    part.texts = [split.texts[i] for i in idx]
    part.tokens = [split.tokens[i] for i in idx]
    return part, idx


@torch.no_grad()
def decode_torch(model, split: FeatureSet, tokenizer, max_batch_frames: int) -> tuple[list[str], list[str]]:
    was_training = model.training
    model.eval()
    refs, hyps = [], []
    try:
        for batch in split.batches(max_batch_frames):
            for ids, ref in zip(model.greedy_decode(batch.feats, batch.feat_lens), batch.texts):
                refs.append(ref)
                hyps.append(tokenizer.decode(ids))
    finally:
        model.train(was_training)
    return refs, hyps


def decode_executor(executor: RNNTExecutor, split: FeatureSet, tokenizer,
                    max_batch_frames: int) -> tuple[list[str], list[str]]:
    refs, hyps = [], []
    for batch in split.batches(max_batch_frames):
        for b, ref in enumerate(batch.texts):
            codes = executor.quantize_features(batch.feats[b, : batch.feat_lens[b]].numpy())
            refs.append(ref)
            hyps.append(tokenizer.decode(executor.greedy_decode(codes)))
    return refs, hyps


def scored(refs: list[str], hyps: list[str], seconds: float) -> dict:
    return {**error_rates(refs, hyps), "utterances": len(refs), "decode_seconds": round(seconds, 2)}


def timed(fn, *args):
    start = time.monotonic()
    out = fn(*args)
    return out, time.monotonic() - start


def calibration_batches(study: Study, count: int) -> list[tuple]:
    batches = []
    for batch in study.data.train.batches(study.cfg.data.max_batch_frames, shuffle=True, seed=12345):
        batches.append((batch.feats, batch.feat_lens, batch.targets, batch.target_lens))
        if len(batches) >= count:
            break
    return batches


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--study", default="studies/quickstart.yaml")
    parser.add_argument("--steps", type=int, default=100, help="QAT fine-tune steps under NNA emulation")
    parser.add_argument("--lr", type=float, default=2e-4)
    parser.add_argument("--calib-batches", type=int, default=4)
    parser.add_argument("--eval-split", default="dev", choices=["dev", "test"])
    parser.add_argument("--max-utts", type=int, default=None, help="fixed seeded subset; default whole split")
    parser.add_argument("--float-timing-steps", type=int, default=5,
                        help="float training steps (on a copy) to time a float step; 0 to skip")
    parser.add_argument("--skip-qat-executor", action="store_true")
    parser.add_argument("--profile", default="nna-int8")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="analysis/results/qat_nna_check.json")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    out = Path(args.out)
    if out.parent.resolve() != (Path("analysis/results")).resolve():
        parser.error("--out must be a JSON file under analysis/results/")

    t0 = time.monotonic()
    study = Study(StudyConfig.from_yaml(args.study), progress=False)
    float_model, _ = study.baseline()
    float_model.eval()
    tokenizer, mbf = study.tokenizer, study.cfg.data.max_batch_frames
    eval_set, idx = subset(study.data.split(args.eval_split), args.max_utts, args.seed)
    full = len(study.data.split(args.eval_split))
    print(f"eval: {len(eval_set)} of {full} {args.eval_split} utterances"
          f"{' (seeded random subset)' if len(eval_set) < full else ' (whole split)'}")
    result: dict = {"study": args.study, "eval_split": args.eval_split, "eval_utterances": len(eval_set),
                    "eval_split_size": full, "eval_indices": idx if len(idx) < full else "all",
                    "steps": args.steps, "lr": args.lr, "calib_batches": args.calib_batches,
                    "profile": args.profile, "threads": torch.get_num_threads(), "rows": {}}

    # 1. float
    (refs, hyps), secs = timed(decode_torch, float_model, eval_set, tokenizer, mbf)
    result["rows"]["float"] = scored(refs, hyps, secs)
    print("float", result["rows"]["float"])

    # 2. PTQ: uniform 8-bit, NNA emulation, calibrated, no fine-tune -> executor
    policy = Policy.uniform(QuantConfig(weight_bits=8, act_bits=8))
    numerics = NNANumerics.from_profile(load_profile(args.profile))
    calib = calibration_batches(study, args.calib_batches)
    emulated = apply(float_model, policy, emulation="nna", numerics=numerics)
    _, secs = timed(calibrate_nna, emulated, calib)
    result["calibration_seconds"] = round(secs, 2)
    with tempfile.TemporaryDirectory() as tmp:
        export_int(emulated, Path(tmp) / "ptq.npz")
        executor = RNNTExecutor(Path(tmp) / "ptq.npz")
        (refs, ptq_exec_hyps), secs = timed(decode_executor, executor, eval_set, tokenizer, mbf)
    result["rows"]["ptq_executor"] = scored(refs, ptq_exec_hyps, secs)
    print("ptq_executor", result["rows"]["ptq_executor"])
    (refs, ptq_emu_hyps), secs = timed(decode_torch, emulated, eval_set, tokenizer, mbf)
    result["rows"]["ptq_emulated"] = scored(refs, ptq_emu_hyps, secs)
    result["ptq_executor_equals_emulated"] = ptq_exec_hyps == ptq_emu_hyps
    print("ptq_emulated", result["rows"]["ptq_emulated"], "agree:", result["ptq_executor_equals_emulated"])

    # Timing a float training step on a copy (the baseline itself is untouched).
    if args.float_timing_steps:
        float_copy = copy.deepcopy(float_model)
        fres = train(study.task(float_copy, augment=False),
                     TrainConfig(max_steps=args.float_timing_steps, lr=args.lr, warmup_steps=0,
                                 eval_every=10**9, checkpoint_every=10**9, augment=False, seed=args.seed),
                     progress=False)
        result["float_step_seconds"] = round(fres.seconds / max(1, fres.steps), 3)
        del float_copy

    # 3. QAT under NNA emulation: fine-tune the calibrated emulated model.
    task = study.task(emulated, augment=False)
    qres = train(task, TrainConfig(max_steps=args.steps, lr=args.lr, warmup_steps=max(0, args.steps // 10),
                                   eval_every=10**9, checkpoint_every=10**9, augment=False, seed=args.seed),
                 progress=False)
    result["qat_train_seconds"] = round(qres.seconds, 2)
    result["qat_step_seconds"] = round(qres.seconds / max(1, qres.steps), 3)
    result["qat_final_loss_ema"] = qres.final_loss
    (refs, qat_emu_hyps), secs = timed(decode_torch, emulated, eval_set, tokenizer, mbf)
    result["rows"]["qat_emulated"] = scored(refs, qat_emu_hyps, secs)
    print("qat_emulated", result["rows"]["qat_emulated"])
    if not args.skip_qat_executor:
        with tempfile.TemporaryDirectory() as tmp:
            export_int(emulated, Path(tmp) / "qat.npz")
            executor = RNNTExecutor(Path(tmp) / "qat.npz")
            (refs, qat_exec_hyps), secs = timed(decode_executor, executor, eval_set, tokenizer, mbf)
        result["rows"]["qat_executor"] = scored(refs, qat_exec_hyps, secs)
        result["qat_executor_equals_emulated"] = qat_exec_hyps == qat_emu_hyps
        print("qat_executor", result["rows"]["qat_executor"], "agree:", result["qat_executor_equals_emulated"])

    fw = result["rows"]["float"]["wer"]
    result["qat_minus_float_wer_pp"] = 100 * (result["rows"]["qat_emulated"]["wer"] - fw)
    result["ptq_minus_float_wer_pp"] = 100 * (result["rows"]["ptq_executor"]["wer"] - fw)
    result["target_met"] = result["qat_minus_float_wer_pp"] <= 0.5
    result["total_seconds"] = round(time.monotonic() - t0, 1)

    print(f"\n{'row':<14}{'WER %':>8}{'CER %':>8}{'utts':>6}{'decode s':>10}")
    for name, row in result["rows"].items():
        print(f"{name:<14}{100 * row['wer']:>8.2f}{100 * row['cer']:>8.2f}{row['utterances']:>6}"
              f"{row['decode_seconds']:>10.1f}")
    print(f"QAT steps {qres.steps}, {result['qat_step_seconds']} s/step emulated"
          f" vs {result.get('float_step_seconds', 'n/a')} s/step float; calibration "
          f"{result['calibration_seconds']} s; total {result['total_seconds']} s")
    print(f"QAT - float WER: {result['qat_minus_float_wer_pp']:+.2f} pp (target <= +0.5): "
          f"{'met' if result['target_met'] else 'NOT met'}")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
