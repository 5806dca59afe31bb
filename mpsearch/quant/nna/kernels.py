"""The integer kernels of the NNA emulation in torch: exact matmuls, table lookups, in-place
requantisation, and the scale arithmetic that turns frozen float scales into the chip's integers.

Matmuls run as int8 GEMMs with int32 accumulators on CPU, elsewhere as float matmuls of
integer-valued tensors (float32 while |int8 * int8 * K| <= 2^24, else float64, exact below 2^53);
requantisation and lookup tables run on int64 tensors with the primitives of `numerics`, shared with
the reference executor.
"""

from __future__ import annotations

import functools
import time

import numpy as np
import torch
from torch import Tensor

from mpsearch.quant.nna.numerics import NNANumerics, quantize_multipliers, rounding_shift
from mpsearch.quant.parts import MIN_SCALE


def act_scale(absmax: float, numerics: NNANumerics, cap: float | None = None) -> float:
    """Per-tensor scale of a signed activation observed up to |x| <= absmax (capped at `cap`)."""
    peak = min(absmax, cap) if cap is not None else absmax
    return max(peak / numerics.act_range[1], MIN_SCALE)


def to_numpy64(x: Tensor | float) -> np.ndarray:
    if isinstance(x, Tensor):
        return x.detach().to("cpu", torch.float64).numpy()
    return np.asarray(x, dtype=np.float64)


def multipliers(reals: list[Tensor | float], numerics: NNANumerics,
                device: torch.device) -> tuple[list[Tensor], Tensor]:
    """`quantize_multipliers` on torch scales: int64 multipliers and shifts on `device`."""
    ms, shift = quantize_multipliers([to_numpy64(r) for r in reals], numerics.multiplier_bits)
    return [torch.from_numpy(m).to(device) for m in ms], torch.from_numpy(shift).to(device)


# Operands of the integer matmuls are int8 codes (activations and weights are at most 8 bits), so
# every product is at most 2^14 in magnitude.
MAX_PRODUCT = 1 << 14
# float32 holds every integer up to 2^24: a matmul whose partial sums stay below that is exact in
# float32 whatever order the GEMM sums in (each product is exact, each partial sum an integer).
FLOAT32_EXACT = 1 << 24
INT32_MAX = (1 << 31) - 1


@functools.cache
def int8_gemm_is_faster() -> bool:
    """Whether this CPU's int8 GEMM (torch._int_mm) beats float32 on a matmul of the emulation's size.

    With VNNI-class instructions it is several times faster; without them torch falls back to a
    reference kernel tens of times slower than float32. Measured once per process (milliseconds), since
    no torch flag tells the two apart; both are exact, so the choice changes speed only.
    """
    g = torch.Generator().manual_seed(0)
    a = torch.randint(-128, 128, (32, 128), generator=g, dtype=torch.int8)
    b = torch.randint(-128, 128, (128, 128), generator=g, dtype=torch.int8)
    a32, b32 = a.to(torch.float32), b.to(torch.float32)

    def best_of(fn) -> float:
        fn()
        times = []
        for _ in range(3):
            start = time.perf_counter()
            fn()
            times.append(time.perf_counter() - start)
        return min(times)

    return best_of(lambda: torch._int_mm(a, b)) < best_of(lambda: torch.matmul(a32, b32))


def exact_matmul_dtype(inner: int, device: torch.device) -> torch.dtype:
    """The cheapest operand dtype in which an int8 x int8 matmul over `inner` terms is exact: on a CPU
    whose int8 GEMM is fast, int8 itself (int32 accumulators, exact while no sum can reach 2^31), else
    float32 while every partial sum stays below 2^24, else float64 (exact below 2^53)."""
    if device.type == "cpu" and inner * MAX_PRODUCT <= INT32_MAX and int8_gemm_is_faster():
        return torch.int8
    if inner * MAX_PRODUCT > FLOAT32_EXACT or torch.is_autocast_enabled(device.type):
        return torch.float64
    # Reduced-precision float32 GEMMs (TF32, bf16 passes) round the operands; only full fp32 is exact.
    if torch.get_float32_matmul_precision() != "highest":
        return torch.float64
    if device.type == "cuda" and torch.backends.cuda.matmul.allow_tf32:
        return torch.float64
    return torch.float32


def matmul_operands(a: Tensor, b: Tensor, out: Tensor | None = None) -> Tensor:
    """a (..., K) @ b (K, N) for operands in an `exact_matmul_dtype`: int8 ones by the int8 GEMM
    (torch._int_mm, int32 results), others by torch.matmul (results in their dtype)."""
    if a.dtype != torch.int8:
        return torch.matmul(a, b, out=out)
    flat = torch._int_mm(a.reshape(-1, a.shape[-1]), b, out=None if out is None else out.view(-1, b.shape[1]))
    return flat.view(*a.shape[:-1], b.shape[1])


def integer_matmul(codes: Tensor, weight_codes: Tensor) -> Tensor:
    """codes (..., K) @ weight_codes (N, K)^T exactly, as a fresh int64 tensor."""
    dtype = exact_matmul_dtype(codes.shape[-1], codes.device)
    return matmul_operands(codes.to(dtype), weight_codes.to(dtype).t()).to(torch.int64)


def lookup(table: Tensor, index: Tensor) -> Tensor:
    """table[index] for a 1-D table (index_select on the flattened index: several times faster on CPU
    than advanced indexing), in the table's dtype."""
    return torch.index_select(table, 0, index.reshape(-1)).view(index.shape)


def requantize_(acc: Tensor, multiplier: Tensor, shift: Tensor, rounding: str,
                bounds: tuple[int, int]) -> Tensor:
    """`requantize` of a fresh int64 tensor, in place (no new tensor per pass) where the rounding allows."""
    return rounding_shift(acc.mul_(multiplier), shift, rounding, in_place=True).clamp_(bounds[0], bounds[1])
