"""onnxruntime against the reference executor on real utterances: codes layer by layer, and transcripts.

Per utterance of a split, for an RNN-T (batched for the encoder, as a deployment would run it):
  encoder    every module's codes over the utterance's valid frames
  predictor  the reference labels fed from blank (teacher forcing), every module's codes
  joiner     the full lattice of the executor's encoder and predictor codes, every module's codes
  decoding   greedy search with the ONNX graphs (numpy around onnxruntime) and with the executor
and for a Conformer with a CTC head (the whole padded batch in one run of its graph):
  ctc        every module's codes over the utterance's valid frames (attention's over its valid keys)
  decoding   the CTC best path of the graph's logits and the executor's greedy_decode
Agreement per layer is the fraction of codes that match exactly and the largest difference in codes;
transcripts are scored against the references (WER, CER) and against each other.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from mpsearch.onnx.deps import OnnxError
from mpsearch.onnx.export import architecture
from mpsearch.onnx.reference import conformer_taps, encoder_taps, joiner_taps, predictor_taps
from mpsearch.onnx.runtime import OnnxCTC, OnnxTransducer, tap_names
from mpsearch.quant.nna.executor import ConformerExecutor, IntegerModel, RNNTExecutor, ctc_best_path

SHOWN_DIFFERENCES = 5


@dataclass
class Agreement:
    """Running count of equal codes between onnxruntime and the executor for one layer."""

    equal: int = 0
    total: int = 0
    max_diff: int = 0

    def add(self, name: str, onnx_codes: np.ndarray, reference: np.ndarray) -> None:
        """`onnx_codes` may be padded past `reference` (a batch's longer utterances); the valid part counts."""
        valid = onnx_codes[tuple(slice(0, size) for size in reference.shape)].astype(np.int64)
        if valid.shape != reference.shape:
            raise OnnxError(f"The ONNX graph gives '{name}' shape {onnx_codes.shape}, too small for the executor's "
                            f"{reference.shape}; export the graphs again from this model.npz.")
        diff = np.abs(valid - reference)
        self.equal += int((diff == 0).sum())
        self.total += int(diff.size)
        self.max_diff = max(self.max_diff, int(diff.max(initial=0)))

    def to_dict(self) -> dict[str, Any]:
        return {"exact": self.equal / self.total if self.total else 1.0, "max_code_diff": self.max_diff,
                "codes": self.total}


class SplitCheck:
    """Accumulates the comparison of ONNX graphs with the reference executor of the same export: layers'
    agreement and both decodings' labels; a subclass adds a batch as its architecture runs it."""

    def __init__(self, executor: IntegerModel, graphs: Any) -> None:
        self.executor, self.graphs = executor, graphs
        self.layers: dict[str, Agreement] = {}
        self.refs: list[str] = []
        self.labels: dict[str, list[list[int]]] = {"onnx": [], "executor": []}

    def _agree(self, onnx_taps: dict[str, np.ndarray], reference: dict[str, np.ndarray], row: int | None) -> None:
        for name, codes in reference.items():
            if name in onnx_taps:
                tapped = onnx_taps[name] if row is None else onnx_taps[name][row]
                self.layers.setdefault(name, Agreement()).add(name, tapped, codes)

    def _codes(self, feats: np.ndarray, feat_lens: list[int]) -> tuple[list[np.ndarray], np.ndarray]:
        """The host's int8 codes of each utterance, and the padded batch of them (zeros past each end)."""
        codes = [self.executor.quantize_features(feats[b, :length]) for b, length in enumerate(feat_lens)]
        padded = np.zeros((len(codes), max(feat_lens), feats.shape[2]), np.int8)
        for b, c in enumerate(codes):
            padded[b, : len(c)] = c
        return codes, padded

    def add_batch(self, feats: np.ndarray, feat_lens: list[int], tokens: list[list[int]], texts: list[str]) -> None:
        """One padded batch: float features (B, T, n_mels), lengths, reference labels and texts."""
        raise NotImplementedError

    def report(self, decode: Any) -> dict[str, Any]:
        """The per-layer agreement, both WERs and how many transcripts are identical; `decode` maps label
        ids to text (the study's tokenizer)."""
        from mpsearch.eval.wer import error_rates

        hyps = {who: [decode(labels) for labels in seqs] for who, seqs in self.labels.items()}
        differing = [i for i, (a, b) in enumerate(zip(hyps["onnx"], hyps["executor"])) if a != b]
        return {
            "utterances": len(self.refs),
            "layers": {name: self.layers[name].to_dict() for name in sorted(self.layers)},
            "onnx": error_rates(self.refs, hyps["onnx"]) if self.refs else {},
            "executor": error_rates(self.refs, hyps["executor"]) if self.refs else {},
            "identical_transcripts": len(self.refs) - len(differing),
            "differences": [{"reference": self.refs[i], "onnx": hyps["onnx"][i], "executor": hyps["executor"][i]}
                            for i in differing[:SHOWN_DIFFERENCES]],
        }


class TransducerCheck(SplitCheck):
    """An `OnnxTransducer` against the `RNNTExecutor` of the same export."""

    def __init__(self, executor: RNNTExecutor, graphs: OnnxTransducer, max_symbols_per_frame: int = 5) -> None:
        super().__init__(executor, graphs)
        self.max_symbols = max_symbols_per_frame

    def add_batch(self, feats: np.ndarray, feat_lens: list[int], tokens: list[list[int]], texts: list[str]) -> None:
        ex = self.executor
        codes, padded = self._codes(feats, feat_lens)
        enc, enc_lens, enc_taps = self.graphs.encode(padded, feat_lens, taps=True)
        labelled = [[0, *t] for t in tokens]
        label_rows = np.zeros((len(tokens), max(map(len, labelled))), np.int64)
        for b, t in enumerate(labelled):
            label_rows[b, : len(t)] = t
        _, _, pred_taps = self.graphs.predict(label_rows, taps=True)
        for b in range(len(codes)):
            reference = encoder_taps(ex, codes[b])
            self._agree(enc_taps, reference, b)
            predicted = predictor_taps(ex, labelled[b])
            self._agree(pred_taps, predicted, b)
            enc_b, pred_b = reference["encoder.proj"], predicted["predictor.proj"]
            rows_enc = np.repeat(enc_b, len(pred_b), axis=0)
            rows_pred = np.tile(pred_b, (len(enc_b), 1))
            _, join_taps = self.graphs.join(rows_enc, rows_pred, taps=True)
            self._agree(join_taps, joiner_taps(ex, rows_enc, rows_pred), None)
            self.labels["onnx"].append(self.graphs.greedy(enc[b, : int(enc_lens[b])], self.max_symbols))
            self.labels["executor"].append(ex.transducer_greedy(enc_b, self.max_symbols))
            self.refs.append(texts[b])


class CTCCheck(SplitCheck):
    """An `OnnxCTC` against the `ConformerExecutor` of the same export."""

    def add_batch(self, feats: np.ndarray, feat_lens: list[int], tokens: list[list[int]], texts: list[str]) -> None:
        codes, padded = self._codes(feats, feat_lens)
        logits, logit_lens, taps = self.graphs.logits(padded, feat_lens, taps=True)
        for b in range(len(codes)):
            reference = conformer_taps(self.executor, codes[b])
            self._agree(taps, reference, b)
            self.labels["onnx"].append(self.graphs.greedy(logits[b, : int(logit_lens[b])]))
            # the executor's greedy_decode, from the logits its run for the taps already computed
            self.labels["executor"].append(ctc_best_path(reference["ctc_head"]))
            self.refs.append(texts[b])


def _transducer_check(npz: Path, max_symbols_per_frame: int) -> SplitCheck:
    executor = RNNTExecutor(npz)
    return TransducerCheck(executor, OnnxTransducer(npz, taps=tap_names(executor.modules)), max_symbols_per_frame)


def _ctc_check(npz: Path, max_symbols_per_frame: int) -> SplitCheck:  # CTC emits at most one label a frame
    executor = ConformerExecutor(npz)
    return CTCCheck(executor, OnnxCTC(npz, taps=tap_names(executor.modules)))


CHECKS: dict[str, Callable[[Path, int], SplitCheck]] = {"rnnt": _transducer_check, "conformer": _ctc_check}


def open_check(npz: str | Path, max_symbols_per_frame: int = 5) -> SplitCheck:
    """The comparison of the integer export `npz` (its reference executor) with its ONNX graphs, written
    beside it by `export_onnx`, for the architecture its header names."""
    name = architecture(npz)
    if name not in CHECKS:
        raise OnnxError(f"onnx-check covers {', '.join(sorted(CHECKS))}; {npz} holds {name!r}.")
    return CHECKS[name](Path(npz), max_symbols_per_frame)


def check_split(check: SplitCheck, batches: Iterable[Any], decode: Any, progress: int | None = None) -> dict[str, Any]:
    """Run `check` (see `open_check`) over batches with `feats`, `feat_lens`, `targets`, `target_lens`, `texts`
    (mpsearch.data.pipeline.Batch) and return its report; `progress`: the utterance count, for a bar."""
    from tqdm import tqdm

    with tqdm(total=progress, disable=progress is None, desc="onnx-check", unit="utt", leave=False) as bar:
        for batch in batches:
            lens = [int(n) for n in batch.feat_lens]
            tokens = [batch.targets[b, : int(batch.target_lens[b])].tolist() for b in range(len(lens))]
            check.add_batch(batch.feats.numpy(), lens, tokens, list(batch.texts))
            bar.update(len(lens))
    return check.report(decode)
