"""Tiny random Hugging Face speech models (built from a config, nothing downloaded) through find_sites and
apply: every weight a site, weight norm folded, foreign activations replaced, gradients to every weight."""

import copy

import pytest
import torch

from mpsearch.quant import Policy, QuantConfig, apply, calibrating, find_sites, quantized_sites

transformers = pytest.importorskip("transformers")

TINY = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64, conv_dim=(16, 16),
            conv_stride=(5, 2), conv_kernel=(10, 3), num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=2,
            vocab_size=12, hidden_dropout=0.0, attention_dropout=0.0, activation_dropout=0.0, feat_proj_dropout=0.0,
            layerdrop=0.0, mask_time_prob=0.0)


def wav2vec2():
    return transformers.Wav2Vec2ForCTC(transformers.Wav2Vec2Config(**TINY))


def wav2vec2_conformer():
    config = transformers.Wav2Vec2ConformerConfig(**TINY, conv_depthwise_kernel_size=3)
    return transformers.Wav2Vec2ConformerForCTC(config)


def ctc_batch(seed=0):
    gen = torch.Generator().manual_seed(seed)
    audio = torch.randn(2, 800, generator=gen)
    labels = torch.randint(1, 12, (2, 5), generator=gen)
    return audio, labels


def fine_tune(model, audio, labels, lr, steps=2):
    """A few SGD steps on the CTC loss; the gradients of the last one stay on the parameters."""
    model.train()
    optimizer = torch.optim.SGD(model.parameters(), lr=lr)
    for _ in range(steps):
        optimizer.zero_grad()
        loss = model(audio, labels=labels).loss
        loss.backward()
        optimizer.step()
    assert torch.isfinite(loss)


@pytest.mark.parametrize("make", [wav2vec2, wav2vec2_conformer])
def test_hf_ctc_models_quantize_every_weight_and_fine_tune(make):
    torch.manual_seed(0)
    model = make().eval()
    sites = find_sites(model, strict=True)
    # The weight-normed positional conv is a site; its g and v are not left over.
    assert any(s.name.endswith("pos_conv_embed.conv") for s in sites)
    q = apply(model, Policy.uniform(QuantConfig(weight_bits=8, act_bits=8)))
    assert set(quantized_sites(q)) == {s.name for s in sites}
    assert not any(type(m).__name__ == "GELUActivation" for m in q.modules())
    audio, labels = ctc_batch()
    with torch.no_grad():
        with calibrating(q):
            q(audio)
        ref, out = model(audio).logits, q(audio).logits
    assert float((out - ref).norm() / ref.norm()) < 0.1
    fine_tune(q, audio, labels, lr=1e-3)
    # Hugging Face's conformer encoder builds a positional conv it never calls.
    unused = "pos_conv_embed" if make is wav2vec2_conformer else None
    for name, module in q.named_modules():
        if unused and unused in name:
            continue
        for param in getattr(module, "weight_quantizers", {}):
            grad = getattr(module, param).grad
            assert grad is not None and grad.abs().sum() > 0, f"{name}.{param}"


def conformer_with(position_embeddings_type, **config):
    def make():
        config_ = transformers.Wav2Vec2ConformerConfig(**TINY, conv_depthwise_kernel_size=3,
                                                       position_embeddings_type=position_embeddings_type, **config)
        return transformers.Wav2Vec2ConformerForCTC(config_)
    make.__name__ = f"wav2vec2_conformer_{position_embeddings_type}"
    return make


@pytest.mark.parametrize("make", [conformer_with("relative"), conformer_with("rotary", rotary_embedding_base=500)])
def test_the_rewritten_conformer_position_attention_computes_what_hugging_face_does(make):
    from mpsearch.quant.nna.rewrites import rewrite_inline_arithmetic

    torch.manual_seed(0)
    model = make().eval()
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "pos_bias" in name:
                param.normal_()  # Hugging Face starts them at 0, which would hide a misplaced bias
    rewritten = copy.deepcopy(model)
    rewrite_inline_arithmetic(rewritten)
    audio = ctc_batch()[0]
    padded = torch.ones(audio.shape, dtype=torch.long)
    padded[1, 600:] = 0
    with torch.no_grad():
        for kwargs in ({}, {"attention_mask": padded}):
            assert torch.allclose(rewritten(audio, **kwargs).logits, model(audio, **kwargs).logits, atol=1e-5)


@pytest.mark.parametrize("make", [wav2vec2, wav2vec2_conformer, conformer_with("rotary"), conformer_with(None)])
def test_hf_ctc_models_run_on_the_nna_integers_and_fine_tune(make):
    from mpsearch.quant.apply import nna_preflight
    from mpsearch.quant.nna import calibrate_nna, checking_grid

    torch.manual_seed(0)
    model = make().eval()
    policy = Policy.uniform(QuantConfig(weight_bits=8, act_bits=8))
    audio, labels = ctc_batch()
    # Group norm, the frame trim, residual adds, attention with relative or rotary positions and the
    # Conformer's batch norm all run on the chip.
    assert nna_preflight(model, policy, (audio,)) == []
    q = apply(model, policy, emulation="nna")
    calibrate_nna(q, [(audio,), (ctc_batch(1)[0],)])
    with torch.no_grad():
        ref = model(audio).logits
        with checking_grid():
            out = q(audio).logits
    assert float((out - ref).norm() / ref.norm()) < 0.1
    fine_tune(q, audio, labels, lr=1e-4)
    for name, param in q.named_parameters():
        assert param.grad is not None and param.grad.abs().sum() > 0, name


def test_the_nna_preflight_names_what_it_cannot_run_with_what_to_do():
    from mpsearch.quant.apply import nna_preflight

    config = transformers.Wav2Vec2Config(**TINY, do_stable_layer_norm=True, adapter_attn_dim=8)
    blockers = nna_preflight(transformers.Wav2Vec2ForCTC(config).eval(),
                             Policy.uniform(QuantConfig(weight_bits=8, act_bits=8)), (ctc_batch()[0],))
    adapters = [b for b in blockers if b.kind == "Wav2Vec2EncoderLayerStableLayerNorm"]
    assert [b.module for b in adapters] == ["wav2vec2.encoder.layers.0", "wav2vec2.encoder.layers.1"]
    assert "attention adapter" in adapters[0].why and "adapter_attn_dim" in adapters[0].fix
    assert not any(b.kind in ("GroupNorm", "Wav2Vec2SamePadLayer") for b in blockers)
