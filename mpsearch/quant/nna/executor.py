"""The reference executor: an exported RNN-T run with numpy int64 arithmetic only.

Written by hand from the RNN-T graph, apart from the emulation, and importing nothing from torch:
that the emulated forward matches it bit for bit is the proof that training saw the chip's numbers.
Floats appear only where the header is read and in `quantize_features`, the host's side of the
boundary (features are float until the host hands the chip int8 codes). Everything after is integer:
matmuls are int64 (exact), requantisation, saturation and lookup tables use the very primitives of
`numerics` that the emulation uses.

Graph (mirroring mpsearch.models.rnnt):
  front end   conv: 2 x [causal zero pad 2 | Conv1d k3 s2 | ReLU]; stack: 4 frames -> Linear | ReLU
  encoder     LSTM layers -> Linear
  predictor   Embedding -> LSTM layers -> Linear, one label per step, blank (0) first
  joiner      saturating Add -> tanh LUT -> Linear: int8 logits
  greedy      per frame, emit argmax labels until blank or max_symbols_per_frame
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from mpsearch.quant.nna.errors import NNAError
from mpsearch.quant.nna.fileformat import EXPORT_TYPE, EXPORT_VERSION, HEADER_KEY
from mpsearch.quant.nna.numerics import NNANumerics, requantize, requantize_sum, saturate

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
        """int8 codes (C_in, L) -> (C_out, L_out) of Conv1d `name` (groups 1, its own stride)."""
        weight = self._a(f"{name}.weight")
        info = self.modules[name]
        (stride,), (padding,), (dilation,) = info["stride"], info["padding"], info["dilation"]
        kernel = weight.shape[2]
        x = np.pad(x, ((0, 0), (padding, padding)))
        length = (x.shape[1] - dilation * (kernel - 1) - 1) // stride + 1
        taps = np.stack([x[:, k * dilation: k * dilation + stride * (length - 1) + 1: stride]
                         for k in range(kernel)], axis=-1)  # (C_in, L_out, kernel)
        acc = np.einsum("ilk,oik->ol", taps, weight) + self._a(f"{name}.bias")[:, None]
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
        """The table of sigmoid/tanh module `name`, indexed by the int8 code."""
        return self._a(f"{name}.lut")[x - self.numerics.act_range[0]]


class RNNTExecutor(IntegerModel):
    """Runs an RNN-T written by `export_int` with integer numpy arithmetic."""

    def __init__(self, path: str | Path) -> None:
        super().__init__(path)
        if self.header.get("architecture") != "rnnt":
            raise NNAError(f"{path} holds architecture {self.header.get('architecture')!r}; RNNTExecutor "
                           "runs 'rnnt' only.")
        self.subsampling = self.config.get("subsampling", "conv")
        self.first = "frontend.conv1" if self.subsampling == "conv" else "frontend.linear"

    def quantize_features(self, feats: np.ndarray) -> np.ndarray:
        """Host side: (frames, n_mels) float features -> int8 codes at the front end's input scale."""
        return self.quantize_input(self.first, feats)

    def frontend(self, feat_codes: np.ndarray) -> np.ndarray:
        """int8 feature codes (T, n_mels) -> (ceil(T / 4), frontend_dim)."""
        if self.subsampling == "conv":
            x = feat_codes.T
            for conv in ("frontend.conv1", "frontend.conv2"):
                kernel = self._a(f"{conv}.weight").shape[2]
                x = np.pad(x, ((0, 0), (kernel - 1, 0)))  # causal: left padding only
                x = np.maximum(self.conv1d(conv, x), 0)
            return x.T
        frames, n_mels = feat_codes.shape
        x = np.pad(feat_codes, ((0, (-frames) % SUBSAMPLING), (0, 0))).reshape(-1, SUBSAMPLING * n_mels)
        return np.maximum(self.linear("frontend.linear", x), 0)

    def encode(self, feat_codes: np.ndarray) -> np.ndarray:
        """int8 feature codes (T, n_mels) -> int8 encoder output codes (ceil(T / 4), joint_dim)."""
        x, _ = self.lstm("encoder.lstm", self.frontend(feat_codes))
        return self.linear("encoder.proj", x)

    def predictor_step(self, token: int, state: LSTMState | None) -> tuple[np.ndarray, LSTMState]:
        """One label -> int8 predictor output codes (joint_dim,) and the new LSTM state."""
        x = self.embedding("predictor.embed", np.array([token]))
        x, state = self.lstm("predictor.lstm", x, state)
        return self.linear("predictor.proj", x[0]), state

    def joiner(self, enc: np.ndarray, pred: np.ndarray) -> np.ndarray:
        """int8 encoder and predictor codes (broadcasting, (..., J)) -> int8 logit codes (..., V)."""
        return self.linear("joiner.out", self.lookup("joiner.activation", self.add("joiner.add", enc, pred)))

    def greedy_decode(self, feat_codes: np.ndarray, max_symbols_per_frame: int = 5,
                      blank: int = BLANK) -> list[int]:
        """Greedy transducer decoding of one utterance's int8 feature codes -> label ids (no blanks)."""
        enc = self.encode(feat_codes)
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
