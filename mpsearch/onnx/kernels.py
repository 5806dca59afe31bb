"""The transformer kernels of `mpsearch.quant.nna.numerics` as ONNX nodes: LayerNorm, softmax, rotary
positions, GLU and the int8 x int8 matmul, each the executor's method of the same name.

Like `layers`, each builder takes the integer export, the module's name and its int8 input, and returns
the name of its int8 output, which carries the module's own name. Everything is int64 (exact) except
one step of the LayerNorm:

  isqrt   numerics computes floor(sqrt(v)) bit by bit (32 rounds). Here sqrt runs in float64 on v, which
          the normalisation has put in [2^60, 2^62): the float root is within 2^-20 of the true one, so
          its floor is off by at most one, and one integer correction either way (r*r > v, (r+1)^2 <= v)
          gives the exact floor. 12 nodes instead of 200.
  shift   the LayerNorm's right shift depends on each row's exponent, so its 2^s is built in the graph
          (GraphBuilder.runtime_shift); every other shift is an exported constant.

ONNX's integer Div truncates toward zero: it divides only non-negative numbers here (the reciprocals,
halves of sums), where truncation is numerics' floor division; signed values go through
GraphBuilder.rounding_shift, which never lets Div round a negative number.
"""

from __future__ import annotations

import numpy as np

from mpsearch.onnx.graph import GraphBuilder
from mpsearch.quant.nna.executor import IntegerModel
from mpsearch.quant.nna.numerics import (
    NORM_EPS_FRAC_BITS,
    NORM_FRAC_BITS,
    NORM_RANGE,
    SOFTMAX_FRAC_BITS,
    rotary_tables,
)

RECIPROCAL_ONE = 1 << 62


def isqrt(g: GraphBuilder, v: str, hint: str) -> str:
    """floor(sqrt(v)) of int64 v in [2^60, 2^62) (after `reciprocal_sqrt`'s normalisation), exactly."""
    tp = g.onnx.TensorProto
    root = g.int64(g.op("Sqrt", [g.cast(v, tp.DOUBLE, f"{hint}.float")], f"{hint}.float_root"), f"{hint}.estimate")
    over = g.op("Greater", [g.op("Mul", [root, root], f"{hint}.square"), v], f"{hint}.over")
    root = g.op("Sub", [root, g.int64(over, f"{hint}.down")], f"{hint}.lowered")
    above = g.op("Add", [root, g.const(1)], f"{hint}.next")
    under = g.op("LessOrEqual", [g.op("Mul", [above, above], f"{hint}.next_square"), v], f"{hint}.under")
    return g.op("Add", [root, g.int64(under, f"{hint}.up")], hint)


def reciprocal_sqrt(g: GraphBuilder, v: str, hint: str) -> tuple[str, str]:
    """(r, e) of `numerics.reciprocal_sqrt` for int64 v in [1, 2^62): v * 4^e in [2^60, 2^62), then
    r = 2^62 // isqrt(v * 4^e)."""
    exponent = None
    for step in (16, 8, 4, 2, 1):
        small = g.op("Less", [v, g.const(1 << (62 - 2 * step))], f"{hint}.small{step}")
        v = g.op("Where", [small, g.op("Mul", [v, g.const(1 << (2 * step))], f"{hint}.scaled{step}"), v],
                 f"{hint}.normal{step}")
        taken = g.op("Mul", [g.int64(small, f"{hint}.took{step}"), g.const(step)], f"{hint}.step{step}")
        exponent = taken if exponent is None else g.op("Add", [exponent, taken], f"{hint}.exponent")
    root = isqrt(g, v, f"{hint}.isqrt")
    return g.op("Div", [g.const(RECIPROCAL_ONE), root], f"{hint}.reciprocal"), exponent


