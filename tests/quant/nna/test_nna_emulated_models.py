"""What every emulated speech model (RNN-T, Conformer with either head, chunked or not) keeps on real speech:
batching changes no code, gradients reach every float weight, and the state survives a round trip."""

from __future__ import annotations

import pytest
import torch
from nna_cases import CONFORMER_MIXED_4_6_8, RNNT_MIXED_4_6_8, UNIFORM_8, emulate

from mpsearch.quant import apply
from mpsearch.quant.nna import checking_grid


@pytest.fixture
def make_model(make_rnnt, make_conformer):
    """make_model(arch, **overrides) -> a fresh tiny model of `arch` for the corpus' vocabulary."""
    return lambda arch, **overrides: make_rnnt(**overrides) if arch == "rnnt" else make_conformer(**overrides)


@pytest.mark.parametrize("arch, overrides", [("rnnt", {}), ("conformer", {}), ("conformer", {"chunk_size": 3})],
                         ids=["rnnt", "conformer", "conformer-chunked"])
def test_batched_emulation_equals_each_utterance_alone(make_model, speech, arch, overrides):
    model = emulate(make_model(arch, **overrides), speech, UNIFORM_8)
    feats, feat_lens, _, _ = speech.evaluation
    with torch.no_grad():
        enc, enc_lens = model.encode(feats, feat_lens)
        for b in range(feats.shape[0]):
            alone, _ = model.encode(feats[b: b + 1, : feat_lens[b]], feat_lens[b: b + 1])
            assert torch.equal(alone[0], enc[b, : enc_lens[b]])


@pytest.mark.parametrize("arch, overrides, policy", [
    ("rnnt", {}, RNNT_MIXED_4_6_8),
    ("conformer", {"head": "ctc"}, CONFORMER_MIXED_4_6_8),
    ("conformer", {"head": "transducer"}, CONFORMER_MIXED_4_6_8),
], ids=["rnnt", "conformer-ctc", "conformer-transducer"])
def test_gradients_reach_every_float_weight_through_the_integer_forward(make_model, speech, arch, overrides,
                                                                         policy):
    model = emulate(make_model(arch, **overrides), speech, policy)
    model.train()
    with checking_grid():
        loss = model(*speech.evaluation)
    loss.backward()
    assert torch.isfinite(loss)
    for name, param in model.named_parameters():
        assert param.grad is not None and param.grad.abs().sum() > 0, name


@pytest.mark.parametrize("arch", ["rnnt", "conformer"])
def test_emulated_model_survives_a_state_dict_round_trip(make_model, speech, arch):
    model = make_model(arch)
    trained = emulate(model, speech, UNIFORM_8)
    fresh = apply(model, UNIFORM_8, emulation="nna")
    fresh.load_state_dict(trained.state_dict())
    feats, feat_lens, _, _ = speech.evaluation
    with torch.no_grad():
        assert torch.equal(fresh.encode(feats, feat_lens)[0], trained.encode(feats, feat_lens)[0])
