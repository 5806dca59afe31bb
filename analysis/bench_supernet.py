"""Cost of a supernet step against a QAT step on the quickstart RNN-T shape, measured side by side.

The model is mpsearch.models.rnnt.RNNT with studies/quickstart.yaml's params (untrained weights: the
cost of a step does not depend on them), searched over search_spaces/rnnt_groups.yaml (6 bit widths per
group, so K = 6 candidates per site). Variants, each one optimiser step on the same batch:

    float          the float model
    qat w8         quant.apply(uniform 8-bit weights, float activations): the supernet's numerics
    sn weights     supernet weight update (every candidate quantized and mixed, logits constant)
    sn logits      supernet logit update (weights constant, expected latency added to the loss)
    sn step        one supernet step as the search runs it: a weight update plus a logit update

Variants are timed in turn within every repetition, so drift in machine load hits them all alike; the
median is reported. Memory is what autograd saves for the backward pass (bytes of the distinct tensors
packed by saved_tensors_hooks), which is what grows with the candidates; parameters and optimiser state
are listed beside it.

    python analysis/bench_supernet.py [--batch 20 --frames 400 --labels 20 --reps 3 --threads 1]

Writes analysis/results/bench_supernet.json and .csv.
"""

from __future__ import annotations

import argparse
import csv
import json
import statistics
import time
from pathlib import Path

import torch
from torch import nn

from mpsearch.config import SupernetConfig
from mpsearch.models import RNNT, RNNTConfig
from mpsearch.quant import Policy, QuantConfig, apply, find_sites
from mpsearch.space import SearchSpace
from mpsearch.supernet import ExpectedCost, Supernet, SupernetTrainer

ROOT = Path(__file__).resolve().parents[1]
QUICKSTART = {"subsampling": "conv", "enc_hidden": 256, "enc_layers": 2, "joint_dim": 160, "ctc_weight": 0.5}


