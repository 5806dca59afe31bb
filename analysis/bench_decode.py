"""Greedy RNN-T decoding, float vs NNA emulation, timed side by side on the same utterances in one run.

Decodes real utterances of the built-in corpus (espeak-ng, synthesised into a scratch folder, or
--corpus to reuse one) with `SpeechTask.transcribe`, the path every trial scores WER with:
  - float: the model as it is;
  - nna:   the same model under an 8-bit uniform policy, apply(..., emulation="nna", numerics from the
           study's hardware profile), calibrated with calibrate_nna on --calib-batches train batches.
The two are timed in turn within every repetition, so drift in machine load hits both alike; medians
of wall and CPU time are reported with their ratio (target: nna <= 2x float), and the encoder's share
(a forward of `encode` alone on the same batches) beside them. Labels per encoder frame are printed
too: a decode's cost depends on how often the prediction network runs.

The model is a trained checkpoint (--checkpoint, a model.pt written by `mpsearch train`), or else the
study's model with random weights whose output layers are sharpened so that greedy decoding emits
about one label every two frames, as a trained character model does.

    python analysis/bench_decode.py [--study studies/quickstart.yaml --utterances 200 --reps 3]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

import torch

from mpsearch.config import StudyConfig
from mpsearch.data.pipeline import SpeechData, load_speech_data
from mpsearch.data.synth import synthesize_corpus
from mpsearch.data.tokenizer import CharTokenizer
from mpsearch.hardware import load_profile
from mpsearch.models import build_model
from mpsearch.quant import Policy, QuantConfig, apply
from mpsearch.quant.nna import NNANumerics, calibrate_nna
from mpsearch.training.tasks import SpeechTask


def sharpen(model: torch.nn.Module) -> None:
    """Random weights decode all blanks or all labels; a stronger encoder share of the joint, a weaker
    predictor share and a blank bias make the decision follow the audio, frame by frame."""
    with torch.no_grad():
        model.encoder.proj.weight *= 4
        model.predictor.proj.weight *= 0.5
        model.joiner.out.weight *= 8
        model.joiner.out.bias[0] = 1.0


def model_and_data(args, scratch: Path) -> tuple[torch.nn.Module, SpeechData, int]:
    study = StudyConfig.from_yaml(args.study)
    data_cfg = study.data
    if args.checkpoint:
        from mpsearch.training.checkpoint import load_checkpoint

        checkpoint = load_checkpoint(args.checkpoint)
        tokenizer = checkpoint.tokenizer()
        data_cfg = data_cfg.model_copy(update={"features": checkpoint.features})
        model = build_model(checkpoint.model, tokenizer.vocab_size, checkpoint.features.n_mels)
        model.load_state_dict(checkpoint.state_dict)
    else:
        tokenizer = CharTokenizer()
        torch.manual_seed(0)
        model = build_model(study.model, tokenizer.vocab_size, data_cfg.features.n_mels)
        if not all(hasattr(model, part) for part in ("encoder", "predictor", "joiner")):
            raise SystemExit(f"Random weights are shaped for an RNN-T only; {args.study} builds a "
                             f"{type(model).__name__}: pass --checkpoint with a trained model.")
        sharpen(model)
    corpus = Path(args.corpus) if args.corpus else scratch / "corpus"
    manifests = synthesize_corpus(corpus, utterances=args.utterances, seed=0, workers=1)
    data = load_speech_data(data_cfg, manifests, scratch / "features", tokenizer, progress=False)
    return model.eval(), data, data_cfg.max_batch_frames


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--study", default="studies/quickstart.yaml", help="model, features, batch size, profile")
    parser.add_argument("--checkpoint", default=None, help="a trained model.pt; default: random weights")
    parser.add_argument("--corpus", default=None, help="built-in corpus folder to reuse (or create)")
    parser.add_argument("--utterances", type=int, default=200, help="corpus size; every utterance is decoded")
    parser.add_argument("--max-batch-frames", type=int, default=None, help="default: the study's")
    parser.add_argument("--calib-batches", type=int, default=2)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (0: leave the default)")
    parser.add_argument("--out", default="analysis/results/bench_decode.json")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    study = StudyConfig.from_yaml(args.study)
    with tempfile.TemporaryDirectory() as tmp:
        model, data, max_batch_frames = model_and_data(args, Path(tmp))
    max_batch_frames = args.max_batch_frames or max_batch_frames
    splits = [data.train, data.dev, data.test]

    numerics = NNANumerics.from_profile(load_profile(study.hardware.profile))
    emulated = apply(model, Policy.uniform(QuantConfig(weight_bits=8, act_bits=8)), emulation="nna",
                     numerics=numerics)
    calibration = []
    for batch in data.train.batches(max_batch_frames, shuffle=True, seed=1):
        calibration.append((batch.feats, batch.feat_lens, batch.targets, batch.target_lens))
        if len(calibration) >= args.calib_batches:
            break
    with torch.no_grad():
        calibrate_nna(emulated, calibration)
    variants = {"float": model, "nna": emulated.eval()}
    tasks = {name: SpeechTask(m, data, max_batch_frames, augment=False) for name, m in variants.items()}

    def decode(name: str) -> list[str]:
        return [hyp for split in splits for hyp in tasks[name].transcribe(split)[1]]

    def encode(name: str) -> None:
        with torch.no_grad():
            for split in splits:
                for batch in split.batches(max_batch_frames):
                    variants[name].encode(batch.feats, batch.feat_lens)

    def timed(fn, name: str) -> tuple[float, float]:
        wall, cpu = time.perf_counter(), time.process_time()
        fn(name)
        return time.perf_counter() - wall, time.process_time() - cpu

    hyps = {name: decode(name) for name in variants}  # warm-up, and the transcripts for the label count
    runs = {f"{kind} {name}": (fn, name) for kind, fn in (("decode", decode), ("encode", encode))
            for name in variants}
    times: dict[str, list[tuple[float, float]]] = {run: [] for run in runs}
    load_before = os.getloadavg()[0]
    for _ in range(args.reps):
        for run, (fn, name) in runs.items():
            times[run].append(timed(fn, name))
    load_after = os.getloadavg()[0]

    frames = sum(int(model.output_lengths(torch.tensor(s.frames())).sum()) for s in splits)
    utterances = sum(len(s) for s in splits)
    labels = {name: sum(len(h) for h in hyps[name]) for name in variants}  # one character per label
    threads = torch.get_num_threads()
    print(f"model: {type(model).__name__} ({args.checkpoint or 'random weights, sharpened'}), study {args.study}; "
          f"{utterances} utterances, {frames} encoder frames, batches of <= {max_batch_frames} frames; "
          f"{threads} threads, {args.reps} reps; load average {load_before:.2f} -> {load_after:.2f}")
    print(f"labels per encoder frame: float {labels['float'] / frames:.2f}, nna {labels['nna'] / frames:.2f}")
    rows = {}
    print(f"{'run':<14}{'wall s':>9}{'ratio':>7}{'cpu s':>9}{'ratio':>7}")
    for run, samples in times.items():
        kind = run.split(" ")[0]
        wall, cpu = (statistics.median(t[i] for t in samples) for i in (0, 1))
        base = times[f"{kind} float"]
        wall_ratio = wall / statistics.median(t[0] for t in base)
        cpu_ratio = cpu / statistics.median(t[1] for t in base)
        rows[run] = {"wall_s": round(wall, 3), "wall_ratio": round(wall_ratio, 3), "cpu_s": round(cpu, 3),
                     "cpu_ratio": round(cpu_ratio, 3)}
        print(f"{run:<14}{wall:>9.3f}{wall_ratio:>7.2f}{cpu:>9.3f}{cpu_ratio:>7.2f}")
    ratio = rows["decode nna"]["wall_ratio"]
    print(f"NNA emulated decode / float decode: {ratio:.2f}x wall, {rows['decode nna']['cpu_ratio']:.2f}x CPU "
          "(target <= 2x)")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    result = {"study": args.study, "checkpoint": args.checkpoint, "utterances": utterances, "encoder_frames": frames,
              "max_batch_frames": max_batch_frames, "threads": threads, "reps": args.reps,
              "torch": torch.__version__, "load_average": [load_before, load_after],
              "labels_per_frame": {name: round(n / frames, 3) for name, n in labels.items()},
              "decode_ratio": ratio, "rows": rows}
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
