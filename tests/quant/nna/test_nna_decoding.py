"""Batched integer greedy decoding against the modules' own calls and against the numpy reference executor
(each utterance decoded alone), label for label, on real speech."""

from __future__ import annotations

import pytest
import torch
from nna_cases import UNIFORM_8, emulate

from mpsearch.models.rnnt import FloatGreedySteps, greedy_steps, transducer_greedy_search
from mpsearch.quant import Policy, QuantConfig
from mpsearch.quant.nna import NNANumerics, checking_grid, export_int
from mpsearch.quant.nna.decoding import IntegerGreedySteps
from mpsearch.quant.nna.executor import ConformerExecutor, RNNTExecutor

MIXED_4_6_8 = Policy({
    "_default": QuantConfig(weight_bits=8),
    r"re:encoder\..*": QuantConfig(weight_bits=4),
    r"re:predictor\..*": QuantConfig(weight_bits=6, method="lsq"),
    r"re:joiner\..*": QuantConfig(weight_bits=5, granularity="per_tensor"),
})
FRAMES = 16  # encoder frames decoded module by module


def _module_by_module(emulated, enc, enc_lens, max_symbols):
    """The same search on the modules' own calls (each layer's integer forward, as training runs it)."""
    return transducer_greedy_search(enc, enc_lens, emulated.predictor, emulated.joiner, max_symbols,
                                    make_steps=FloatGreedySteps)


def _executor_alone(executor, feats, feat_lens, max_symbols=5):
    """Each utterance decoded by itself, unpadded, by the numpy reference executor."""
    return [executor.greedy_decode(executor.quantize_features(feats[b, : feat_lens[b]].numpy()), max_symbols)
            for b in range(feats.shape[0])]


@pytest.mark.parametrize("policy, numerics, subsampling, max_symbols", [
    (UNIFORM_8, None, "conv", 5),
    (MIXED_4_6_8, NNANumerics(multiplier_bits=30, rounding="half_even", lut_bits=6), "conv", 2),
    (MIXED_4_6_8, NNANumerics(multiplier_bits=11, rounding="half_away", accumulator_bits=20), "stack", 5),
], ids=["uniform8", "mixed-half_even-lut6", "stack-half_away-acc20"])
def test_batched_integer_decode_equals_the_modules_calls_and_the_executor_alone(
        make_rnnt, speech, tmp_path, policy, numerics, subsampling, max_symbols):
    emulated = emulate(make_rnnt(subsampling), speech, policy, numerics).eval()
    feats, feat_lens, _, _ = speech.evaluation
    # Longest last, so the search reorders the batch.
    order = torch.argsort(feat_lens)
    feats, feat_lens = feats[order], feat_lens[order]
    with torch.no_grad():
        enc, enc_lens = emulated.encode(feats, feat_lens)
        assert isinstance(greedy_steps(emulated.predictor, emulated.joiner, enc), IntegerGreedySteps)
    batched = emulated.greedy_decode(feats, feat_lens, max_symbols)
    # The modules' own calls are slow: the first frames of each utterance are enough to compare.
    head, head_lens = enc[:, :FRAMES], enc_lens.clamp(max=FRAMES)
    with torch.no_grad():
        assert transducer_greedy_search(head, head_lens, emulated.predictor, emulated.joiner, max_symbols) == \
            _module_by_module(emulated, head, head_lens, max_symbols)
    export_int(emulated, tmp_path / "rnnt.npz")
    assert batched == _executor_alone(RNNTExecutor(tmp_path / "rnnt.npz"), feats, feat_lens, max_symbols)
    # Both branches ran: labels were emitted, and utterances stopped emitting while others went on.
    emitted = sum(len(h) for h in batched)
    assert 0 < emitted < max_symbols * int(enc_lens.sum())
    assert len({len(h) for h in batched}) > 1


def test_conformer_transducer_head_decodes_by_the_integer_steps_too(make_conformer, speech, tmp_path):
    emulated = emulate(make_conformer(head="transducer"), speech, UNIFORM_8).eval()
    feats, feat_lens, _, _ = speech.evaluation
    with torch.no_grad():
        enc = emulated.enc_proj(emulated.encode(feats, feat_lens)[0])
        assert isinstance(greedy_steps(emulated.predictor, emulated.joiner, enc), IntegerGreedySteps)
    batched = emulated.greedy_decode(feats, feat_lens, max_symbols_per_frame=2)
    export_int(emulated, tmp_path / "conformer.npz")
    assert batched == _executor_alone(ConformerExecutor(tmp_path / "conformer.npz"), feats, feat_lens, 2)
    assert any(batched)


def test_grid_checks_and_float_models_decode_by_the_modules_own_calls(tiny_rnnt, speech):
    feats, feat_lens, _, _ = speech.evaluation
    emulated = emulate(tiny_rnnt, speech, UNIFORM_8).eval()
    with torch.no_grad():
        enc, _ = emulated.encode(feats, feat_lens)
        with checking_grid():
            assert isinstance(greedy_steps(emulated.predictor, emulated.joiner, enc), FloatGreedySteps)
        float_enc, _ = tiny_rnnt.eval().encode(feats, feat_lens)
        assert isinstance(greedy_steps(tiny_rnnt.predictor, tiny_rnnt.joiner, float_enc), FloatGreedySteps)
