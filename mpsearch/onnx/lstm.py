"""The integer LSTM as ONNX: one Scan per layer over the time axis, so any number of frames runs.

The input half of every gate, sat32(x W_ih^T + b), does not depend on the state: it is one MatMulInteger
over all frames before the Scan. The Scan body is `IntegerModel.lstm_step` after that matmul:

  pre   = sat8(round((acc_x * M_x + sat32(h W_hh^T) * M_h) / 2^s))     one rounding for the sum
  gates = gate table [gate of the column][pre - lo]                     i, f, g, o
  c     = sat16(round((f * c * M_fc + i * g * M_ig) / 2^s_c))
  h     = sat8(round(o * tanh_table[sat8(round(c * M_t / 2^s_t)) - lo] * M_h / 2^s_h))

The state travels as the chip holds it: h int8, c int16 (cell_state_bits is at most 16).
"""

from __future__ import annotations

import numpy as np

from mpsearch.onnx.graph import GraphBuilder
from mpsearch.onnx.layers import bias
from mpsearch.quant.nna.executor import IntegerModel


def _cell_body(g: GraphBuilder, model: IntegerModel, prefix: str, hidden: int):
    """The Scan body of one layer: (h int8, c int16, acc_x int64 (B, 4H)) -> (h, c, h as scan output)."""
    onnx, tp = g.onnx, g.onnx.TensorProto
    a, n = model.arrays, model.numerics
    body = GraphBuilder(n, prefix=prefix + "step.")
    h_in, c_in, acc_x = (body.prefix + name for name in ("h_in", "c_in", "acc_x"))
    body.reserve("h_in", "c_in", "acc_x")
    acc_h = body.saturate(body.matmul_integer(h_in, a[prefix + "weight_hh"], "hh"), n.acc_range, "acc_h")
    m = a[prefix + "gate_multipliers"]
    pre = body.requantize_sum([acc_x, acc_h], [m[0], m[1]], a[prefix + "gate_shift"], n.act_range, "pre")
    luts = a[prefix + "gate_luts"]
    columns = np.arange(4 * hidden) // hidden * luts.shape[1]  # each column reads its gate's table
    gates = body.lookup(luts, pre, "gates", offset=columns)
    i, f, gg, o = body.op("Split", [gates], "gate", outputs=4, axis=-1)
    mc = a[prefix + "cell_multipliers"]
    c = body.requantize_sum([body.op("Mul", [f, body.int64(c_in, "c")], "fc"), body.op("Mul", [i, gg], "ig")],
                            [mc[0], mc[1]], a[prefix + "cell_shift"], n.cell_range, "cell")
    c8 = body.requantize(c, a[prefix + "cell_tanh_multiplier"], a[prefix + "cell_tanh_shift"], n.act_range,
                         "cell8")
    tanh_c = body.lookup(a[prefix + "cell_lut"], c8, "tanh_c")
    h = body.requantize(body.op("Mul", [o, tanh_c], "oc"), a[prefix + "hidden_multiplier"],
                        a[prefix + "hidden_shift"], n.act_range, "hidden")
    h_out = body.to_int8(h, "h_out")
    c_out = body.cast(c, tp.INT16, "c_out")
    h_seq = body.op("Identity", [h_out], "h_seq")

    def typed(name: str, dtype: int, width: int):
        return onnx.helper.make_tensor_value_info(name, dtype, ["batch", width])

    return onnx.helper.make_graph(
        body.nodes, f"{prefix}step", [typed(h_in, tp.INT8, hidden), typed(c_in, tp.INT16, hidden),
                                      typed(acc_x, tp.INT64, 4 * hidden)],
        [typed(h_out, tp.INT8, hidden), typed(c_out, tp.INT16, hidden), typed(h_seq, tp.INT8, hidden)],
        initializer=body.initializers)


def lstm_layer(g: GraphBuilder, model: IntegerModel, name: str, layer: int, x8: str, h0: str, c0: str,
               ) -> tuple[str, str, str]:
    """Layer `layer` of LSTM `name` over int8 x (B, T, K), batch first, from h0 int8 and c0 int16 (B, H) ->
    (its int8 outputs (B, T, H), named `<name>.l<layer>`, the last h, the last c)."""
    a, n = model.arrays, model.numerics
    prefix = f"{name}.l{layer}."
    hidden = model.modules[name]["hidden_size"]
    acc_x = g.op("Add", [g.matmul_integer(x8, a[prefix + "weight_ih"], prefix + "ih"),
                         bias(g, a[prefix + "bias"], prefix.rstrip("."))], prefix + "ih_biased")
    acc_x = g.saturate(acc_x, n.acc_range, prefix + "acc_x")
    body = _cell_body(g, model, prefix, hidden)
    h, c, seq = g.op("Scan", [h0, c0, acc_x], prefix + "scan", outputs=3, body=body, num_scan_inputs=1,
                     scan_input_axes=[1], scan_output_axes=[1])
    return g.named(seq, f"{name}.l{layer}"), h, c


def zero_state(g: GraphBuilder, batch_of: str, hidden: int, dtype: int, hint: str) -> str:
    """Zeros (B, hidden) of `dtype`, B read from the first dim of value `batch_of`."""
    batch = g.op("Slice", [g.op("Shape", [batch_of], f"{hint}.shape"), g.const([0]), g.const([1])], f"{hint}.batch")
    shape = g.op("Concat", [batch, g.const([hidden])], f"{hint}.dims", axis=0)
    zero = g.onnx.helper.make_tensor("zero", dtype, [1], [0])
    return g.op("ConstantOfShape", [shape], hint, value=zero)


def lstm(g: GraphBuilder, model: IntegerModel, name: str, x8: str, state: tuple[str, str] | None = None,
         ) -> tuple[str, list[str], list[str]]:
    """Every layer of LSTM `name` over int8 x (B, T, K) -> (int8 outputs (B, T, H) named `name`, the last h
    and c of each layer). `state`: h int8 and c int16 (layers, B, H), zeros when None."""
    info = model.modules[name]
    hidden, tp = info["hidden_size"], g.onnx.TensorProto
    hs, cs = [], []
    for layer in range(info["layers"]):
        if state is None:
            h0 = zero_state(g, x8, hidden, tp.INT8, f"{name}.l{layer}.h0")
            c0 = zero_state(g, x8, hidden, tp.INT16, f"{name}.l{layer}.c0")
        else:
            index = g.const(layer)
            h0 = g.op("Gather", [state[0], index], f"{name}.l{layer}.h0", axis=0)
            c0 = g.op("Gather", [state[1], index], f"{name}.l{layer}.c0", axis=0)
        x8, h, c = lstm_layer(g, model, name, layer, x8, h0, c0)
        hs.append(h)
        cs.append(c)
    return g.named(x8, name), hs, cs
