"""A tiny study on the session's synthesized corpus (16 mel bins, a small RNN-T, a few steps), its
features, and tiny RNN-Ts and Conformers quantized under NNA emulation, for the ONNX export tests."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import yaml

from mpsearch.config import StudyConfig
from mpsearch.models.conformer import Conformer, ConformerConfig
from mpsearch.models.rnnt import RNNT, RNNTConfig
from mpsearch.quant import Policy, QuantConfig, apply
from mpsearch.quant.nna import calibrate_nna
from mpsearch.study import Study

pytest.importorskip("onnxruntime")

N_MELS = 16
GARBAGE = 77  # feature codes past an utterance's end, which no valid frame may read


def padded(codes: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Utterances' int8 feature codes (T_b, n_mels) -> the padded batch (garbage past each end), lengths."""
    lens = np.array([len(c) for c in codes])
    batch = np.full((len(codes), lens.max(), codes[0].shape[1]), GARBAGE, np.int8)
    for b, c in enumerate(codes):
        batch[b, : len(c)] = c
    return batch, lens


def study_dict(folder, corpus) -> dict:
    return {
        "name": "onnx-tiny",
        "output_dir": str(folder / "study"),
        "data": {"corpus": "manifest", "train": str(corpus.manifests["train"]), "dev": str(corpus.manifests["dev"]),
                 "test": str(corpus.manifests["test"]), "max_batch_frames": 3000, "features": {"n_mels": N_MELS}},
        "model": {"name": "rnnt", "params": {"frontend_dim": 8, "enc_hidden": 12, "enc_layers": 1, "pred_embed": 6,
                                             "pred_hidden": 12, "joint_dim": 10, "dropout": 0.0}},
        "train": {"max_steps": 2, "warmup_steps": 0, "eval_every": 100, "threads": 1},
        "search": {"calibration_batches": 1, "eval_utterances": 3, "workers": 1,
                   "finetune": {"max_steps": 1, "warmup_steps": 0, "threads": 1}},
    }


@pytest.fixture
def tiny_study_yaml(tmp_path, synth_corpus):
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump(study_dict(tmp_path, synth_corpus)))
    return path


@pytest.fixture(scope="session")
def speech(tmp_path_factory, synth_corpus):
    """The corpus' features and tokenizer (mpsearch.data.pipeline.SpeechData)."""
    folder = tmp_path_factory.mktemp("onnx-data")
    return Study(StudyConfig.from_dict(study_dict(folder, synth_corpus)), progress=False).data


def tiny_rnnt(vocab_size: int, subsampling: str, batch) -> RNNT:
    """A seeded tiny RNN-T (2 encoder and 2 predictor LSTM layers) whose greedy decoding emits labels and
    blanks on `batch`."""
    torch.manual_seed(0)
    model = RNNT(RNNTConfig(n_mels=N_MELS, vocab_size=vocab_size, subsampling=subsampling, frontend_dim=16,
                            enc_hidden=16, enc_layers=2, pred_embed=8, pred_hidden=16, pred_layers=2, joint_dim=16))
    model.eval()
    with torch.no_grad():
        # Untrained, blank wins every frame or none; a blank bias at the median margin over the best label
        # (on the first prediction step) makes greedy decoding take both branches, as a trained model does.
        model.joiner.out.weight *= 4
        enc, _ = model.encode(batch.feats, batch.feat_lens)
        pred, _ = model.predictor.step(torch.zeros(len(batch), dtype=torch.long), None)
        logits = model.joiner(enc, pred[:, None])
        margin = logits[..., 0] - logits[..., 1:].amax(dim=-1)
        model.joiner.out.bias[0] -= margin.median()
    return model


@pytest.fixture
def emulated_rnnt(speech):
    """emulated_rnnt(policy, numerics, subsampling) -> a calibrated tiny RNN-T under NNA emulation, in eval mode."""

    def make(policy: Policy | None = None, numerics=None, subsampling: str = "conv") -> RNNT:
        batch = next(speech.train.batches(3000))
        model = apply(tiny_rnnt(speech.tokenizer.vocab_size, subsampling, batch),
                      policy or Policy.uniform(QuantConfig(weight_bits=8)), emulation="nna", numerics=numerics)
        calibrate_nna(model, [(batch.feats, batch.feat_lens, batch.targets, batch.target_lens)])
        return model.eval()

    return make


def tiny_conformer(vocab_size: int, batch, **overrides) -> Conformer:
    """A seeded tiny Conformer CTC model (d_model 16, 2 heads, 2 blocks, kernel 5) whose best paths hold
    labels and blanks on `batch`; `overrides` are ConformerConfig fields (chunk_size, head, ...)."""
    torch.manual_seed(0)
    params = {"n_mels": N_MELS, "vocab_size": vocab_size, "d_model": 16, "n_heads": 2, "n_layers": 2, "ff_mult": 2,
              "conv_kernel": 5, "dropout": 0.0, "pred_embed": 8, "pred_hidden": 16, "joint_dim": 16}
    model = Conformer(ConformerConfig(**{**params, **overrides}))
    model.eval()
    if model.kind == "ctc":
        with torch.no_grad():
            # As for the RNN-T: a blank bias at the median margin over the best label makes blank win about
            # half the frames, as in a trained model's best paths.
            model.ctc_head.weight *= 4
            logits = model.ctc_head(model.encode(batch.feats, batch.feat_lens)[0])
            model.ctc_head.bias[0] -= (logits[..., 0] - logits[..., 1:].amax(dim=-1)).median()
    return model


@pytest.fixture
def emulated_conformer(speech):
    """emulated_conformer(policy, numerics, **overrides) -> a calibrated tiny Conformer under NNA emulation,
    in eval mode."""

    def make(policy: Policy | None = None, numerics=None, **overrides) -> Conformer:
        batch = next(speech.train.batches(3000))
        model = apply(tiny_conformer(speech.tokenizer.vocab_size, batch, **overrides),
                      policy or Policy.uniform(QuantConfig(weight_bits=8)), emulation="nna", numerics=numerics)
        calibrate_nna(model, [(batch.feats, batch.feat_lens, batch.targets, batch.target_lens)])
        return model.eval()

    return make


@pytest.fixture
def pad():
    """pad(codes) -> (padded int8 batch with garbage past each utterance's end, lengths)."""
    return padded
