"""The accelerator's integer arithmetic: the integer primitives of the numerics spec
(`mpsearch.quant.accelerator.NNANumerics`).

Every primitive here is written once, with Python operators only (`*`, `+`, `>>`, `<<`, comparisons,
`.clip`), so the same function runs on numpy int64 arrays (the reference executor) and on torch int64
tensors (the emulation in training): the two cannot drift apart. This module imports numpy only,
never torch. Scale arithmetic (`quantize_multipliers`, `build_lut`) is float64 numpy and runs once per
frozen scale, outside any hot path; its integer results are what the chip (and the export) holds.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np

from mpsearch.quant.accelerator import NNANumerics, signed_range
from mpsearch.quant.nna.errors import NNAError
from mpsearch.quant.rounding import ROUNDINGS, rounding_half


def rounding_shift(x, shift, rounding: str, *, in_place: bool = False, half=None):
    """x / 2^shift rounded to an integer as `rounding` (a `ROUNDINGS` mode) says; x and shift are integer
    arrays (shift >= 0), numpy or torch.

    With in_place, x is an array no one else holds, rounded in place where the mode allows (no new
    array per pass in the emulation's hot loops). `half` is what the mode rounds at,
    rounding_half(shift) unless given: a half_up caller that added it to x already passes 0.
    """
    mode = ROUNDINGS.get(rounding)
    half = rounding_half(shift) if half is None else half
    return mode.shift_(x, shift, half) if in_place else mode.shift(x, shift, half)


def saturate(x, bounds: tuple[int, int]):
    """Clamp an integer array to [lo, hi] (the chip saturates; it never wraps)."""
    return x.clip(bounds[0], bounds[1])


def requantize(acc, multiplier, shift, rounding: str, bounds: tuple[int, int]):
    """saturate(round(acc * M / 2^shift)): the chip's requantisation of one accumulator."""
    return saturate(rounding_shift(acc * multiplier, shift, rounding), bounds)


def requantize_sum(terms, multipliers, shift, rounding: str, bounds: tuple[int, int]):
    """saturate(round(sum_i terms_i * M_i / 2^shift)), one rounding for the whole sum.

    The chip's way to add tensors of different scales (a saturating add, the LSTM's input and
    recurrent accumulators, the cell update f*c + i*g): each term is brought to a common fixed-point
    scale by its own multiplier and the sum is shifted once.
    """
    total = terms[0] * multipliers[0]
    for term, multiplier in zip(terms[1:], multipliers[1:]):
        total = total + term * multiplier
    return saturate(rounding_shift(total, shift, rounding), bounds)


def quantize_multipliers(real_scales, multiplier_bits: int) -> tuple[list[np.ndarray], np.ndarray]:
    """Integer multipliers M_i and one right shift per element with M_i / 2^shift ~ real_scales[i].

    `real_scales` is a sequence of same-shaped float arrays (one per term of `requantize_sum`). The
    largest M of each element lies in [2^(b-1), 2^b) with b = multiplier_bits, so it keeps b
    significant bits; the others share its shift. Computed in float64 numpy, deterministically.
    Ratios of 2^b or more get M = 2^b - 1 and shift 0: any such ratio maps every nonzero
    accumulator past the int8 range, so the saturated output is the same as with the exact ratio.
    Ratios too small to survive a 62-bit shift get M = 0 (the output rounds to 0 anyway).
    """
    reals = [np.asarray(r, dtype=np.float64) for r in real_scales]
    shape = np.broadcast_shapes(*(r.shape for r in reals))
    reals = [np.broadcast_to(r, shape) for r in reals]
    if any((r < 0).any() or not np.isfinite(r).all() for r in reals):
        raise NNAError("Requantisation scales must be finite and non-negative; recalibrate the model.")
    largest = np.maximum.reduce(reals) if len(reals) > 1 else reals[0]
    _, exponent = np.frexp(largest)  # largest = m * 2^exponent, m in [0.5, 1)
    shift = multiplier_bits - exponent.astype(np.int64)
    too_large = shift < 0
    too_small = (shift > 62) | (largest == 0)
    shift = np.clip(shift, 0, 62)
    limit = (1 << multiplier_bits) - 1

    def scaled(r: np.ndarray, shift: np.ndarray) -> np.ndarray:
        value = np.where(too_large, np.minimum(r, limit), np.ldexp(r, shift))  # 2^shift scales exactly
        return np.rint(np.where(too_small, 0.0, value)).astype(np.int64)

    multipliers = [scaled(r, shift) for r in reals]
    # rint may round the largest M up to 2^b: one bit less of shift keeps it in range.
    overflow = np.maximum.reduce(multipliers) > limit
    if overflow.any():
        shift = np.where(overflow, shift - 1, shift)
        multipliers = [scaled(r, shift) for r in reals]
    shift = np.where(too_small, 0, shift).astype(np.int64)
    return [np.asarray(m, dtype=np.int64) for m in multipliers], np.asarray(shift, dtype=np.int64)


def quantize_multiplier(real_scale, multiplier_bits: int = 15) -> tuple[np.ndarray, np.ndarray]:
    """(M, shift) with M / 2^shift ~ real_scale, M in [2^(b-1), 2^b) for b = multiplier_bits."""
    (multiplier,), shift = quantize_multipliers([real_scale], multiplier_bits)
    return multiplier, shift


def lut_inputs(bits: int) -> np.ndarray:
    """Every input code of a `bits`-wide table, in index order: entry i is for code i - 2^(bits-1)."""
    lo, hi = signed_range(bits)
    return np.arange(lo, hi + 1, dtype=np.int64)


def build_lut(fn: Callable[[np.ndarray], np.ndarray], in_scale: float, out_scale: float,
              in_bits: int = 8, out_bits: int = 8) -> np.ndarray:
    """The 2^in_bits-entry table of round(fn(code * in_scale) / out_scale), saturated to out_bits.

    float64 numpy with ties to even (np.rint), so a table depends only on its two scales; the chip
    (and the emulation) index it by input code + 2^(in_bits-1).
    """
    x = lut_inputs(in_bits).astype(np.float64) * np.float64(in_scale)
    y = np.rint(fn(x) / np.float64(out_scale))
    lo, hi = signed_range(out_bits)
    return np.clip(y, lo, hi).astype(np.int64)


def sigmoid(x: np.ndarray) -> np.ndarray:
    """Logistic function in float64, stable for large |x|."""
    e = np.exp(-np.abs(x))
    return np.where(x >= 0, 1.0 / (1.0 + e), e / (1.0 + e))


LUT_FUNCTIONS: dict[str, Callable[[np.ndarray], np.ndarray]] = {"sigmoid": sigmoid, "tanh": np.tanh}
# Inputs beyond these already give the extreme int8 output (127 * sigmoid(5.6) > 126.5,
# 127 * tanh(3.2) > 126.5), so a LUT's input range is capped there: more resolution, nothing lost.
LUT_INPUT_CAPS: dict[str, float] = {"sigmoid": 8.0, "tanh": 4.0}


def silu(x: np.ndarray) -> np.ndarray:
    """x * sigmoid(x) (SiLU, Swish) in float64."""
    return x * sigmoid(x)


LUT_FUNCTIONS["silu"] = silu


def gelu(x: np.ndarray) -> np.ndarray:
    """x * Phi(x) (GELU, the erf form) in float64. A model's tanh-approximated GELU gets the same table:
    the two differ by under 1e-3, far below half an int8 step of any calibrated output range."""
    erf = np.vectorize(math.erf, otypes=[np.float64])  # a table has 256 entries; numpy has no erf
    return 0.5 * x * (1.0 + erf(x / np.sqrt(2.0)))


LUT_FUNCTIONS["gelu"] = gelu


# --- transformer and Conformer kernels ---------------------------------------------------------
# Like the primitives above, each kernel is written once with operators and the reductions
# `sum(axis=, keepdims=)` (which numpy arrays and torch tensors both accept), so the emulation (torch
# int64) and the reference executor (numpy int64) run the same integer algorithm.

# LayerNorm: the normalised value (x - mean) / std is held as int16 with this many fractional bits
# (Q5.10: |value| <= sqrt(channels - 1) stays below 32 up to 1024 channels) ...
NORM_FRAC_BITS = 10
NORM_RANGE = signed_range(16)
# ... gamma as int16 codes with one per-tensor scale, beta as int32 at gamma's scale * 2^-NORM_FRAC_BITS.
NORM_GAMMA_BITS = 16
# The variance sum carries this many fractional bits (even), so eps (in codes^2) keeps its precision
# when the variance is as small as eps; C * S2 - S1^2 < 2^34 for C <= 1024 leaves room in int64.
NORM_EPS_FRAC_BITS = 16
# eps * C^2 / s^2 * 2^NORM_EPS_FRAC_BITS is capped here: beyond it eps dominates any int8 variance.
NORM_MAX_EPS = 1 << 58

# Softmax: exp(x - max) from a table of 2^activation_bits entries indexed by the code difference
# (0 down to -(2^b - 1)), as Q0.15 in int16 (scale 1/SOFTMAX_EXP_ONE; the scale cancels in the ratio)
SOFTMAX_EXP_ONE = (1 << 15) - 1
# ... the row sum in int32, one reciprocal per row as round(numerator / sum) with numerator =
# round(2^SOFTMAX_FRAC_BITS / out_scale), and probability codes round(e * reciprocal / 2^SOFTMAX_FRAC_BITS).
SOFTMAX_FRAC_BITS = 30
# Probability output scales lie in [SOFTMAX_MIN_PEAK, 1] / 127: a calibrated peak below 1 buys
# resolution for diffuse attention; the floor keeps numerator * exp within int64.
SOFTMAX_MIN_PEAK = 2.0 ** -7

# Rotary positions: cos and sin as int16 with this many fractional bits (1.0 = 16384 fits).
ROTARY_FRAC_BITS = 14


def _amax(x, axis: int):
    """max over `axis`, kept as a size-1 dim (numpy's ndarray.max and torch's Tensor.amax)."""
    if hasattr(x, "amax"):
        return x.amax(axis=axis, keepdims=True)
    return x.max(axis=axis, keepdims=True)


def isqrt(v):
    """floor(sqrt(v)) of an integer array with 0 <= v < 2^63, bit by bit as hardware does it (exact)."""
    rest = v
    root = v * 0
    for k in range(31, -1, -1):
        bit = 1 << (2 * k)
        trial = root + bit
        take = rest >= trial
        rest = rest - take * trial
        root = (root >> 1) + take * bit
    return root


def reciprocal_sqrt(v):
    """(r, e) with r * 2^e / 2^62 ~ 1/sqrt(v), for an integer array 1 <= v < 2^62: floating point as
    hardware does it. v is normalised to v * 4^e in [2^60, 2^62) (a leading-zero count, by binary
    search), then r = 2^62 // isqrt(v * 4^e), in (2^31, 2^32]: 31 significant bits at any magnitude."""
    e = v * 0
    for step in (16, 8, 4, 2, 1):
        small = v < (1 << (62 - 2 * step))
        v = v << (small * (2 * step))
        e = e + small * step
    return (v * 0 + (1 << 62)) // isqrt(v), e


def layer_norm_codes(x, gamma, beta, eps_term, multiplier, shift, numerics: NNANumerics, axis: int = -1):
    """LayerNorm of int8 codes `x` over `axis`, to int8 codes (see NNALayerNorm for the scales).

    With C channels, S1 = sum x and S2 = sum x^2 (int32), F = NORM_EPS_FRAC_BITS:
      d = C * x - S1                         C times the deviation from the mean, exact
      V = (C * S2 - S1^2) * 2^F + eps_term   C^2 * 2^F times (variance + eps) in codes^2 (int64)
      (r, e) = reciprocal_sqrt(V)            1/sqrt(V) ~ r * 2^(e - 62)
      z = sat16(round(d * r / 2^(62 - 10 - F/2 - e)))     (x - mean) / std in Q5.10
      out = sat8(round(sat32(z * gamma + beta) * M / 2^shift))
    The input scale cancels in d / sqrt(V) and enters only through eps_term = eps * C^2 / s_in^2 * 2^F.
    gamma and beta broadcast against x (shape them for `axis`).
    """
    size = x.shape[axis]
    s1 = x.sum(axis=axis, keepdims=True)
    s2 = (x * x).sum(axis=axis, keepdims=True)
    centred = x * size - s1
    variance = ((s2 * size - s1 * s1) << NORM_EPS_FRAC_BITS) + eps_term
    variance = variance + (variance < 1) * 1  # a constant input without eps: V = 0 -> 1, z = 0
    reciprocal, exponent = reciprocal_sqrt(variance)
    z_shift = 62 - NORM_FRAC_BITS - NORM_EPS_FRAC_BITS // 2 - exponent
    z = rounding_shift(centred * reciprocal, z_shift, numerics.rounding)
    acc = saturate(saturate(z, NORM_RANGE) * gamma + beta, numerics.acc_range)
    return requantize(acc, multiplier, shift, numerics.rounding, numerics.act_range)


def exp_table(in_scale: float, numerics: NNANumerics) -> np.ndarray:
    """The softmax's 2^activation_bits-entry table: entry i is round(exp((i - (2^b - 1)) * in_scale) * (2^15 - 1))."""
    steps = np.arange(-((1 << numerics.activation_bits) - 1), 1, dtype=np.float64)
    return np.rint(np.exp(steps * np.float64(in_scale)) * SOFTMAX_EXP_ONE).astype(np.int64)


def softmax_numerator(out_scale: float) -> int:
    """round(2^SOFTMAX_FRAC_BITS / out_scale): the reciprocal's numerator, with the output scale folded in."""
    return int(np.rint(np.ldexp(1.0, SOFTMAX_FRAC_BITS) / np.float64(out_scale)))


def softmax_codes(x, valid, table, numerator, numerics: NNANumerics):
    """Softmax over the last axis of int8 codes `x` where `valid` (0/1 or bool, broadcast to x's shape)
    is set, to probability codes; invalid positions get exactly 0, a row with none valid all 0.

      m = max of the valid codes;  e = table[x - m] (int16, 0 where invalid);  S = sum e (int32)
      r = (numerator + S // 2) // S;  p = sat8(round(e * r / 2^SOFTMAX_FRAC_BITS))
    """
    keep = valid * 1
    lowest = numerics.act_range[0]
    filled = x * keep + lowest * (1 - keep)
    last = len(table) - 1
    e = table[filled - _amax(filled, -1) + last] * keep
    total = e.sum(axis=-1, keepdims=True)
    total = total + (total == 0) * 1
    reciprocal = (total * 0 + numerator + (total >> 1)) // total
    return saturate(rounding_shift(e * reciprocal, SOFTMAX_FRAC_BITS, numerics.rounding), numerics.act_range)


def rotary_tables(frames: int, dim: int, base: float = 10000.0) -> tuple[np.ndarray, np.ndarray]:
    """(cos, sin) of the rotary angles t * base^(-2i/dim), (frames, dim/2), as int16 Q1.14 (float64 numpy,
    ties to even, so the table depends only on its arguments)."""
    inv_freq = np.float64(base) ** (-np.arange(0, dim, 2, dtype=np.float64) / dim)
    angles = np.arange(frames, dtype=np.float64)[:, None] * inv_freq[None, :]
    one = np.float64(1 << ROTARY_FRAC_BITS)
    return np.rint(np.cos(angles) * one).astype(np.int64), np.rint(np.sin(angles) * one).astype(np.int64)


def rotary_codes(x, cos, sin, multiplier, shift, numerics: NNANumerics):
    """Rotary positions of int8 codes (..., T, D): pair (x_2i, x_2i+1) of frame t becomes
    sat8(round((x_2i * cos - x_2i+1 * sin) * M / 2^shift)), sat8(round((x_2i * sin + x_2i+1 * cos) * M / 2^shift))
    with (cos, sin) the int16 tables of `rotary_tables` for these T and D."""
    even, odd = x[..., 0::2], x[..., 1::2]
    out = x * 0
    out[..., 0::2] = requantize(even * cos - odd * sin, multiplier, shift, numerics.rounding, numerics.act_range)
    out[..., 1::2] = requantize(even * sin + odd * cos, multiplier, shift, numerics.rounding, numerics.act_range)
    return out
