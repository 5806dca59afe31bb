"""The reference executors: an exported RNN-T or Conformer run with numpy int64 arithmetic only.

Written by hand from the model graphs, apart from the emulation, and importing nothing from torch:
that the emulated forward matches them bit for bit is the proof that training saw the chip's numbers.
Floats appear only where the header is read, in `quantize_features` (the host's side of the boundary:
features are float until the host hands the chip int8 codes) and in the rotary cos/sin tables, which
`numerics.rotary_tables` builds once per length as the chip's constant int16 tables. Everything after
is integer: matmuls are int64 (exact), requantisation, saturation, lookup tables and the LayerNorm,
softmax and rotary kernels are the very functions of `numerics` that the emulation runs on torch int64.

RNN-T graph (mirroring mpsearch.models.rnnt):
  front end   conv: 2 x [causal zero pad 2 | Conv1d k3 s2 | ReLU]; stack: 4 frames -> Linear | ReLU
  encoder     LSTM layers -> Linear
  predictor   Embedding -> LSTM layers -> Linear, one label per step, blank (0) first
  joiner      saturating Add -> tanh LUT -> Linear: int8 logits
  greedy      per frame, emit argmax labels until blank or max_symbols_per_frame

Conformer graph (mirroring mpsearch.models.conformer), one utterance unpadded, so the padding masks
are all-valid and only the chunk mask (chunk_size) remains:
  front end   conv subsampling as the RNN-T's
  block       x = Add(x, 0.5 * FF(x));  x = Add(x, MHSA(LN(x)));  x = Add(x, Conv(x));
              x = Add(x, 0.5 * FF(x));  x = LN(x)
  FF          LN -> Linear -> SiLU LUT -> Linear
  MHSA        q, k, v Linears -> heads -> rotary(q), rotary(k) -> MatMul(q, k^T) / sqrt(d) ->
              Softmax (chunk mask) -> MatMul(p, v) -> Linear o
  Conv        LN -> pointwise Conv1d -> GLU -> zero pad (centred, or causal when chunked) ->
              depthwise Conv1d -> LN over channels -> SiLU LUT -> pointwise Conv1d
  ctc head    Linear: int8 logits; greedy CTC: argmax per frame, repeats collapsed, blanks dropped
  transducer  Linear enc_proj, then the RNN-T's predictor, joiner and greedy search
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from mpsearch.quant.nna.errors import NNAError
from mpsearch.quant.nna.fileformat import EXPORT_TYPE, EXPORT_VERSION, HEADER_KEY
from mpsearch.quant.nna.numerics import (
    NNANumerics,
    layer_norm_codes,
    requantize,
    requantize_sum,
    rotary_codes,
    rotary_tables,
    saturate,
    softmax_codes,
)

BLANK = 0
SUBSAMPLING = 4

LSTMState = list[tuple[np.ndarray, np.ndarray]]


class IntegerModel:
    """An integer export loaded for execution: the header and every array as int64, plus one method
    per layer kind, each taking and returning integer codes."""

    def __init__(self, path: str | Path) -> None:
        path = Path(path)
        if not path.is_file():
            raise NNAError(f"Integer model '{path}' does not exist; write it with export_int(model, path).")
        with np.load(path, allow_pickle=False) as data:
            if HEADER_KEY not in data.files:
                raise NNAError(f"{path} has no '{HEADER_KEY}'; it is not an mpsearch integer export.")
            self.header: dict[str, Any] = json.loads(str(data[HEADER_KEY]))
            self.arrays = {key: data[key].astype(np.int64) for key in data.files if key != HEADER_KEY}
        h = self.header
        if h.get("_type") != EXPORT_TYPE or h.get("_version") != EXPORT_VERSION:
            raise NNAError(f"{path} is {h.get('_type')!r} version {h.get('_version')!r}; this executor reads "
                           f"{EXPORT_TYPE} version {EXPORT_VERSION}: export the model again.")
        self.config = h["config"]
        self.modules = h["modules"]
        self.numerics = NNANumerics.from_dict(h["numerics"])

    def quantize_input(self, name: str, x: np.ndarray) -> np.ndarray:
        """Host side: float32 model input -> int8 codes at the input scale of module `name`."""
        scale = np.float64(self.modules[name]["in_scales"][0])
        codes = np.rint(np.asarray(x, dtype=np.float32).astype(np.float64) / scale)
        return saturate(codes, self.numerics.act_range).astype(np.int64)

    def _a(self, key: str) -> np.ndarray:
        return self.arrays[key]

    def _requant(self, acc: np.ndarray, multiplier: Any, shift: Any) -> np.ndarray:
        n = self.numerics
        return requantize(acc, multiplier, shift, n.rounding, n.act_range)

    def linear(self, name: str, x: np.ndarray) -> np.ndarray:
        """int8 codes (..., K) -> int8 codes (..., N) of Linear `name`."""
        acc = saturate(x @ self._a(f"{name}.weight").T + self._a(f"{name}.bias"), self.numerics.acc_range)
        return self._requant(acc, self._a(f"{name}.multiplier"), self._a(f"{name}.shift"))

    def conv1d(self, name: str, x: np.ndarray) -> np.ndarray:
        """int8 codes (C_in, L) -> (C_out, L_out) of Conv1d `name` (its own stride, padding, groups)."""
        weight = self._a(f"{name}.weight")
        info = self.modules[name]
        (stride,), (padding,), (dilation,) = info["stride"], info["padding"], info["dilation"]
        groups = info.get("groups", 1)
        out_channels, group_in, kernel = weight.shape
        x = np.pad(x, ((0, 0), (padding, padding)))
        length = (x.shape[1] - dilation * (kernel - 1) - 1) // stride + 1
        taps = np.stack([x[:, k * dilation: k * dilation + stride * (length - 1) + 1: stride]
                         for k in range(kernel)], axis=-1)  # (C_in, L_out, kernel)
        # Output channel o reads input channels of its group only: (G, C_in/G, L, k) x (G, C_out/G, C_in/G, k).
        taps = taps.reshape(groups, group_in, length, kernel)
        acc = np.einsum("gilk,goik->gol", taps, weight.reshape(groups, out_channels // groups, group_in, kernel))
        acc = acc.reshape(out_channels, length) + self._a(f"{name}.bias")[:, None]
        acc = saturate(acc, self.numerics.acc_range)
        return self._requant(acc, self._a(f"{name}.multiplier")[:, None], self._a(f"{name}.shift")[:, None])

    def embedding(self, name: str, tokens: np.ndarray) -> np.ndarray:
        rows = self._a(f"{name}.weight")[tokens]
        return self._requant(rows, self._a(f"{name}.multiplier")[tokens][..., None],
                             self._a(f"{name}.shift")[tokens][..., None])

    def lstm_step(self, name: str, layer: int, x: np.ndarray, h: np.ndarray, c: np.ndarray):
        """One step of one layer: int8 input x (..., K), int8 h (..., H), int16 c (..., H) -> new (h, c)."""
        n, p = self.numerics, f"{name}.l{layer}."
        hidden = h.shape[-1]
        acc_x = saturate(x @ self._a(p + "weight_ih").T + self._a(p + "bias"), n.acc_range)
        acc_h = saturate(h @ self._a(p + "weight_hh").T, n.acc_range)
        m = self._a(p + "gate_multipliers")
        pre = requantize_sum([acc_x, acc_h], [m[0], m[1]], self._a(p + "gate_shift"), n.rounding, n.act_range)
        luts = self._a(p + "gate_luts")
        gates = luts[np.arange(4 * hidden) // hidden, pre - n.act_range[0]]
        i, f, g, o = np.split(gates, 4, axis=-1)
        mc = self._a(p + "cell_multipliers")
        c = requantize_sum([f * c, i * g], [mc[0], mc[1]], self._a(p + "cell_shift"), n.rounding,
                           n.cell_range)
        c8 = self._requant(c, self._a(p + "cell_tanh_multiplier"), self._a(p + "cell_tanh_shift"))
        tanh_c = self._a(p + "cell_lut")[c8 - n.act_range[0]]
        h = self._requant(o * tanh_c, self._a(p + "hidden_multiplier"), self._a(p + "hidden_shift"))
        return h, c

    def lstm(self, name: str, x: np.ndarray, state: LSTMState | None = None) -> tuple[np.ndarray, LSTMState]:
        """int8 codes (T, [B,] K) through every layer of LSTM `name`, time first; state per layer (h, c),
        zeros if None."""
        info = self.modules[name]
        hidden = info["hidden_size"]
        state = state or [(np.zeros(hidden, np.int64), np.zeros(hidden, np.int64))] * info["layers"]
        new_state = []
        for layer, (h, c) in enumerate(state):
            outputs = []
            for x_t in x:
                h, c = self.lstm_step(name, layer, x_t, h, c)
                outputs.append(h)
            x = np.stack(outputs)
            new_state.append((h, c))
        return x, new_state

    def add(self, name: str, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        """Saturating add of two int8 tensors of different scales (broadcasting)."""
        n, m = self.numerics, self._a(f"{name}.multipliers")
        return requantize_sum([a, b], [m[0], m[1]], self._a(f"{name}.shift"), n.rounding, n.act_range)

    def lookup(self, name: str, x: np.ndarray) -> np.ndarray:
        """The table of sigmoid/tanh/SiLU module `name`, indexed by the int8 code."""
        return self._a(f"{name}.lut")[x - self.numerics.act_range[0]]

    def mul(self, name: str, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        """a * b of two int8 tensors (broadcasting), requantized."""
        acc = saturate(a * b, self.numerics.acc_range)
        return self._requant(acc, self._a(f"{name}.multiplier"), self._a(f"{name}.shift"))

    def matmul(self, name: str, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        """a @ b of two int8 tensors, int32 accumulator, requantized (any divisor is in the multiplier)."""
        acc = saturate(a @ b, self.numerics.acc_range)
        return self._requant(acc, self._a(f"{name}.multiplier"), self._a(f"{name}.shift"))

    def layer_norm(self, name: str, x: np.ndarray, axis: int = -1) -> np.ndarray:
        """LayerNorm `name` of int8 codes over `axis`."""
        axis = axis % x.ndim
        tail = (1,) * (x.ndim - 1 - axis)
        return layer_norm_codes(x, self._a(f"{name}.gamma").reshape(-1, *tail),
                                self._a(f"{name}.beta").reshape(-1, *tail), self._a(f"{name}.eps"),
                                self._a(f"{name}.multiplier"), self._a(f"{name}.shift"), self.numerics, axis)

    def softmax(self, name: str, x: np.ndarray, valid: np.ndarray | None = None) -> np.ndarray:
        """Softmax `name` over the last axis of int8 codes, where `valid` (broadcasting) allows."""
        valid = np.ones_like(x) if valid is None else np.broadcast_to(valid, x.shape).astype(np.int64)
        return softmax_codes(x, valid, self._a(f"{name}.exp_lut"), int(self._a(f"{name}.numerator")),
                             self.numerics)

    def rotary(self, name: str, x: np.ndarray) -> np.ndarray:
        """Rotary positions `name` of int8 codes (..., T, D)."""
        cos, sin = rotary_tables(x.shape[-2], x.shape[-1], self.modules[name]["base"])
        return rotary_codes(x, cos, sin, self._a(f"{name}.multiplier"), self._a(f"{name}.shift"), self.numerics)

    def glu(self, name: str, x: np.ndarray, axis: int) -> np.ndarray:
        """GLU `name`: first half of `axis` times the sigmoid table of the second half, requantized."""
        value, gate = np.split(x, 2, axis=axis)
        return self._requant(value * self.lookup(name, gate), self._a(f"{name}.multiplier"),
                             self._a(f"{name}.shift"))

    def conv_subsampling(self, feat_codes: np.ndarray) -> np.ndarray:
        """int8 feature codes (T, n_mels) -> (ceil(T / 4), C) through frontend.conv1 and frontend.conv2."""
        x = feat_codes.T
        for conv in ("frontend.conv1", "frontend.conv2"):
            kernel = self._a(f"{conv}.weight").shape[2]
            x = np.pad(x, ((0, 0), (kernel - 1, 0)))  # causal: left padding only
            x = np.maximum(self.conv1d(conv, x), 0)
        return x.T


class TransducerDecoding:
    """The transducer's prediction network, joiner and greedy search over int8 encoder codes, for an
    IntegerModel holding `predictor.*` and `joiner.*` modules (shared by the RNN-T and the Conformer)."""

    embedding: Any
    lstm: Any
    linear: Any
    add: Any
    lookup: Any

    def predictor_step(self, token: int, state: LSTMState | None) -> tuple[np.ndarray, LSTMState]:
        """One label -> int8 predictor output codes (joint_dim,) and the new LSTM state."""
        x = self.embedding("predictor.embed", np.array([token]))
        x, state = self.lstm("predictor.lstm", x, state)
        return self.linear("predictor.proj", x[0]), state

    def joiner(self, enc: np.ndarray, pred: np.ndarray) -> np.ndarray:
        """int8 encoder and predictor codes (broadcasting, (..., J)) -> int8 logit codes (..., V)."""
        return self.linear("joiner.out", self.lookup("joiner.activation", self.add("joiner.add", enc, pred)))

    def transducer_greedy(self, enc: np.ndarray, max_symbols_per_frame: int = 5,
                          blank: int = BLANK) -> list[int]:
        """Greedy transducer decoding of one utterance's int8 encoder codes (T, J) -> label ids (no blanks)."""
        pred, state = self.predictor_step(blank, None)
        labels: list[int] = []
        for enc_t in enc:
            for _ in range(max_symbols_per_frame):
                label = int(np.argmax(self.joiner(enc_t, pred)))
                if label == blank:
                    break
                labels.append(label)
                pred, state = self.predictor_step(label, state)
        return labels


