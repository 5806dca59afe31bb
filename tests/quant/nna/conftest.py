"""Real utterances from the built-in corpus, a tiny RNN-T and a tiny Conformer, shared by the NNA tests."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pytest
import torch

from mpsearch.data.features import log_mel, normalize_utterance
from mpsearch.data.manifest import load_audio, read_manifest
from mpsearch.data.synth import synthesize_corpus
from mpsearch.data.tokenizer import CharTokenizer
from mpsearch.models.conformer import Conformer, ConformerConfig
from mpsearch.models.rnnt import RNNT, RNNTConfig

N_MELS = 80


@dataclass(frozen=True)
class Speech:
    """Padded batches of real utterances: (feats, feat_lens, targets, target_lens) each."""

    calibration: tuple[torch.Tensor, ...]
    evaluation: tuple[torch.Tensor, ...]
    vocab_size: int


def _batch(items: list[tuple[torch.Tensor, list[int]]]) -> tuple[torch.Tensor, ...]:
    feat_lens = torch.tensor([f.shape[0] for f, _ in items])
    target_lens = torch.tensor([len(t) for _, t in items])
    # Garbage in the padding, so a masking mistake shows.
    feats = torch.full((len(items), int(feat_lens.max()), N_MELS), 7.5)
    targets = torch.full((len(items), int(target_lens.max())), -1, dtype=torch.long)
    for b, (f, t) in enumerate(items):
        feats[b, : f.shape[0]] = f
        targets[b, : len(t)] = torch.tensor(t)
    return feats, feat_lens, targets, target_lens


@pytest.fixture(scope="session")
def speech(tmp_path_factory) -> Speech:
    """20 synthesized utterances: 16 (train split) calibrate, 4 (dev and test) are compared."""
    manifests = synthesize_corpus(tmp_path_factory.mktemp("nna") / "corpus", utterances=20, seed=0, workers=1)
    tokenizer = CharTokenizer()
    splits = {}
    for split, path in manifests.items():
        items = []
        for utt in read_manifest(path):
            audio = torch.from_numpy(np.asarray(load_audio(utt.audio_filepath), dtype=np.float32))
            items.append((normalize_utterance(log_mel(audio, N_MELS)), tokenizer.encode(utt.text)))
        splits[split] = items
    return Speech(_batch(splits["train"]), _batch(splits["dev"] + splits["test"]), tokenizer.vocab_size)


def make_tiny_rnnt(vocab_size: int, subsampling: str = "conv") -> RNNT:
    """A seeded tiny RNN-T (2 encoder LSTM layers of 32) whose greedy decoding emits blanks and labels."""
    torch.manual_seed(0)
    config = RNNTConfig(n_mels=N_MELS, vocab_size=vocab_size, subsampling=subsampling, frontend_dim=32,
                        enc_hidden=32, enc_layers=2, pred_embed=16, pred_hidden=32, joint_dim=32)
    model = RNNT(config)
    with torch.no_grad():
        # Untrained, the logits barely depend on the input and decoding emits always or never; larger
        # joint weights and a blank bias make it take both branches, as a trained model does.
        model.encoder.proj.weight *= 2
        model.predictor.proj.weight *= 2
        model.joiner.out.weight *= 4
        model.joiner.out.bias[0] = 1.5
    return model


@pytest.fixture
def tiny_rnnt(speech) -> RNNT:
    return make_tiny_rnnt(speech.vocab_size)


@pytest.fixture
def make_rnnt(speech):
    """make_rnnt(subsampling="conv") -> a fresh tiny RNN-T for the corpus' vocabulary."""
    return lambda subsampling="conv": make_tiny_rnnt(speech.vocab_size, subsampling)


def make_tiny_conformer(vocab_size: int, **overrides) -> Conformer:
    """A seeded tiny Conformer (d_model 32, 2 heads, 2 layers, kernel 7) whose greedy decoding emits blanks
    and labels; `overrides` are ConformerConfig fields (head, chunk_size, ...)."""
    torch.manual_seed(0)
    params = {"n_mels": N_MELS, "vocab_size": vocab_size, "d_model": 32, "n_heads": 2, "n_layers": 2,
              "ff_mult": 2, "conv_kernel": 7, "pred_embed": 16, "pred_hidden": 32, "joint_dim": 32}
    model = Conformer(ConformerConfig(**{**params, **overrides}))
    with torch.no_grad():
        # As for the RNN-T: sharper output layers and a blank bias make greedy decoding take both branches.
        if model.kind == "ctc":
            model.ctc_head.weight *= 4
            model.ctc_head.bias[0] = 8.0
        else:
            model.enc_proj.weight *= 2
            model.predictor.proj.weight *= 2
            model.joiner.out.weight *= 4
            model.joiner.out.bias[0] = 1.5
    return model


@pytest.fixture
def make_conformer(speech):
    """make_conformer(**overrides) -> a fresh tiny Conformer for the corpus' vocabulary."""
    return lambda **overrides: make_tiny_conformer(speech.vocab_size, **overrides)
