"""Measure int8 Linear kernels on this CPU, to calibrate the shipped `cpu-int8` hardware profile.

Times PyTorch's dynamically quantised Linear (int8 weights; the input is quantised on each call, as in
int8 CPU inference of a float-trained model) on one thread, over a grid of layer shapes and small
batches (batch 1 is one streaming step; 4 and 16 are chunked steps, which expose the compute rate that
batch 1 hides behind weight reads). Writes one row per case:
    in_features, out_features, weight_bits, batch, time_us      (median over many calls)

Each shape is timed over a pool of copies larger than the per-core L2 cache, visited in turn, so every
call reads its weights from L3 as in a model whose weights exceed L2 (the profile's "on-chip" memory).
Only 8-bit weight kernels exist on CPU, so weight_bits is always 8: narrower widths cannot be measured.

    python analysis/measure_cpu_int8.py --out analysis/results/cpu_int8_measurements.csv
    mpsearch hardware calibrate --measurements analysis/results/cpu_int8_measurements.csv \
        --profile mpsearch/hardware/profiles/cpu-int8.yaml --base cpu-int8
"""

from __future__ import annotations

import argparse
import itertools
import math
import platform
import statistics
import time
import warnings

import pandas as pd
import torch
from torch.ao.nn.quantized.dynamic import Linear as DynamicQuantizedLinear

from mpsearch.artifacts import atomic_path

SIZES = (64, 128, 256, 512, 1024, 2048)
BATCHES = (1, 4, 16)
COLUMNS = ["in_features", "out_features", "weight_bits", "batch", "time_us"]


def pick_engine() -> str:
    engines = torch.backends.quantized.supported_engines
    for name in ("x86", "fbgemm", "qnnpack"):
        if name in engines:
            return name
    raise SystemExit(f"no int8 quantized engine in this torch build (have {engines})")


def make_pool(in_features: int, out_features: int, pool_bytes: int) -> list[DynamicQuantizedLinear]:
    copies = max(2, math.ceil(pool_bytes / (in_features * out_features)))
    pool = []
    for _ in range(copies):
        layer = DynamicQuantizedLinear(in_features, out_features)
        weight = torch.quantize_per_tensor(torch.randn(out_features, in_features) * 0.05, 0.002, 0, torch.qint8)
        layer.set_weight_bias(weight, torch.zeros(out_features))
        pool.append(layer)
    return pool


def time_case(pool, batch: int, min_calls: int, max_seconds: float) -> float:
    x = torch.randn(batch, pool[0].in_features)
    for layer in pool[: min(len(pool), 20)]:
        layer(x)
    times = []
    start = time.perf_counter()
    for layer in itertools.cycle(pool):
        t0 = time.perf_counter_ns()
        layer(x)
        times.append(time.perf_counter_ns() - t0)
        enough = len(times) >= max(min_calls, len(pool))
        if enough or (len(times) >= 30 and time.perf_counter() - start > max_seconds):
            break
    return statistics.median(times) / 1000.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="analysis/results/cpu_int8_measurements.csv")
    parser.add_argument("--pool-mb", type=float, default=16.0, help="weights cycled per shape (> L2 cache)")
    parser.add_argument("--min-calls", type=int, default=300)
    parser.add_argument("--case-seconds", type=float, default=1.0, help="time cap per case")
    parser.add_argument("--max-seconds", type=float, default=170.0, help="stop early past this wall time")
    args = parser.parse_args()

    warnings.filterwarnings("ignore", message=".*quantize_per_tensor.*")
    torch.set_num_threads(1)
    torch.backends.quantized.engine = pick_engine()
    print(f"engine {torch.backends.quantized.engine}, torch {torch.__version__}, {platform.processor() or platform.machine()}, "
          "1 thread")
    print("note: only 8-bit weight kernels exist on CPU; weight_bits other than 8 cannot be measured")

    rows = []
    started = time.perf_counter()
    shapes = list(itertools.product(SIZES, SIZES))
    for i, (in_features, out_features) in enumerate(shapes):
        if time.perf_counter() - started > args.max_seconds:
            print(f"stopping early after {i} of {len(shapes)} shapes (--max-seconds {args.max_seconds})")
            break
        pool = make_pool(in_features, out_features, int(args.pool_mb * 2**20))
        for batch in BATCHES:
            t = time_case(pool, batch, args.min_calls, args.case_seconds)
            rows.append((in_features, out_features, 8, batch, round(t, 3)))
            print(f"[{i + 1}/{len(shapes)}] {in_features:>5} x {out_features:<5} batch {batch:>2}: {t:9.2f} us "
                  f"({len(pool)} copies)", flush=True)
        del pool

    with atomic_path(args.out) as tmp:
        pd.DataFrame(rows, columns=COLUMNS).to_csv(tmp, index=False)
    print(f"wrote {len(rows)} rows to {args.out} in {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
