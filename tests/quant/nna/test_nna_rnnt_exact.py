"""The emulated RNN-T (training graph) against the numpy reference executor, bit for bit, on real speech."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mpsearch.quant import Policy, QuantConfig, apply, quantized_sites
from mpsearch.quant.nna import NNAError, NNANumerics, calibrate_nna, checking_grid, export_int
from mpsearch.quant.nna.executor import RNNTExecutor

UNIFORM_8 = Policy.uniform(QuantConfig(weight_bits=8))
MIXED_4_6_8 = Policy({
    "_default": QuantConfig(weight_bits=8),
    r"re:encoder\.lstm\..*": QuantConfig(weight_bits=4),
    r"re:predictor\..*": QuantConfig(weight_bits=6, method="lsq"),
    r"re:frontend\..*": QuantConfig(weight_bits=6, granularity="per_tensor"),
})
COMPARED = 3  # utterances whose joint lattice is compared in full


def _emulated(model, speech, policy, numerics=None):
    emulated = apply(model, policy, emulation="nna", numerics=numerics)
    calibrate_nna(emulated, [speech.calibration])
    return emulated


def _codes(x: torch.Tensor, scale: torch.Tensor) -> np.ndarray:
    return torch.round(x.detach().double() / scale.double()).to(torch.int64).numpy()


@pytest.mark.parametrize("policy, numerics, subsampling", [
    (UNIFORM_8, None, "conv"),
    (MIXED_4_6_8, NNANumerics(multiplier_bits=30, rounding="half_even"), "conv"),
    (MIXED_4_6_8, NNANumerics(multiplier_bits=11, rounding="half_away"), "stack"),
], ids=["uniform8", "mixed468", "stack-frontend"])
def test_emulation_matches_the_integer_executor(make_rnnt, speech, tmp_path, policy, numerics, subsampling):
    emulated = _emulated(make_rnnt(subsampling), speech, policy, numerics)
    expected_bits = {name: q.bits for name, q in quantized_sites(emulated).items()}
    header = export_int(emulated, tmp_path / "rnnt.npz")
    assert {name: site["bits"] for name, site in header["sites"].items()} == expected_bits
    executor = RNNTExecutor(tmp_path / "rnnt.npz")
    feats, feat_lens, targets, target_lens = speech.evaluation

    emulated.eval()
    with torch.no_grad(), checking_grid():
        enc, enc_lens = emulated.encode(feats, feat_lens)
        pred = emulated.predictor(targets, target_lens)
        logits = emulated.joiner(enc[:COMPARED, :, None], pred[:COMPARED, None])  # the training joint
        hypotheses = emulated.greedy_decode(feats, feat_lens)
    enc_codes = _codes(enc, emulated.encoder.proj.out_scale)
    logit_codes = _codes(logits, emulated.joiner.out.out_scale)

    emitted = 0
    for b in range(feats.shape[0]):
        feat_codes = executor.quantize_features(feats[b, : feat_lens[b]].numpy())
        frames = int(enc_lens[b])
        np.testing.assert_array_equal(executor.encode(feat_codes), enc_codes[b, :frames])
        assert executor.greedy_decode(feat_codes) == hypotheses[b]
        emitted += len(hypotheses[b])
        if b < COMPARED:
            outputs, state = [], None
            for token in [0, *targets[b, : target_lens[b]].tolist()]:
                out, state = executor.predictor_step(token, state)
                outputs.append(out)
            enc_b = executor.encode(feat_codes)[:, None]
            lattice = executor.joiner(enc_b, np.stack(outputs)[None])
            np.testing.assert_array_equal(lattice, logit_codes[b, :frames, : int(target_lens[b]) + 1])
    # Both branches of greedy decoding ran: labels were emitted, and blanks ended some frames early.
    assert 0 < emitted < 5 * int(enc_lens.sum())


def test_batched_emulation_equals_each_utterance_alone(tiny_rnnt, speech):
    emulated = _emulated(tiny_rnnt, speech, UNIFORM_8)
    feats, feat_lens, _, _ = speech.evaluation
    with torch.no_grad():
        enc, enc_lens = emulated.encode(feats, feat_lens)
        for b in range(feats.shape[0]):
            alone, _ = emulated.encode(feats[b: b + 1, : feat_lens[b]], feat_lens[b: b + 1])
            assert torch.equal(alone[0], enc[b, : enc_lens[b]])


def test_gradients_reach_every_float_weight_through_the_integer_forward(tiny_rnnt, speech):
    emulated = _emulated(tiny_rnnt, speech, MIXED_4_6_8)
    emulated.train()
    feats, feat_lens, targets, target_lens = speech.evaluation
    with checking_grid():
        loss = emulated(feats, feat_lens, targets, target_lens)
    loss.backward()
    assert torch.isfinite(loss)
    for name, param in emulated.named_parameters():
        assert param.grad is not None and param.grad.abs().sum() > 0, name


def test_loss_sees_the_chips_errors_and_stays_close_to_float(tiny_rnnt, speech):
    emulated = _emulated(tiny_rnnt, speech, UNIFORM_8)
    batch = speech.evaluation
    with torch.no_grad():
        float_loss, int_loss = float(tiny_rnnt.eval()(*batch)), float(emulated(*batch))
    assert int_loss != float_loss
    assert abs(int_loss - float_loss) < 0.1 * abs(float_loss)


def test_using_the_model_before_calibration_says_to_calibrate(tiny_rnnt, speech):
    emulated = apply(tiny_rnnt, UNIFORM_8, emulation="nna")
    with pytest.raises(NNAError, match=r"'frontend\.conv1' has no calibrated scales; run "
                                       r"mpsearch\.quant\.nna\.calibrate_nna\(model, batches\)"):
        emulated(*speech.evaluation)


def test_emulated_model_survives_a_state_dict_round_trip(tiny_rnnt, speech):
    emulated = _emulated(tiny_rnnt, speech, UNIFORM_8)
    fresh = apply(tiny_rnnt, UNIFORM_8, emulation="nna")
    fresh.load_state_dict(emulated.state_dict())
    feats, feat_lens, _, _ = speech.evaluation
    with torch.no_grad():
        assert torch.equal(fresh.encode(feats, feat_lens)[0], emulated.encode(feats, feat_lens)[0])
