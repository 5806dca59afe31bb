"""The RNN-T's three ONNX graphs, built from its integer export (mirroring `RNNTExecutor`):

  encoder    feats int8 (batch, frames, n_mels), feat_lens int64 (batch,)
             -> enc int8 (batch, ceil(frames / 4), joint), enc_lens int64 (batch,)
             Codes past an utterance's length are zeroed first, so a padded batch gives each utterance
             the codes it gets alone (the stacking front end reads up to 3 frames past the end).
  predictor  tokens int64 (batch, labels), h int8 and c int16 (layers, batch, hidden)
             -> pred int8 (batch, labels, joint), h_out, c_out: one label per step, blank (0) first
  joiner     enc int8 (rows, joint), pred int8 (rows, joint) -> logits int8 (rows, vocab)

Every axis named above is dynamic. Feature codes are the host's: quantize float features with the
scale in the encoder's metadata (`mpsearch.input_scale`), as `RNNTExecutor.quantize_features` does.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from mpsearch.onnx import layers
from mpsearch.onnx.deps import OnnxError
from mpsearch.onnx.graph import GraphBuilder, export_metadata
from mpsearch.onnx.lstm import lstm
from mpsearch.quant.nna.executor import SUBSAMPLING, IntegerModel

GRAPHS = ("encoder", "predictor", "joiner")


def _frontend(g: GraphBuilder, model: IntegerModel, x8: str) -> str:
    """int8 (B, T, n_mels) -> (B, ceil(T / 4), frontend_dim), as `RNNTExecutor.frontend`."""
    if model.config.get("subsampling", "conv") == "conv":
        return layers.conv_subsampling(g, model, x8)
    n_mels = model.arrays["frontend.linear.weight"].shape[1] // SUBSAMPLING
    frames = g.op("Gather", [g.op("Shape", [x8], "stack.shape"), g.const([1])], "stack.frames")
    missing = g.op("Mod", [g.op("Sub", [g.const([SUBSAMPLING]), g.op("Mod", [frames, g.const([SUBSAMPLING])],
                                                                        "stack.extra")], "stack.gap"),
                           g.const([SUBSAMPLING])], "stack.missing")
    pads = g.op("Concat", [g.const([0, 0, 0, 0]), missing, g.const([0])], "stack.pads", axis=0)
    x8 = g.op("Pad", [x8, pads, g.const(0, "zero8", np.int8)], "stack.padded")
    x8 = g.op("Reshape", [x8, g.const([0, -1, SUBSAMPLING * n_mels])], "stack.stacked")
    return layers.relu(g, layers.linear(g, model, "frontend.linear", x8), "frontend")


def encoder_graph(model: IntegerModel) -> Any:
    g = GraphBuilder(model.numerics)
    helper, tp = g.onnx.helper, g.onnx.TensorProto
    cfg = model.config
    g.reserve("feats", "feat_lens")
    x8 = _frontend(g, model, layers.zero_past_lengths(g, "feats", "feat_lens"))
    x8, _, _ = lstm(g, model, "encoder.lstm", x8)
    g.op("Identity", [layers.linear(g, model, "encoder.proj", x8)], "enc")
    layers.subsampled_lengths(g, "feat_lens", "enc_lens")
    first = "frontend.conv1" if cfg.get("subsampling", "conv") == "conv" else "frontend.linear"
    return g.model("rnnt_encoder",
                   [helper.make_tensor_value_info("feats", tp.INT8, ["batch", "frames", cfg["n_mels"]]),
                    helper.make_tensor_value_info("feat_lens", tp.INT64, ["batch"])],
                   [helper.make_tensor_value_info("enc", tp.INT8, ["batch", "enc_frames", cfg["joint_dim"]]),
                    helper.make_tensor_value_info("enc_lens", tp.INT64, ["batch"])],
                   {**export_metadata(model, "encoder"),
                    "mpsearch.input_scale": repr(model.modules[first]["in_scales"][0])})


def predictor_graph(model: IntegerModel) -> Any:
    g = GraphBuilder(model.numerics)
    helper, tp = g.onnx.helper, g.onnx.TensorProto
    cfg = model.config
    layers_, hidden = cfg["pred_layers"], cfg["pred_hidden"]
    g.reserve("tokens", "h", "c")
    x8 = layers.embedding(g, model, "predictor.embed", "tokens")
    x8, hs, cs = lstm(g, model, "predictor.lstm", x8, state=("h", "c"))
    g.op("Identity", [layers.linear(g, model, "predictor.proj", x8)], "pred")
    for out, states in (("h_out", hs), ("c_out", cs)):
        stacked = [g.op("Unsqueeze", [s, g.const([0])], f"{out}.layer") for s in states]
        g.op("Concat", stacked, out, axis=0)
    state = ["layers", "batch", hidden]
    return g.model("rnnt_predictor",
                   [helper.make_tensor_value_info("tokens", tp.INT64, ["batch", "labels"]),
                    helper.make_tensor_value_info("h", tp.INT8, state),
                    helper.make_tensor_value_info("c", tp.INT16, state)],
                   [helper.make_tensor_value_info("pred", tp.INT8, ["batch", "labels", cfg["joint_dim"]]),
                    helper.make_tensor_value_info("h_out", tp.INT8, state),
                    helper.make_tensor_value_info("c_out", tp.INT16, state)],
                   {**export_metadata(model, "predictor"), "mpsearch.layers": str(layers_),
                    "mpsearch.hidden": str(hidden)})


def joiner_graph(model: IntegerModel) -> Any:
    g = GraphBuilder(model.numerics)
    helper, tp = g.onnx.helper, g.onnx.TensorProto
    joint, vocab = model.config["joint_dim"], model.config["vocab_size"]
    g.reserve("enc", "pred")
    x8 = layers.lookup(g, model, "joiner.activation", layers.add(g, model, "joiner.add", "enc", "pred"))
    g.op("Identity", [layers.linear(g, model, "joiner.out", x8)], "logits")
    return g.model("rnnt_joiner",
                   [helper.make_tensor_value_info("enc", tp.INT8, ["rows", joint]),
                    helper.make_tensor_value_info("pred", tp.INT8, ["rows", joint])],
                   [helper.make_tensor_value_info("logits", tp.INT8, ["rows", vocab])],
                   export_metadata(model, "joiner"))


BUILDERS = {"encoder": encoder_graph, "predictor": predictor_graph, "joiner": joiner_graph}


def transducer_graphs(model: IntegerModel) -> dict[str, Any]:
    """{"encoder", "predictor", "joiner"}: the ONNX models of an exported RNN-T."""
    architecture = model.header.get("architecture")
    if architecture != "rnnt":
        raise OnnxError(f"ONNX export covers the RNN-T; this integer export holds {architecture!r}. "
                        "Run it with mpsearch.quant.nna.executor instead.")
    return {part: BUILDERS[part](model) for part in GRAPHS}