def saved_bytes(fn) -> int:
    """Bytes of the distinct tensors autograd saves while `fn` builds the graph."""
    seen: dict[tuple, int] = {}

    def pack(t: torch.Tensor):
        storage = t.untyped_storage()
        seen[(storage.data_ptr(), storage.nbytes())] = storage.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn()
    return sum(seen.values())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=20)
    parser.add_argument("--frames", type=int, default=400)
    parser.add_argument("--labels", type=int, default=20)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: leave the default)")
    parser.add_argument("--out", default=str(ROOT / "analysis" / "results" / "bench_supernet"))
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    n_mels, vocab = 80, 30
    model = RNNT(RNNTConfig(n_mels=n_mels, vocab_size=vocab, **QUICKSTART))
    feats = torch.randn(args.batch, args.frames, n_mels)
    feat_lens = torch.full((args.batch,), args.frames)
    targets = torch.randint(1, vocab, (args.batch, args.labels))
    target_lens = torch.full((args.batch,), args.labels)
    batch = (feats, feat_lens, targets, target_lens)

    space = SearchSpace.from_yaml(ROOT / "search_spaces" / "rnnt_groups.yaml", find_sites(model))
    qat = apply(model, Policy.uniform(QuantConfig(weight_bits=8, act_bits=None)))
    supernet = Supernet(model, space)
    candidates = max(len(cs.choices) for cs in supernet.choice_sets)
    cfg = SupernetConfig(steps=100, gumbel=True)
    trainer = SupernetTrainer(supernet, ExpectedCost(supernet, "nna-int8"), cfg, lam=1.0)
    # Single optimizer steps, not the training loop: each kind of update is timed alone, side by side with the
    # supernet's own weight and logit steps on the same batch.
    optimizers = {m: torch.optim.AdamW(m.parameters(), lr=1e-4) for m in (model, qat)}

    def plain_step(m: nn.Module) -> None:
        m.train()
        optimizers[m].zero_grad(set_to_none=True)
        m(*batch).backward()
        optimizers[m].step()

    steps = {
        "float": lambda: plain_step(model),
        "qat w8": lambda: plain_step(qat),
        "sn weights": lambda: trainer.weight_step(batch, 0),
        "sn logits": lambda: trainer.arch_step(batch, 0),
        "sn step": lambda: (trainer.weight_step(batch, 0), trainer.arch_step(batch, 0)),
    }
    # Forward passes only, for the memory autograd holds at the peak of each kind of update.
    forwards = {
        "float": lambda: model(*batch),
        "qat w8": lambda: qat(*batch),
        "sn weights": lambda: (supernet.set_probs([p.detach() for p in supernet.probabilities(1.0)]),
                               supernet.model(*batch)),
        "sn logits": lambda: (supernet.set_probs(supernet.probabilities(1.0)), supernet.model(*batch)),
    }
    memory = {}
    weights = supernet.weight_parameters()
    for name, fn in forwards.items():
        for p in weights:  # a logit update holds the weights constant
            p.requires_grad_(name != "sn logits")
        memory[name] = saved_bytes(fn)
    for p in weights:
        p.requires_grad_(True)
    memory["sn step"] = max(memory["sn weights"], memory["sn logits"])

    def timed(fn) -> tuple[float, float]:
        wall, cpu = time.perf_counter(), time.process_time()
        fn()
        return time.perf_counter() - wall, time.process_time() - cpu

    for fn in steps.values():  # warm-up
        fn()
    times: dict[str, list[tuple[float, float]]] = {name: [] for name in steps}
    for _ in range(args.reps):
        for name, fn in steps.items():
            times[name].append(timed(fn))

    param_bytes = {"float": sum(p.numel() * p.element_size() for p in model.parameters()),
                   "qat w8": sum(p.numel() * p.element_size() for p in qat.parameters()),
                   "sn": sum(p.numel() * p.element_size() for p in supernet.parameters())}
    print(f"model: RNNT quickstart shape ({sum(p.numel() for p in model.parameters()) / 1e6:.2f}M parameters, "
          f"{len(find_sites(model))} sites), space rnnt_groups.yaml, K = {candidates} candidates per site; "
          f"batch {args.batch} x {args.frames} frames, {args.labels} labels, {torch.get_num_threads()} threads, "
          f"{args.reps} reps")
    base = {k: statistics.median(t[k] for t in times["qat w8"]) for k in (0, 1)}
    rows = []
    print(f"{'variant':<12}{'wall ms':>9}{'/qat':>7}{'cpu ms':>9}{'/qat':>7}{'saved MiB':>11}{'/qat':>7}")
    for name, samples in times.items():
        wall = statistics.median(t[0] for t in samples)
        cpu = statistics.median(t[1] for t in samples)
        row = {"variant": name, "wall_ms": round(1000 * wall, 2), "wall_ratio_to_qat": round(wall / base[0], 3),
               "cpu_ms": round(1000 * cpu, 2), "cpu_ratio_to_qat": round(cpu / base[1], 3),
               "saved_bytes": memory[name], "saved_ratio_to_qat": round(memory[name] / memory["qat w8"], 3)}
        rows.append(row)
        print(f"{name:<12}{row['wall_ms']:>9.1f}{row['wall_ratio_to_qat']:>7.2f}{row['cpu_ms']:>9.1f}"
              f"{row['cpu_ratio_to_qat']:>7.2f}{memory[name] / 2**20:>11.1f}{row['saved_ratio_to_qat']:>7.2f}")
    print(f"parameters + logits: float {param_bytes['float'] / 2**20:.2f} MiB, supernet {param_bytes['sn'] / 2**20:.2f} MiB")
    step = next(r for r in rows if r["variant"] == "sn step")
    print(f"bound: a supernet step may cost at most K = {candidates} QAT steps; measured "
          f"{step['wall_ratio_to_qat']:.2f}x wall, {step['cpu_ratio_to_qat']:.2f}x cpu, "
          f"{step['saved_ratio_to_qat']:.2f}x saved memory")

    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    meta = {"model": "RNNT quickstart shape", "params": QUICKSTART, "space": "search_spaces/rnnt_groups.yaml",
            "candidates_per_site": candidates, "batch": args.batch, "frames": args.frames, "labels": args.labels,
            "threads": torch.get_num_threads(), "reps": args.reps, "parameter_bytes": param_bytes}
    out.with_suffix(".json").write_text(json.dumps({**meta, "rows": rows}, indent=2) + "\n")
    with out.with_suffix(".csv").open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    print(f"wrote {out.with_suffix('.json')} and {out.with_suffix('.csv')}")


if __name__ == "__main__":
    main()