def layer_norm(g: GraphBuilder, model: IntegerModel, name: str, x8: str, axis: int, ndim: int) -> str:
    """LayerNorm `name` of int8 codes over `axis` of an `ndim`-dimensional tensor (`numerics.layer_norm_codes`)."""
    a, n = model.arrays, model.numerics
    axis = axis % ndim
    tail = (1,) * (ndim - 1 - axis)
    size = a[f"{name}.gamma"].shape[0]
    x = g.int64(x8, f"{name}.in")
    axes = g.const([axis])
    s1 = g.op("ReduceSum", [x, axes], f"{name}.s1", keepdims=1)
    s2 = g.op("ReduceSum", [g.op("Mul", [x, x], f"{name}.squares"), axes], f"{name}.s2", keepdims=1)
    centred = g.op("Sub", [g.op("Mul", [x, g.const(size)], f"{name}.scaled"), s1], f"{name}.centred")
    spread = g.op("Sub", [g.op("Mul", [s2, g.const(size)], f"{name}.cs2"), g.op("Mul", [s1, s1], f"{name}.s1s1")],
                  f"{name}.spread")
    variance = g.op("Add", [g.op("Mul", [spread, g.const(1 << NORM_EPS_FRAC_BITS)], f"{name}.fixed"),
                            g.const(a[f"{name}.eps"], f"{name}.eps")], f"{name}.variance_eps")
    # A constant input without eps has V = 0; numerics makes it 1, so z = 0.
    empty = g.int64(g.op("Less", [variance, g.const(1)], f"{name}.empty"), f"{name}.empty64")
    variance = g.op("Add", [variance, empty], f"{name}.variance")
    reciprocal, exponent = reciprocal_sqrt(g, variance, f"{name}.rsqrt")
    z_shift = g.op("Sub", [g.const(62 - NORM_FRAC_BITS - NORM_EPS_FRAC_BITS // 2), exponent], f"{name}.z_shift")
    z = g.rounding_shift(g.op("Mul", [centred, reciprocal], f"{name}.z_wide"), g.runtime_shift(z_shift, f"{name}.zs"),
                         f"{name}.z_rounded")
    z = g.saturate(z, NORM_RANGE, f"{name}.z")
    # int64 initialisers (C entries each): no narrowing cast that could wrap an out-of-range export.
    gamma = g.const(a[f"{name}.gamma"].reshape(-1, *tail), f"{name}.gamma")
    beta = g.const(a[f"{name}.beta"].reshape(-1, *tail), f"{name}.beta")
    acc = g.op("Add", [g.op("Mul", [z, gamma], f"{name}.scaled_z"), beta], f"{name}.affine")
    acc = g.saturate(acc, n.acc_range, f"{name}.acc_sat")
    out = g.requantize(acc, a[f"{name}.multiplier"], a[f"{name}.shift"], n.act_range, f"{name}.requant")
    return g.to_int8(out, name)


def matmul(g: GraphBuilder, model: IntegerModel, name: str, a8: str, b8: str) -> str:
    """MatMul `name` of two int8 tensors (batched): int32 accumulator, saturated, requantized."""
    a, n = model.arrays, model.numerics
    acc = g.int64(g.op("MatMulInteger", [a8, b8], f"{name}.acc32"), f"{name}.acc")
    acc = g.saturate(acc, n.acc_range, f"{name}.acc_sat")
    return g.to_int8(g.requantize(acc, a[f"{name}.multiplier"], a[f"{name}.shift"], n.act_range,
                                  f"{name}.requant"), name)


def softmax(g: GraphBuilder, model: IntegerModel, name: str, x8: str, valid: str) -> str:
    """Softmax `name` over the last axis of int8 codes where bool `valid` (broadcasting) allows
    (`numerics.softmax_codes`): masked positions get exactly 0."""
    a, n = model.arrays, model.numerics
    table = a[f"{name}.exp_lut"]
    x = g.int64(x8, f"{name}.in")
    filled = g.op("Where", [valid, x, g.const(n.act_range[0])], f"{name}.filled")
    peak = g.op("ReduceMax", [filled], f"{name}.peak", axes=[-1], keepdims=1)
    index = g.op("Add", [g.op("Sub", [filled, peak], f"{name}.below_peak"), g.const(len(table) - 1)],
                 f"{name}.index")
    entry = g.int64(g.op("Gather", [g.const(table, f"{name}.exp_lut", np.int16), index], f"{name}.exp16"),
                    f"{name}.exp_all")
    e = g.op("Where", [valid, entry, g.const(0)], f"{name}.exp")
    total = g.op("ReduceSum", [e, g.const([-1])], f"{name}.total_raw", keepdims=1)
    total = g.op("Add", [total, g.int64(g.op("Equal", [total, g.const(0)], f"{name}.none"), f"{name}.none64")],
                 f"{name}.total")
    numerator = g.op("Add", [g.const(int(a[f"{name}.numerator"]), f"{name}.numerator"),
                             g.op("Div", [total, g.const(2)], f"{name}.half_total")], f"{name}.rounded_numerator")
    reciprocal = g.op("Div", [numerator, total], f"{name}.reciprocal")
    p = g.rounding_shift(g.op("Mul", [e, reciprocal], f"{name}.scaled"), g.shift(SOFTMAX_FRAC_BITS, f"{name}.frac"),
                         f"{name}.rounded")
    return g.to_int8(g.saturate(p, n.act_range, f"{name}.sat"), name)


def rotary(g: GraphBuilder, model: IntegerModel, name: str, x8: str, frames: str, dim: int, max_frames: int) -> str:
    """Rotary positions `name` of int8 codes (B, H, T, D = `dim`), T = `frames` (a 1-element int64 tensor)
    of at most `max_frames`: the int16 cos and sin tables of `rotary_tables(max_frames, dim)` cut to T rows
    (row t of a table does not depend on the utterance's length)."""
    a, n = model.arrays, model.numerics
    cos, sin = rotary_tables(max_frames, dim, model.modules[name]["base"])

    def rows(table: np.ndarray, hint: str) -> str:
        full = g.int64(g.const(table, f"{name}.{hint}_table", np.int16), f"{name}.{hint}64")
        return g.op("Slice", [full, g.const([0]), frames, g.const([0])], f"{name}.{hint}")

    cos, sin = rows(cos, "cos"), rows(sin, "sin")
    x = g.int64(x8, f"{name}.in")
    even = g.op("Slice", [x, g.const([0]), g.const([dim]), g.const([-1]), g.const([2])], f"{name}.even")
    odd = g.op("Slice", [x, g.const([1]), g.const([dim]), g.const([-1]), g.const([2])], f"{name}.odd")

    def rotated(first: tuple[str, str], second: tuple[str, str], combine: str, hint: str) -> str:
        acc = g.op(combine, [g.op("Mul", list(first), f"{name}.{hint}_a"), g.op("Mul", list(second), f"{name}.{hint}_b")],
                   f"{name}.{hint}_acc")
        out = g.requantize(acc, a[f"{name}.multiplier"], a[f"{name}.shift"], n.act_range, f"{name}.{hint}")
        return g.op("Unsqueeze", [out, g.const([-1])], f"{name}.{hint}_pair")

    pairs = [rotated((even, cos), (odd, sin), "Sub", "even_out"), rotated((even, sin), (odd, cos), "Add", "odd_out")]
    interleaved = g.op("Reshape", [g.op("Concat", pairs, f"{name}.pairs", axis=-1), g.op("Shape", [x8], f"{name}.shape")],
                       f"{name}.interleaved")
    return g.to_int8(interleaved, name)


def glu(g: GraphBuilder, model: IntegerModel, name: str, x8: str, axis: int) -> str:
    """GLU `name`: the first half of `axis` times the sigmoid table of the second half, requantized."""
    a, n = model.arrays, model.numerics
    value, gate = g.op("Split", [g.int64(x8, f"{name}.in")], f"{name}.half", outputs=2, axis=axis)
    product = g.op("Mul", [value, g.lookup(a[f"{name}.lut"], gate, f"{name}.gate")], f"{name}.product")
    return g.to_int8(g.requantize(product, a[f"{name}.multiplier"], a[f"{name}.shift"], n.act_range,
                                  f"{name}.requant"), name)
