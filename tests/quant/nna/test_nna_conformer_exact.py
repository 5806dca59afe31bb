"""The emulated Conformer (training graph) against the numpy reference executor, bit for bit, on real speech."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from nna_cases import CONFORMER_MIXED_4_6_8 as MIXED_4_6_8
from nna_cases import UNIFORM_8, codes, emulate, emulated_and_executor
from torch import nn

from mpsearch.models.ops import Add, Mask, MatMul, Rotary, Softmax
from mpsearch.quant import apply, find_sites
from mpsearch.quant.nna import NNAError, NNANumerics, checking_grid, export_int
from mpsearch.quant.nna.executor import ConformerExecutor
from mpsearch.quant.nna.layers import NNAConv1d, NNALinear
from mpsearch.quant.nna.ops import NNAAdd, NNASiLU
from mpsearch.quant.nna.transformer import (
    NNAGLU,
    NNALayerNorm,
    NNAMask,
    NNAMatMul,
    NNARotary,
    NNASoftmax,
)


@pytest.mark.parametrize("policy, numerics, overrides", [
    (UNIFORM_8, None, {}),
    (MIXED_4_6_8, NNANumerics(multiplier_bits=30, rounding="half_even"), {}),
    (MIXED_4_6_8, NNANumerics(multiplier_bits=11, rounding="half_away"), {"chunk_size": 3}),
], ids=["uniform8", "mixed468", "chunked"])
def test_ctc_emulation_matches_the_integer_executor(make_conformer, speech, tmp_path, policy, numerics,
                                                    overrides):
    emulated, executor = emulated_and_executor(make_conformer(**overrides), speech, policy, numerics,
                                               ConformerExecutor, tmp_path / "conformer.npz")
    feats, feat_lens, _, _ = speech.evaluation
    with torch.no_grad(), checking_grid():
        enc, enc_lens = emulated.encode(feats, feat_lens)
        logits = emulated.ctc_head(enc)
        hypotheses = emulated.greedy_decode(feats, feat_lens)
    enc_codes = codes(enc, emulated.encoder.blocks[-1].norm.out_scale)
    logit_codes = codes(logits, emulated.ctc_head.out_scale)

    blank_frames = label_frames = 0
    for b in range(feats.shape[0]):
        feat_codes = executor.quantize_features(feats[b, : feat_lens[b]].numpy())
        frames = int(enc_lens[b])
        np.testing.assert_array_equal(executor.encode(feat_codes), enc_codes[b, :frames])
        logits_b = executor.ctc_logits(feat_codes)
        np.testing.assert_array_equal(logits_b, logit_codes[b, :frames])
        assert executor.greedy_decode(feat_codes) == hypotheses[b]
        best = logits_b.argmax(axis=-1)
        blank_frames += int((best == 0).sum())
        label_frames += int((best != 0).sum())
    # The best paths hold blanks and labels, so decoding collapsed and dropped frames both ways.
    assert blank_frames > 0 and label_frames > 0


def test_transducer_head_matches_the_integer_executor(make_conformer, speech, tmp_path):
    emulated, executor = emulated_and_executor(make_conformer(head="transducer"), speech, MIXED_4_6_8, None,
                                               ConformerExecutor, tmp_path / "conformer.npz")
    feats, feat_lens, targets, target_lens = speech.evaluation
    with torch.no_grad(), checking_grid():
        enc, enc_lens = emulated.encode(feats, feat_lens)
        enc = emulated.enc_proj(enc)
        pred = emulated.predictor(targets, target_lens)
        logits = emulated.joiner(enc[:1, :, None], pred[:1, None])  # the training joint of one utterance
        hypotheses = emulated.greedy_decode(feats, feat_lens)
    emitted = 0
    for b in range(feats.shape[0]):
        feat_codes = executor.quantize_features(feats[b, : feat_lens[b]].numpy())
        enc_b = executor.linear("enc_proj", executor.encode(feat_codes))
        np.testing.assert_array_equal(enc_b, codes(enc, emulated.enc_proj.out_scale)[b, : enc_lens[b]])
        assert executor.greedy_decode(feat_codes) == hypotheses[b]
        emitted += len(hypotheses[b])
        if b == 0:
            outputs, state = [], None
            for token in [0, *targets[b, : target_lens[b]].tolist()]:
                out, state = executor.predictor_step(token, state)
                outputs.append(out)
            lattice = executor.joiner(enc_b[:, None], np.stack(outputs)[None])
            expected = codes(logits, emulated.joiner.out.out_scale)[0, : enc_lens[0], : int(target_lens[0]) + 1]
            np.testing.assert_array_equal(lattice, expected)
    assert 0 < emitted < 5 * int(enc_lens.sum())


def test_chunked_emulation_does_not_look_past_the_current_chunk(make_conformer, speech):
    emulated = emulate(make_conformer(chunk_size=3), speech, UNIFORM_8)
    feats, feat_lens, _, _ = speech.evaluation
    feats, length = feats[:1, : feat_lens[0]], feat_lens[:1]
    changed = feats.clone()
    changed[:, 24:] = torch.randn_like(changed[:, 24:])  # encoder frames 6.. (chunks 2 and later)
    with torch.no_grad():
        before, _ = emulated.encode(feats, length)
        after, _ = emulated.encode(changed, length)
    assert torch.equal(before[:, :6], after[:, :6])
    assert not torch.equal(before[:, 6:], after[:, 6:])


def test_loss_and_encoder_see_the_chips_errors_and_stay_close_to_float(make_conformer, speech):
    # Bit-exactness cannot catch a kernel error shared by emulation and executor; closeness to float can.
    model = make_conformer().eval()
    emulated = emulate(model, speech, UNIFORM_8)
    batch = speech.evaluation
    with torch.no_grad():
        float_loss, int_loss = float(model(*batch)), float(emulated(*batch))
        float_enc, lengths = model.encode(*batch[:2])
        int_enc, _ = emulated.encode(*batch[:2])
    assert int_loss != float_loss
    assert abs(int_loss - float_loss) < 0.05 * abs(float_loss)
    valid = torch.arange(float_enc.shape[1])[None, :] < lengths[:, None]
    error = (int_enc - float_enc)[valid].pow(2).mean().sqrt() / float_enc[valid].pow(2).mean().sqrt()
    assert 0 < float(error) < 0.1  # 2 blocks of int8 residuals, LayerNorms, softmax: about 6% measured


def test_conformer_ops_are_swapped_and_the_float_model_untouched(make_conformer):
    model = make_conformer()
    emulated = apply(model, UNIFORM_8, emulation="nna")
    block = emulated.encoder.blocks[0]
    assert isinstance(block.ff1.norm, NNALayerNorm) and isinstance(block.ff1.activation, NNASiLU)
    assert isinstance(block.ff1_residual, NNAAdd) and block.ff1_residual.beta == 0.5
    assert isinstance(block.attn.q, NNALinear) and isinstance(block.attn.rotary_q, NNARotary)
    assert isinstance(block.attn.scores, NNAMatMul) and block.attn.scores.divisor == 4.0  # sqrt(32 / 2)
    assert isinstance(block.attn.softmax, NNASoftmax) and isinstance(block.attn.context, NNAMatMul)
    assert isinstance(block.conv.glu, NNAGLU) and isinstance(block.conv.mask, NNAMask)
    assert isinstance(block.conv.depthwise, NNAConv1d) and block.conv.depthwise.groups == 32
    assert isinstance(block.conv.norm, NNALayerNorm) and block.conv.norm.dim == 1
    assert not any(isinstance(m, nn.Dropout) for m in emulated.modules())
    assert [s.name for s in find_sites(emulated)] == [s.name for s in find_sites(model)]
    assert set(emulated.state_dict()) >= set(model.state_dict())  # the float parameters keep their names
    assert isinstance(model.encoder.blocks[0].ff1_residual, Add)  # the float model is untouched
    assert isinstance(model.encoder.blocks[0].attn.scores, MatMul)
    assert isinstance(model.encoder.blocks[0].attn.softmax, Softmax)
    assert isinstance(model.encoder.blocks[0].attn.rotary_q, Rotary)
    assert isinstance(model.encoder.blocks[0].conv.mask, Mask)


def test_mask_links_consumers_to_its_inputs_producer(make_conformer, speech):
    emulated = emulate(make_conformer(), speech, UNIFORM_8)
    conv = emulated.encoder.blocks[0].conv
    assert conv.depthwise.input_sources == ["encoder.blocks.0.conv.glu"]
    assert torch.equal(conv.depthwise.in_scales[0], conv.glu.out_scale)
    assert emulated.encoder.blocks[0].attn.scores.input_sources == ["encoder.blocks.0.attn.rotary_q",
                                                                    "encoder.blocks.0.attn.rotary_k"]
    assert emulated.encoder.blocks[0].attn.context.input_sources == ["encoder.blocks.0.attn.softmax",
                                                                     "encoder.blocks.0.attn.v"]


def test_batch_norm_in_the_conv_module_is_refused_with_the_way_out(make_conformer):
    with pytest.raises(NNAError, match=r"Module 'encoder\.blocks\.0\.conv\.norm' \(BatchNorm1d\) has no NNA "
                                       r"integer version: .* conv_norm: layer"):
        apply(make_conformer(conv_norm="batch"), UNIFORM_8, emulation="nna")


def test_executor_refuses_other_architectures(make_conformer, speech, tmp_path):
    emulated = emulate(make_conformer(), speech, UNIFORM_8)
    export_int(emulated, tmp_path / "conformer.npz")
    from mpsearch.quant.nna.executor import RNNTExecutor
    with pytest.raises(NNAError, match="architecture 'conformer'; RNNTExecutor runs 'rnnt' only"):
        RNNTExecutor(tmp_path / "conformer.npz")
    executor = ConformerExecutor(tmp_path / "conformer.npz")
    assert executor.header["modules"]["encoder.blocks.0.ff1_residual"]["beta"] == 0.5
