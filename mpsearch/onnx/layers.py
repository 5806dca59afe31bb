"""One builder per exported layer kind: the executor's method of the same name as ONNX nodes.

Each takes the integer export as the executor loads it (`mpsearch.quant.nna.executor.IntegerModel`: the
header and every array), the module's name and its int8 input codes, and returns the name of its int8
output codes, which carries the module's own name (LSTM layers `<module>.l<k>`), so that a check can read
every layer's codes from the graph. Nothing here is traced from torch: the constants are the export's.
"""

from __future__ import annotations

import numpy as np

from mpsearch.onnx.graph import GraphBuilder, Shift
from mpsearch.quant.nna.executor import SUBSAMPLING, IntegerModel


def linear(g: GraphBuilder, model: IntegerModel, name: str, x8: str) -> str:
    """Linear `name`: int8 (..., K) -> int8 (..., N); acc = sat32(x W^T + b), then requantized."""
    a, n = model.arrays, model.numerics
    acc = g.op("Add", [g.matmul_integer(x8, a[f"{name}.weight"], name), bias(g, a[f"{name}.bias"], name)],
               f"{name}.biased")
    acc = g.saturate(acc, n.acc_range, f"{name}.acc_sat")
    out = g.requantize(acc, a[f"{name}.multiplier"], a[f"{name}.shift"], n.act_range, f"{name}.requant")
    return g.to_int8(out, name)


def bias(g: GraphBuilder, values: np.ndarray, name: str) -> str:
    """An int32 bias initialiser widened to int64 in the graph."""
    return g.int64(g.const(values, f"{name}.bias", np.int32), f"{name}.bias64")


def conv1d(g: GraphBuilder, model: IntegerModel, name: str, x8: str, left_pad: int = 0, right_pad: int = 0) -> str:
    """Conv1d `name`: int8 (B, C_in, L) -> int8 (B, C_out, L_out) with ConvInteger; `left_pad` and
    `right_pad` more zero frames around the module's own padding (the causal front end's, the Conformer's
    depthwise window)."""
    a, n, info = model.arrays, model.numerics, model.modules[name]
    (stride,), (padding,), (dilation,) = info["stride"], info["padding"], info["dilation"]
    if left_pad + right_pad + padding:
        pads = g.const([0, 0, left_pad + padding, 0, 0, right_pad + padding], f"{name}.pads")
        x8 = g.op("Pad", [x8, pads, g.const(0, f"{name}.pad_value", np.int8)], f"{name}.padded")
    weight = g.const(a[f"{name}.weight"], f"{name}.weight", np.int8)
    acc = g.int64(g.op("ConvInteger", [x8, weight], f"{name}.acc32", strides=[stride], dilations=[dilation],
                       group=info.get("groups", 1)), f"{name}.acc")
    acc = g.op("Add", [acc, bias(g, a[f"{name}.bias"][:, None], name)], f"{name}.biased")
    acc = g.saturate(acc, n.acc_range, f"{name}.acc_sat")
    out = g.requantize(acc, a[f"{name}.multiplier"][:, None], a[f"{name}.shift"][:, None], n.act_range,
                       f"{name}.requant")
    return g.to_int8(out, name)


def conv_subsampling(g: GraphBuilder, model: IntegerModel, x8: str) -> str:
    """int8 (B, T, n_mels) -> (B, ceil(T / 4), C) through frontend.conv1 and frontend.conv2, each after
    kernel - 1 causal zero frames and followed by ReLU, as `IntegerModel.conv_subsampling`."""
    x8 = g.op("Transpose", [x8], "channels_first", perm=[0, 2, 1])
    for conv in ("frontend.conv1", "frontend.conv2"):
        kernel = model.arrays[f"{conv}.weight"].shape[2]
        x8 = relu(g, conv1d(g, model, conv, x8, left_pad=kernel - 1), f"{conv}.relu")
    return g.op("Transpose", [x8], "frontend", perm=[0, 2, 1])


