"""Cost of quantization-aware training: one float training step vs QAT steps on the same batch.

Builds the project's streaming RNN-T (mpsearch.models.rnnt) when it imports, else a stand-in of the
same shape (2x256 LSTM encoder, embedding + LSTM predictor, linear joiner). Variants are timed in
turn within every repetition, so drift in machine load hits them all alike; the median is reported.

    python analysis/bench_quant.py [--batch 16 --frames 200 --reps 7 --threads 2]

Weight-only QAT (act_bits null) keeps the LSTMs on the fused kernel; w8a8 quantizes the hidden state
before every recurrent matmul, which needs the unrolled LSTM; "w8a8-h" quantizes every activation but
the hidden state, so the LSTMs stay fused (one kernel call per layer).
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from torch import nn

from mpsearch.quant import Policy, QuantConfig, apply, calibrating


class StandInRNNT(nn.Module):
    """Stack-4 front end, 2x256 LSTM encoder, embedding + 1x256 LSTM predictor, tanh joiner."""

    def __init__(self, n_mels: int = 80, vocab: int = 30, hidden: int = 256, joint: int = 256) -> None:
        super().__init__()
        self.frontend = nn.Linear(4 * n_mels, hidden)
        self.encoder = nn.LSTM(hidden, hidden, num_layers=2, batch_first=True)
        self.enc_proj = nn.Linear(hidden, joint)
        self.embed = nn.Embedding(vocab, 64)
        self.predictor = nn.LSTM(64, hidden, batch_first=True)
        self.pred_proj = nn.Linear(hidden, joint)
        self.joiner = nn.Linear(joint, vocab)

    def forward(self, feats, feat_lens, targets, target_lens):
        b, t, f = feats.shape
        x = torch.relu(self.frontend(feats[:, : t - t % 4].reshape(b, t // 4, 4 * f)))
        enc = self.enc_proj(self.encoder(x)[0])
        tokens = torch.cat([torch.zeros_like(targets[:, :1]), targets.clamp_min(0)], dim=1)
        pred = self.pred_proj(self.predictor(self.embed(tokens))[0])
        logits = self.joiner(torch.tanh(enc[:, :, None] + pred[:, None]))
        return torch.log_softmax(logits, dim=-1).mean().neg()  # a surrogate loss of the same cost shape


def build_model(n_mels: int, vocab: int) -> tuple[nn.Module, str]:
    try:
        from mpsearch.models.rnnt import RNNT, RNNTConfig

        return RNNT(RNNTConfig(n_mels=n_mels, vocab_size=vocab)), "mpsearch.models.rnnt.RNNT (default config)"
    except ImportError as exc:  # the model module is optional for this benchmark
        return StandInRNNT(n_mels, vocab), f"stand-in RNN-T ({exc})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--frames", type=int, default=200)
    parser.add_argument("--labels", type=int, default=20)
    parser.add_argument("--reps", type=int, default=7)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: leave the default)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    n_mels, vocab = 80, 30
    model, description = build_model(n_mels, vocab)
    feats = torch.randn(args.batch, args.frames, n_mels)
    feat_lens = torch.full((args.batch,), args.frames)
    targets = torch.randint(1, vocab, (args.batch, args.labels))
    target_lens = torch.full((args.batch,), args.labels)
    batch = (feats, feat_lens, targets, target_lens)

    policies = {}
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
    optimizers = {name: torch.optim.SGD(m.parameters(), lr=1e-4) for name, m in variants.items()}

    def step(name: str) -> tuple[float, float]:
        m, opt = variants[name], optimizers[name]
        m.train()
        wall, cpu = time.perf_counter(), time.process_time()
        opt.zero_grad(set_to_none=True)
        m(*batch).backward()
        opt.step()
        return time.perf_counter() - wall, time.process_time() - cpu

    for name in variants:  # warm-up
        step(name)
    times: dict[str, list[tuple[float, float]]] = {name: [] for name in variants}
    for _ in range(args.reps):
        for name in variants:
            times[name].append(step(name))

    print(f"model: {description}; batch {args.batch} x {args.frames} frames, {args.labels} labels, "
          f"{torch.get_num_threads()} threads, {args.reps} reps")
    # CPU time is reported beside wall time: on a shared machine it is the steadier of the two.
    base_wall = statistics.median(t[0] for t in times["float"])
    base_cpu = statistics.median(t[1] for t in times["float"])
    print(f"{'variant':<16}{'wall ms':>9}{'ratio':>7}{'cpu ms':>9}{'ratio':>7}  LSTM path")
    for name, samples in times.items():
        wall = statistics.median(t[0] for t in samples)
        cpu = statistics.median(t[1] for t in samples)
        paths = sorted({getattr(m, "_path", lambda: "nn.LSTM")() for m in variants[name].modules()
                        if isinstance(m, nn.LSTM)})
        print(f"{name:<16}{1000 * wall:>9.1f}{wall / base_wall:>7.2f}{1000 * cpu:>9.1f}{cpu / base_cpu:>7.2f}"
              f"  {', '.join(paths)}")

if __name__ == "__main__":
    main()