def _check_architecture(executor: IntegerModel, path: str | Path, name: str, cls: str) -> None:
    if executor.header.get("architecture") != name:
        raise NNAError(f"{path} holds architecture {executor.header.get('architecture')!r}; {cls} runs "
                       f"'{name}' only.")


class RNNTExecutor(IntegerModel, TransducerDecoding):
    """Runs an RNN-T written by `export_int` with integer numpy arithmetic."""

    def __init__(self, path: str | Path) -> None:
        super().__init__(path)
        _check_architecture(self, path, "rnnt", "RNNTExecutor")
        self.subsampling = self.config.get("subsampling", "conv")
        self.first = "frontend.conv1" if self.subsampling == "conv" else "frontend.linear"

    def quantize_features(self, feats: np.ndarray) -> np.ndarray:
        """Host side: (frames, n_mels) float features -> int8 codes at the front end's input scale."""
        return self.quantize_input(self.first, feats)

    def frontend(self, feat_codes: np.ndarray) -> np.ndarray:
        """int8 feature codes (T, n_mels) -> (ceil(T / 4), frontend_dim)."""
        if self.subsampling == "conv":
            return self.conv_subsampling(feat_codes)
        frames, n_mels = feat_codes.shape
        x = np.pad(feat_codes, ((0, (-frames) % SUBSAMPLING), (0, 0))).reshape(-1, SUBSAMPLING * n_mels)
        return np.maximum(self.linear("frontend.linear", x), 0)

    def encode(self, feat_codes: np.ndarray) -> np.ndarray:
        """int8 feature codes (T, n_mels) -> int8 encoder output codes (ceil(T / 4), joint_dim)."""
        x, _ = self.lstm("encoder.lstm", self.frontend(feat_codes))
        return self.linear("encoder.proj", x)

    def greedy_decode(self, feat_codes: np.ndarray, max_symbols_per_frame: int = 5,
                      blank: int = BLANK) -> list[int]:
        """Greedy transducer decoding of one utterance's int8 feature codes -> label ids (no blanks)."""
        return self.transducer_greedy(self.encode(feat_codes), max_symbols_per_frame, blank)


