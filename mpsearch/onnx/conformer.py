"""The Conformer with a CTC head as one ONNX graph, built from its integer export (mirroring
`ConformerExecutor.ctc_logits`):

  ctc   feats int8 (batch, frames, n_mels), feat_lens int64 (batch,)
        -> logits int8 (batch, ceil(frames / 4), vocab), logit_lens int64 (batch,)

Every axis named above is dynamic; encoder frames are limited to the rotary tables' length (metadata
`mpsearch.max_frames`). Feature codes are the host's, at the scale in the metadata (`mpsearch.input_scale`),
as `ConformerExecutor.quantize_features` makes them.

The executor runs one utterance unpadded; in a padded batch each utterance still gets its own codes,
because no padded frame reaches a valid one: feature codes past a length are zeroed before the causal
front end, the attention softmax gives keys past the utterance's end (and, with chunk_size, keys of later
chunks) exactly 0, and the GLU's output is zeroed past the end before the depthwise window reads it.
Every other layer works frame by frame.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from mpsearch.onnx import kernels, layers
from mpsearch.onnx.deps import OnnxError
from mpsearch.onnx.graph import GraphBuilder, export_metadata
from mpsearch.quant.nna.executor import IntegerModel

PARTS = ("ctc",)
# Encoder frames the rotary tables cover: 4096 frames of 40 ms, 164 s of audio, in 2 x 4096 x D/2 int16.
MAX_FRAMES = 4096


@dataclass(frozen=True)
class Frames:
    """Graph values about the encoder frames that every block reads."""

    count: str  # (1,) int64: T
    attention: str  # bool (B, 1, T, T) or (B, 1, 1, T): the keys a query may read
    conv: str  # bool (B, 1, T): the frames inside each utterance
    heads: int
    head_dim: int
    conv_padding: tuple[int, int]
    max_frames: int


def _feed_forward(g: GraphBuilder, model: IntegerModel, p: str, x8: str) -> str:
    h = layers.linear(g, model, p + "up", kernels.layer_norm(g, model, p + "norm", x8, -1, 3))
    return layers.linear(g, model, p + "down", layers.lookup(g, model, p + "activation", h))


def _attention(g: GraphBuilder, model: IntegerModel, p: str, x8: str, f: Frames) -> str:
    def heads(t: str, hint: str) -> str:  # (B, T, d) -> (B, H, T, d / H)
        split = g.op("Reshape", [t, g.const([0, 0, f.heads, f.head_dim])], f"{p}{hint}.split")
        return g.op("Transpose", [split], f"{p}{hint}.heads", perm=[0, 2, 1, 3])

    def rotated(which: str) -> str:
        projected = heads(layers.linear(g, model, p + which, x8), which)
        return kernels.rotary(g, model, f"{p}rotary_{which}", projected, f.count, f.head_dim, f.max_frames)

    q, k = rotated("q"), rotated("k")
    v = heads(layers.linear(g, model, p + "v", x8), "v")
    k_t = g.op("Transpose", [k], f"{p}k.transposed", perm=[0, 1, 3, 2])
    weights = kernels.softmax(g, model, p + "softmax", kernels.matmul(g, model, p + "scores", q, k_t), f.attention)
    context = g.op("Transpose", [kernels.matmul(g, model, p + "context", weights, v)], f"{p}context.frames",
                   perm=[0, 2, 1, 3])
    merged = g.op("Reshape", [context, g.const([0, 0, f.heads * f.head_dim])], f"{p}context.merged")
    return layers.linear(g, model, p + "o", merged)


def _convolution(g: GraphBuilder, model: IntegerModel, p: str, x8: str, f: Frames) -> str:
    h = g.op("Transpose", [kernels.layer_norm(g, model, p + "norm_in", x8, -1, 3)], f"{p}channels", perm=[0, 2, 1])
    h = kernels.glu(g, model, p + "glu", layers.conv1d(g, model, p + "pointwise_in", h), axis=1)
    h = layers.zero_invalid(g, h, f.conv, p + "mask")
    left, right = f.conv_padding
    h = layers.conv1d(g, model, p + "depthwise", h, left_pad=left, right_pad=right)
    h = layers.lookup(g, model, p + "activation", kernels.layer_norm(g, model, p + "norm", h, 1, 3))
    return g.op("Transpose", [layers.conv1d(g, model, p + "pointwise_out", h)], f"{p}frames", perm=[0, 2, 1])


def _block(g: GraphBuilder, model: IntegerModel, p: str, x8: str, f: Frames) -> str:
    x8 = layers.add(g, model, p + "ff1_residual", x8, _feed_forward(g, model, p + "ff1.", x8))
    attended = _attention(g, model, p + "attn.", kernels.layer_norm(g, model, p + "attn_norm", x8, -1, 3), f)
    x8 = layers.add(g, model, p + "attn_residual", x8, attended)
    x8 = layers.add(g, model, p + "conv_residual", x8, _convolution(g, model, p + "conv.", x8, f))
    x8 = layers.add(g, model, p + "ff2_residual", x8, _feed_forward(g, model, p + "ff2.", x8))
    return kernels.layer_norm(g, model, p + "norm", x8, -1, 3)


def _frames(g: GraphBuilder, model: IntegerModel, x8: str, lens: str, max_frames: int) -> Frames:
    cfg = model.config
    valid = layers.valid_frames(g, x8, lens, 1, "frame_valid")
    keys = g.op("Unsqueeze", [valid, g.const([1, 2])], "key_valid")
    count = g.op("Gather", [g.op("Shape", [x8], "encoder.shape"), g.const([1])], "encoder.frames")
    chunk_size, kernel = cfg.get("chunk_size"), cfg["conv_kernel"]
    if chunk_size is not None:
        steps = g.op("Range", [g.const(0), g.op("Squeeze", [count, g.const([0])], "encoder.frame_count"),
                               g.const(1)], "frame_index")
        chunk = g.op("Div", [steps, g.const(chunk_size)], "chunk_index")  # non-negative: Div is the floor
        earlier = g.op("LessOrEqual", [g.op("Unsqueeze", [chunk, g.const([0])], "key_chunk"),
                                       g.op("Unsqueeze", [chunk, g.const([1])], "query_chunk")], "chunk_mask")
        keys = g.op("And", [keys, earlier], "attention_mask")
    # As mpsearch.models.conformer.ConvModule: causal when chunked, so no chunk waits for the next.
    padding = (kernel - 1, 0) if chunk_size is not None else ((kernel - 1) // 2,) * 2
    heads = cfg["n_heads"]
    return Frames(count=count, attention=keys, conv=g.op("Unsqueeze", [valid, g.const([1])], "conv_valid"),
                  heads=heads, head_dim=cfg["d_model"] // heads, conv_padding=padding, max_frames=max_frames)


def ctc_graph(model: IntegerModel, max_frames: int = MAX_FRAMES) -> Any:
    """The ONNX model of an exported Conformer with a CTC head."""
    g = GraphBuilder(model.numerics)
    helper, tp = g.onnx.helper, g.onnx.TensorProto
    cfg = model.config
    g.reserve("feats", "feat_lens")
    x8 = layers.conv_subsampling(g, model, layers.zero_past_lengths(g, "feats", "feat_lens"))
    lens = layers.subsampled_lengths(g, "feat_lens", "logit_lens")
    frames = _frames(g, model, x8, lens, max_frames)
    for layer in range(cfg["n_layers"]):
        x8 = _block(g, model, f"encoder.blocks.{layer}.", x8, frames)
    g.op("Identity", [layers.linear(g, model, "ctc_head", x8)], "logits")
    return g.model("conformer_ctc",
                   [helper.make_tensor_value_info("feats", tp.INT8, ["batch", "frames", cfg["n_mels"]]),
                    helper.make_tensor_value_info("feat_lens", tp.INT64, ["batch"])],
                   [helper.make_tensor_value_info("logits", tp.INT8, ["batch", "logit_frames", cfg["vocab_size"]]),
                    helper.make_tensor_value_info("logit_lens", tp.INT64, ["batch"])],
                   {**export_metadata(model, "ctc"), "mpsearch.max_frames": str(max_frames),
                    "mpsearch.input_scale": repr(model.modules["frontend.conv1"]["in_scales"][0])})


def conformer_graphs(model: IntegerModel) -> dict[str, Any]:
    """{"ctc": the ONNX model} of an exported Conformer with a CTC head."""
    head, norm = model.config.get("head", "ctc"), model.config.get("conv_norm", "layer")
    if head != "ctc":
        raise OnnxError(f"ONNX export covers the Conformer's CTC head; this one has a {head!r} head. "
                        "Run it with mpsearch.quant.nna.executor.ConformerExecutor instead.")
    if norm != "layer":
        raise OnnxError(f"This Conformer has conv_norm {norm!r}; the NNA (and its ONNX graph) runs conv_norm 'layer'.")
    return {"ctc": ctc_graph(model)}
