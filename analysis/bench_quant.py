"""Cost of quantization-aware training and of NNA emulation, measured side by side on one batch.

Builds the study's model (default: the quickstart RNN-T from studies/quickstart.yaml, random weights)
and times, on one random batch of the quickstart's shape (about max_batch_frames=8000 padded frames:
32 utterances of 240 frames, 30 labels each):
  - forward (eval mode, no grad): float vs the NNA-emulated model (8-bit uniform policy,
    apply(..., emulation="nna"), calibrated with calibrate_nna on two random batches);
  - training step (train mode, forward + backward + SGD step): float vs NNA emulation vs weight-only
    and w8a8 fake-quantized QAT (uniform and lsq).
Variants are timed in turn within every repetition, so drift in machine load hits them all alike;
medians of wall and CPU time are reported with their ratio to float, and written as JSON.

    python analysis/bench_quant.py [--study studies/quickstart.yaml --batch 32 --frames 240 --reps 7]

Weight-only QAT (act_bits null) keeps the LSTMs on the fused kernel; w8a8 quantizes the hidden state
before every recurrent matmul, which needs the unrolled LSTM; "w8a8-h" quantizes every activation but
the hidden state, so the LSTMs stay fused (one kernel call per layer). "nna" runs the chip's integer
arithmetic (integer LSTM cells unrolled over time) with straight-through gradients.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch
from torch import nn

from mpsearch.config import StudyConfig
from mpsearch.data.tokenizer import CharTokenizer
from mpsearch.models import build_model
from mpsearch.quant import Policy, QuantConfig, apply, calibrating
from mpsearch.quant.nna import calibrate_nna
from mpsearch.quant.nna.base import NNAModule


def random_batch(batch: int, frames: int, labels: int, n_mels: int, vocab: int, seed: int) -> tuple:
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(batch, frames, n_mels, generator=g), torch.full((batch,), frames),
            torch.randint(1, vocab, (batch, labels), generator=g), torch.full((batch,), labels))


def timed(fn, name: str) -> tuple[float, float]:
    wall, cpu = time.perf_counter(), time.process_time()
    fn(name)
    return time.perf_counter() - wall, time.process_time() - cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--study", default="studies/quickstart.yaml")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--frames", type=int, default=240)
    parser.add_argument("--labels", type=int, default=30)
    parser.add_argument("--reps", type=int, default=7)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: leave the default)")
    parser.add_argument("--skip-qat", action="store_true", help="time float and NNA emulation only")
    parser.add_argument("--out", default="analysis/results/bench_quant.json")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    study = StudyConfig.from_yaml(args.study)
    n_mels, vocab = study.data.features.n_mels, CharTokenizer().vocab_size
    model = build_model(study.model, vocab, n_mels)
    batch = random_batch(args.batch, args.frames, args.labels, n_mels, vocab, seed=0)

    policies = {}
    if not args.skip_qat:
        for method in ("uniform", "lsq"):
            w8 = QuantConfig(weight_bits=8, act_bits=None, method=method)
            w8a8 = QuantConfig(weight_bits=8, act_bits=8, method=method)
            policies[f"{method} w8"] = Policy.uniform(w8)
            policies[f"{method} w8a8"] = Policy.uniform(w8a8)
            # Every activation quantized except the LSTM hidden state: the fused LSTM path still applies.
            policies[f"{method} w8a8-h"] = Policy({"re:.*weight_hh_l\\d+(_reverse)?": w8, "_default": w8a8})
    variants: dict[str, nn.Module] = {"float": model}
    for name, policy in policies.items():
        quantized = apply(model, policy)
        with torch.no_grad(), calibrating(quantized):
            quantized(*batch)
        variants[name] = quantized
    emulated = apply(model, Policy.uniform(QuantConfig(weight_bits=8, act_bits=8)), emulation="nna")
    calibrate_nna(emulated, [random_batch(args.batch, args.frames, args.labels, n_mels, vocab, seed)
                             for seed in (1, 2)])
    variants["nna"] = emulated
    # Single optimizer steps, not the training loop: one step of each variant is timed alone, side by side on
    # the same batch, so the ratios compare the quantizers and not the loop around them.
    optimizers = {name: torch.optim.SGD(m.parameters(), lr=1e-4) for name, m in variants.items()}

    def forward(name: str) -> None:
        m = variants[name]
        m.eval()
        with torch.no_grad():
            m(*batch)

    def step(name: str) -> None:
        m, opt = variants[name], optimizers[name]
        m.train()
        opt.zero_grad(set_to_none=True)
        m(*batch).backward()
        opt.step()

    runs = {**{f"forward {name}": (forward, name) for name in ("float", "nna")},
            **{f"step {name}": (step, name) for name in variants}}
    for fn, name in runs.values():  # warm-up
        fn(name)
    times: dict[str, list[tuple[float, float]]] = {run: [] for run in runs}
    for _ in range(args.reps):
        for run, (fn, name) in runs.items():
            times[run].append(timed(fn, name))

    threads = torch.get_num_threads()
    print(f"model: {args.study} ({type(model).__name__}, random weights); batch {args.batch} x {args.frames} "
          f"frames, {args.labels} labels, {threads} threads, {args.reps} reps")
    # CPU time is reported beside wall time: on a shared machine it is the steadier of the two.
    rows = {}
    print(f"{'variant':<22}{'wall ms':>9}{'ratio':>7}{'cpu ms':>9}{'ratio':>7}  LSTM path")
    for run, samples in times.items():
        kind, name = run.split(" ", 1)
        wall = statistics.median(t[0] for t in samples)
        cpu = statistics.median(t[1] for t in samples)
        base = times[f"{kind} float"]
        wall_ratio = wall / statistics.median(t[0] for t in base)
        cpu_ratio = cpu / statistics.median(t[1] for t in base)
        paths = sorted({"nna integer" if isinstance(m, NNAModule) else getattr(m, "_path", lambda: "nn.LSTM")()
                        for m in variants[name].modules() if isinstance(m, nn.LSTM)})
        rows[run] = {"wall_ms": round(1000 * wall, 1), "wall_ratio": round(wall_ratio, 3),
                     "cpu_ms": round(1000 * cpu, 1), "cpu_ratio": round(cpu_ratio, 3), "lstm_path": paths}
        print(f"{run:<22}{1000 * wall:>9.1f}{wall_ratio:>7.2f}{1000 * cpu:>9.1f}{cpu_ratio:>7.2f}"
              f"  {', '.join(paths)}")
    nna_forward, nna_step = rows["forward nna"]["wall_ratio"], rows["step nna"]["wall_ratio"]
    print(f"NNA emulation / float: forward {nna_forward:.2f}x (target <= 2x), training step {nna_step:.2f}x")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    result = {"study": args.study, "model": type(model).__name__, "batch": args.batch, "frames": args.frames,
              "labels": args.labels, "threads": threads, "reps": args.reps, "torch": torch.__version__,
              "nna_forward_ratio": nna_forward, "nna_step_ratio": nna_step, "rows": rows}
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
