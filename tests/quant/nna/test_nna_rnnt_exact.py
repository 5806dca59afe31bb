"""The emulated RNN-T (training graph) against the numpy reference executor, bit for bit, on real speech."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from nna_cases import RNNT_MIXED_4_6_8 as MIXED_4_6_8
from nna_cases import UNIFORM_8, codes, emulate, emulated_and_executor

from mpsearch.quant import apply
from mpsearch.quant.nna import NNAError, NNANumerics, checking_grid
from mpsearch.quant.nna.executor import RNNTExecutor

COMPARED = 3  # utterances whose joint lattice is compared in full


@pytest.mark.parametrize("policy, numerics, subsampling", [
    (UNIFORM_8, None, "conv"),
    (MIXED_4_6_8, NNANumerics(multiplier_bits=30, rounding="half_even"), "conv"),
    (MIXED_4_6_8, NNANumerics(multiplier_bits=11, rounding="half_away"), "stack"),
], ids=["uniform8", "mixed468", "stack-frontend"])
def test_emulation_matches_the_integer_executor(make_rnnt, speech, tmp_path, policy, numerics, subsampling):
    emulated, executor = emulated_and_executor(make_rnnt(subsampling), speech, policy, numerics, RNNTExecutor,
                                               tmp_path / "rnnt.npz")
    feats, feat_lens, targets, target_lens = speech.evaluation
    with torch.no_grad(), checking_grid():
        enc, enc_lens = emulated.encode(feats, feat_lens)
        pred = emulated.predictor(targets, target_lens)
        logits = emulated.joiner(enc[:COMPARED, :, None], pred[:COMPARED, None])  # the training joint
        hypotheses = emulated.greedy_decode(feats, feat_lens)
    enc_codes = codes(enc, emulated.encoder.proj.out_scale)
    logit_codes = codes(logits, emulated.joiner.out.out_scale)

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


def test_loss_sees_the_chips_errors_and_stays_close_to_float(tiny_rnnt, speech):
    emulated = emulate(tiny_rnnt, speech, UNIFORM_8)
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


