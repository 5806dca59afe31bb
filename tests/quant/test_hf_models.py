"""Tiny random Hugging Face speech models (built from a config, nothing downloaded) through find_sites and
apply: every weight a site, weight norm folded, foreign activations replaced, gradients to every weight."""

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
    q.train()
    optimizer = torch.optim.SGD(q.parameters(), lr=1e-3)
    for _ in range(2):
        optimizer.zero_grad()
        loss = q(audio, labels=labels).loss
        loss.backward()
        optimizer.step()
    assert torch.isfinite(loss)
    # Hugging Face's conformer encoder builds a positional conv it never calls.
    unused = "pos_conv_embed" if make is wav2vec2_conformer else None
    for name, module in q.named_modules():
        if unused and unused in name:
            continue
        for param in getattr(module, "weight_quantizers", {}):
            grad = getattr(module, param).grad
            assert grad is not None and grad.abs().sum() > 0, f"{name}.{param}"


def test_the_nna_preflight_lists_every_blocker_of_wav2vec2_at_once():
    from mpsearch.quant.apply import nna_preflight

    blockers = nna_preflight(wav2vec2().eval(), Policy.uniform(QuantConfig(weight_bits=8, act_bits=8)),
                             (ctc_batch()[0],))
    kinds = {b.kind for b in blockers}
    # A group norm and the positional conv's frame trim have no integer version; the residual adds and the
    # fused attention are float arithmetic between layers. One call names them all.
    assert {"GroupNorm", "Wav2Vec2SamePadLayer"} <= kinds
    assert any("AddBackward0" in b.why for b in blockers)
    assert any("ScaledDotProduct" in b.why for b in blockers)
    assert not any(b.kind in ("GELUActivation", "ParametrizedConv1d") for b in blockers)
