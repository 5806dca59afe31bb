"""The ONNX graphs in onnxruntime, and greedy decoding around them in numpy.

OnnxCTC runs the Conformer's CTC graph; its best path mirrors `ConformerExecutor.greedy_decode`: the
argmax per frame (first of equal codes), repeats collapsed, blanks dropped.

OnnxTransducer runs the three RNN-T graphs; its search mirrors `TransducerDecoding.transducer_greedy` of
the reference executor: per encoder frame, emit the joiner's argmax (first of equal codes) until blank or
`max_symbols_per_frame` labels, feeding each label to the prediction network, whose state starts at
zeros with blank as the first label.

Asked for taps, either returns the int8 codes of the modules too (the values the graphs name after them),
so a check can compare them layer by layer.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from mpsearch.onnx.deps import OnnxError, require_onnx, require_onnxruntime
from mpsearch.onnx.export import onnx_paths
from mpsearch.quant.nna.executor import BLANK, SUBSAMPLING, ctc_best_path


def _with_taps(model: Any, names: set[str]) -> tuple[Any, list[str]]:
    """`model` with those of `names` that its nodes produce added as int8 graph outputs."""
    onnx = require_onnx()
    outputs = {out.name for out in model.graph.output}
    taps = sorted({out for node in model.graph.node for out in node.output if out in names} - outputs)
    for name in taps:
        model.graph.output.append(onnx.helper.make_tensor_value_info(name, onnx.TensorProto.INT8, None))
    return model, taps


def tap_names(modules: dict[str, dict[str, Any]]) -> set[str]:
    """Every module of an export header, and each layer `<name>.l<k>` of its LSTMs."""
    names = set(modules)
    for name, info in modules.items():
        if info["kind"] == "lstm":
            names.update(f"{name}.l{k}" for k in range(info["layers"]))
    return names


class OnnxGraphs:
    """Sessions over the graphs written for the integer export `npz`, one per part, with their metadata.
    `taps`: names of module outputs to return too (see `tap_names`), where a graph has them."""

    def __init__(self, npz: str | Path, taps: set[str] | None = None, threads: int = 1) -> None:
        onnx, ort = require_onnx(), require_onnxruntime()
        paths = onnx_paths(npz)
        missing = [str(p) for p in paths.values() if not p.is_file()]
        if missing:
            raise OnnxError(f"Missing ONNX graph(s) {', '.join(missing)}; write them with "
                            "mpsearch.onnx.export_onnx(npz) or `mpsearch train STUDY --policy P.json`.")
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        self.sessions: dict[str, Any] = {}
        self.taps: dict[str, list[str]] = {}
        self.metadata: dict[str, dict[str, str]] = {}
        for part, path in paths.items():
            model, self.taps[part] = _with_taps(onnx.load(str(path)), taps or set())
            self.metadata[part] = {p.key: p.value for p in model.metadata_props}
            self.sessions[part] = ort.InferenceSession(model.SerializeToString(), options,
                                                       providers=["CPUExecutionProvider"])

    def _run(self, part: str, feeds: dict[str, np.ndarray], outputs: list[str], taps: bool) -> tuple[list, dict]:
        names = self.taps[part] if taps else []
        values = self.sessions[part].run(outputs + names, feeds)
        return values[: len(outputs)], dict(zip(names, values[len(outputs):]))


class OnnxTransducer(OnnxGraphs):
    """Sessions over `<stem>.encoder.onnx`, `.predictor.onnx` and `.joiner.onnx` written for the integer
    export `npz` of an RNN-T."""

    def __init__(self, npz: str | Path, taps: set[str] | None = None, threads: int = 1) -> None:
        super().__init__(npz, taps, threads)
        if set(self.sessions) != {"encoder", "predictor", "joiner"}:
            raise OnnxError(f"{npz} has the graphs {sorted(self.sessions)}; OnnxTransducer runs an RNN-T's.")
        metadata = self.metadata["predictor"]
        self.layers, self.hidden = int(metadata["mpsearch.layers"]), int(metadata["mpsearch.hidden"])

    def encode(self, feat_codes: np.ndarray, feat_lens: np.ndarray, taps: bool = False,
               ) -> tuple[np.ndarray, np.ndarray, dict]:
        """int8 feature codes (B, T, n_mels) and lengths -> enc codes (B, T', J), enc_lens, the taps."""
        feeds = {"feats": feat_codes.astype(np.int8), "feat_lens": np.asarray(feat_lens, np.int64)}
        (enc, enc_lens), tapped = self._run("encoder", feeds, ["enc", "enc_lens"], taps)
        return enc, enc_lens, tapped

    def zero_state(self, batch: int) -> tuple[np.ndarray, np.ndarray]:
        shape = (self.layers, batch, self.hidden)
        return np.zeros(shape, np.int8), np.zeros(shape, np.int16)

    def predict(self, tokens: np.ndarray, state: tuple[np.ndarray, np.ndarray] | None = None,
                taps: bool = False) -> tuple[np.ndarray, tuple[np.ndarray, np.ndarray], dict]:
        """Labels (B, U) -> predictor codes (B, U, J), the state after them, the taps."""
        tokens = np.asarray(tokens, np.int64)
        h, c = state if state is not None else self.zero_state(tokens.shape[0])
        feeds = {"tokens": tokens, "h": h, "c": c}
        (pred, h, c), tapped = self._run("predictor", feeds, ["pred", "h_out", "c_out"], taps)
        return pred, (h, c), tapped

    def join(self, enc: np.ndarray, pred: np.ndarray, taps: bool = False) -> tuple[np.ndarray, dict]:
        """int8 rows (N, J) of encoder and predictor codes -> logit codes (N, V), the taps."""
        feeds = {"enc": enc.astype(np.int8), "pred": pred.astype(np.int8)}
        (logits,), tapped = self._run("joiner", feeds, ["logits"], taps)
        return logits, tapped

    def greedy(self, enc: np.ndarray, max_symbols_per_frame: int = 5, blank: int = BLANK) -> list[int]:
        """Greedy transducer decoding of one utterance's int8 encoder codes (T, J) -> labels (no blanks)."""
        pred, state, _ = self.predict(np.array([[blank]]))
        labels: list[int] = []
        for enc_t in enc:
            for _ in range(max_symbols_per_frame):
                logits, _ = self.join(enc_t[None], pred[:, 0])
                label = int(np.argmax(logits[0]))
                if label == blank:
                    break
                labels.append(label)
                pred, state, _ = self.predict(np.array([[label]]), state)
        return labels


class OnnxCTC(OnnxGraphs):
    """A session over `<stem>.ctc.onnx` written for the integer export `npz` of a Conformer with a CTC head."""

    def __init__(self, npz: str | Path, taps: set[str] | None = None, threads: int = 1) -> None:
        super().__init__(npz, taps, threads)
        if set(self.sessions) != {"ctc"}:
            raise OnnxError(f"{npz} has the graphs {sorted(self.sessions)}; OnnxCTC runs a Conformer CTC graph.")
        self.max_frames = int(self.metadata["ctc"]["mpsearch.max_frames"])

    def logits(self, feat_codes: np.ndarray, feat_lens: np.ndarray, taps: bool = False,
               ) -> tuple[np.ndarray, np.ndarray, dict]:
        """int8 feature codes (B, T, n_mels) and lengths -> logit codes (B, ceil(T / 4), V), their lengths,
        the taps."""
        frames = -(-feat_codes.shape[1] // SUBSAMPLING)
        if frames > self.max_frames:
            raise OnnxError(f"{feat_codes.shape[1]} feature frames make {frames} encoder frames; the graph's rotary "
                            f"tables cover {self.max_frames}. Split the audio, or build the graph with "
                            "mpsearch.onnx.conformer.ctc_graph(model, max_frames=N).")
        feeds = {"feats": feat_codes.astype(np.int8), "feat_lens": np.asarray(feat_lens, np.int64)}
        (logits, lens), tapped = self._run("ctc", feeds, ["logits", "logit_lens"], taps)
        return logits, lens, tapped

    def greedy(self, logits: np.ndarray, blank: int = BLANK) -> list[int]:
        """Greedy CTC decoding of one utterance's int8 logit codes (T, V) -> labels (no blanks)."""
        return ctc_best_path(logits, blank)