def ctc_best_path(logits: np.ndarray, blank: int = BLANK) -> list[int]:
    """Greedy CTC labels of one utterance's logit codes (T, V): argmax per frame (first of equal codes),
    repeats collapsed, blanks dropped."""
    best = np.argmax(logits, axis=-1)
    return [int(label) for t, label in enumerate(best) if label != blank and (t == 0 or label != best[t - 1])]


class ConformerExecutor(IntegerModel, TransducerDecoding):
    """Runs a Conformer (CTC or transducer head) written by `export_int` with integer numpy arithmetic,
    one utterance at a time."""

    def __init__(self, path: str | Path) -> None:
        super().__init__(path)
        _check_architecture(self, path, "conformer", "ConformerExecutor")
        if self.config.get("conv_norm", "layer") != "layer":
            raise NNAError(f"{path} has conv_norm {self.config.get('conv_norm')!r}; the NNA runs conv_norm 'layer'.")
        self.head = self.config.get("head", "ctc")
        self.n_layers, self.n_heads = self.config["n_layers"], self.config["n_heads"]
        self.chunk_size = self.config.get("chunk_size")
        kernel = self.config["conv_kernel"]
        # As mpsearch.models.conformer.ConvModule: causal when chunked, so no chunk waits for the next.
        self.conv_padding = (kernel - 1, 0) if self.chunk_size is not None else ((kernel - 1) // 2,) * 2

    def quantize_features(self, feats: np.ndarray) -> np.ndarray:
        """Host side: (frames, n_mels) float features -> int8 codes at the front end's input scale."""
        return self.quantize_input("frontend.conv1", feats)

    def attention_mask(self, frames: int) -> np.ndarray | None:
        """(T, T) 0/1: a query may read keys of its own and earlier chunks; None without chunks."""
        if self.chunk_size is None:
            return None
        chunk = np.arange(frames) // self.chunk_size
        return (chunk[None, :] <= chunk[:, None]).astype(np.int64)

    def feed_forward(self, p: str, x: np.ndarray) -> np.ndarray:
        h = self.lookup(p + "activation", self.linear(p + "up", self.layer_norm(p + "norm", x)))
        return self.linear(p + "down", h)

    def attention(self, p: str, x: np.ndarray, mask: np.ndarray | None) -> np.ndarray:
        frames, d_model = x.shape

        def heads(t: np.ndarray) -> np.ndarray:  # (T, d) -> (H, T, d / H)
            return t.reshape(frames, self.n_heads, -1).transpose(1, 0, 2)

        q = self.rotary(p + "rotary_q", heads(self.linear(p + "q", x)))
        k = self.rotary(p + "rotary_k", heads(self.linear(p + "k", x)))
        v = heads(self.linear(p + "v", x))
        weights = self.softmax(p + "softmax", self.matmul(p + "scores", q, k.transpose(0, 2, 1)), mask)
        context = self.matmul(p + "context", weights, v)
        return self.linear(p + "o", context.transpose(1, 0, 2).reshape(frames, d_model))

    def convolution(self, p: str, x: np.ndarray) -> np.ndarray:
        h = self.conv1d(p + "pointwise_in", self.layer_norm(p + "norm_in", x).T)  # (2d, T)
        h = self.glu(p + "glu", h, axis=0)
        h = self.conv1d(p + "depthwise", np.pad(h, ((0, 0), self.conv_padding)))
        h = self.lookup(p + "activation", self.layer_norm(p + "norm", h, axis=0))
        return self.conv1d(p + "pointwise_out", h).T

    def block(self, p: str, x: np.ndarray, mask: np.ndarray | None) -> np.ndarray:
        x = self.add(p + "ff1_residual", x, self.feed_forward(p + "ff1.", x))
        x = self.add(p + "attn_residual", x, self.attention(p + "attn.", self.layer_norm(p + "attn_norm", x), mask))
        x = self.add(p + "conv_residual", x, self.convolution(p + "conv.", x))
        x = self.add(p + "ff2_residual", x, self.feed_forward(p + "ff2.", x))
        return self.layer_norm(p + "norm", x)

    def encode(self, feat_codes: np.ndarray) -> np.ndarray:
        """int8 feature codes (T, n_mels) -> int8 encoder output codes (ceil(T / 4), d_model)."""
        x = self.conv_subsampling(feat_codes)
        mask = self.attention_mask(x.shape[0])
        for layer in range(self.n_layers):
            x = self.block(f"encoder.blocks.{layer}.", x, mask)
        return x

    def ctc_logits(self, feat_codes: np.ndarray) -> np.ndarray:
        """int8 feature codes (T, n_mels) -> int8 CTC logit codes (ceil(T / 4), vocab) (CTC head)."""
        if self.head != "ctc":
            raise NNAError(f"This Conformer has a {self.head} head; ctc_logits needs head 'ctc'.")
        return self.linear("ctc_head", self.encode(feat_codes))

    def greedy_decode(self, feat_codes: np.ndarray, max_symbols_per_frame: int = 5,
                      blank: int = BLANK) -> list[int]:
        """Greedy labels (no blanks) of one utterance's int8 feature codes: CTC best path (argmax per
        frame, repeats collapsed, blanks dropped) or greedy transducer search."""
        if self.head == "transducer":
            enc = self.linear("enc_proj", self.encode(feat_codes))
            return self.transducer_greedy(enc, max_symbols_per_frame, blank)
        return ctc_best_path(self.ctc_logits(feat_codes), blank)