def valid_frames(g: GraphBuilder, x: str, lens: str, axis: int, hint: str) -> str:
    """bool (B, T): frame t of row b lies within lens[b], for T the size of `x` along `axis`."""
    frames = g.op("Gather", [g.op("Shape", [x], f"{hint}.shape"), g.const(axis)], f"{hint}.frames")
    steps = g.op("Range", [g.const(0), frames, g.const(1)], f"{hint}.index")
    return g.op("Less", [g.op("Unsqueeze", [steps, g.const([0])], f"{hint}.row"),
                         g.op("Unsqueeze", [lens, g.const([1])], f"{hint}.column")], hint)


def zero_invalid(g: GraphBuilder, x8: str, valid: str, hint: str) -> str:
    """int8 codes where `valid` (broadcasting) is set, 0 elsewhere: what a padded frame must hold before a
    window reads it."""
    return g.op("Where", [valid, x8, g.const(0, "zero8", np.int8)], hint)


def zero_past_lengths(g: GraphBuilder, feats: str, feat_lens: str) -> str:
    """Feature codes (B, T, n_mels) with every frame past its utterance's length zeroed, so that a padded
    batch gives each utterance the codes it gets alone (the front end reads frames past the end)."""
    valid = g.op("Unsqueeze", [valid_frames(g, feats, feat_lens, 1, "feat_valid"), g.const([2])], "feat_valid3")
    return zero_invalid(g, feats, valid, "feats_masked")


def subsampled_lengths(g: GraphBuilder, feat_lens: str, name: str) -> str:
    """ceil(feat_lens / 4): the front end's output frames of each utterance, named `name`."""
    padded = g.op("Add", [feat_lens, g.const(SUBSAMPLING - 1)], f"{name}.padded")
    return g.op("Div", [padded, g.const(SUBSAMPLING)], name)  # non-negative: Div is the floor


def relu(g: GraphBuilder, x8: str, hint: str) -> str:
    """max(codes, 0), as the executor applies it to the front end's int8 codes."""
    return g.op("Max", [x8, g.const(0, "zero8", np.int8)], hint)


def embedding(g: GraphBuilder, model: IntegerModel, name: str, tokens: str) -> str:
    """Embedding `name`: int64 token ids (...) -> int8 (..., E), each row requantized by its own (M, shift)."""
    a, n = model.arrays, model.numerics
    rows = g.int64(g.op("Gather", [g.const(a[f"{name}.weight"], f"{name}.weight", np.int8), tokens],
                        f"{name}.rows8"), f"{name}.rows")
    shift = g.shift(a[f"{name}.shift"][:, None], f"{name}.shift")

    def per_token(table: str, hint: str) -> str:
        return g.op("Gather", [table, tokens], f"{name}.{hint}")

    multiplier = per_token(g.const(a[f"{name}.multiplier"][:, None], f"{name}.multiplier"), "token_multiplier")
    product = g.op("Mul", [rows, multiplier], f"{name}.product")
    token_shift = Shift(per_token(shift.divisor, "token_divisor"), per_token(shift.half, "token_half"),
                        per_token(shift.tie, "token_tie"))
    out = g.saturate(g.rounding_shift(product, token_shift, f"{name}.rounded"), n.act_range, f"{name}.requant")
    return g.to_int8(out, name)


def add(g: GraphBuilder, model: IntegerModel, name: str, a8: str, b8: str) -> str:
    """Saturating add `name` of two int8 tensors of different scales (broadcasting)."""
    a, n = model.arrays, model.numerics
    m = a[f"{name}.multipliers"]
    terms = [g.int64(a8, f"{name}.a"), g.int64(b8, f"{name}.b")]
    out = g.requantize_sum(terms, [m[0], m[1]], a[f"{name}.shift"], n.act_range, f"{name}.requant")
    return g.to_int8(out, name)


def lookup(g: GraphBuilder, model: IntegerModel, name: str, x8: str) -> str:
    """Table `name` (tanh, sigmoid, ...) indexed by the int8 code."""
    out = g.lookup(model.arrays[f"{name}.lut"], g.int64(x8, f"{name}.in"), f"{name}.value")
    return g.to_int8(out, name)
