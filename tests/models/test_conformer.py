import pytest
import torch
from pydantic import ValidationError

from mpsearch.models.conformer import Conformer, ConformerConfig, attention_mask


def tiny_conformer(**overrides) -> Conformer:
    torch.manual_seed(0)
    params = {"n_mels": 8, "vocab_size": 6, "d_model": 16, "n_heads": 2, "n_layers": 2, "ff_mult": 2,
              "conv_kernel": 5, "dropout": 0.0, "pred_embed": 8, "pred_hidden": 16, "joint_dim": 16}
    return Conformer(ConformerConfig(**{**params, **overrides}))


@pytest.mark.parametrize("head", ["ctc", "transducer"])
def test_a_few_steps_lower_the_loss(speech_batch, head, loss_decreases):
    decreased, losses = loss_decreases(tiny_conformer(head=head), speech_batch)
    assert decreased, losses


@pytest.mark.parametrize("overrides", [
    {"head": "ctc"}, {"head": "transducer"}, {"head": "ctc", "chunk_size": 2},
    {"head": "ctc", "conv_norm": "batch"},  # exact only in eval mode, where BatchNorm uses running stats
])
def test_padded_batch_loss_equals_mean_of_utterances_alone(speech_batch, overrides,
                                                           mean_of_single_utterances):
    model = tiny_conformer(**overrides).eval()
    with torch.no_grad():
        batch_loss = model(*speech_batch)
        alone = mean_of_single_utterances(model, speech_batch)
    assert batch_loss.item() == pytest.approx(alone.item(), abs=1e-5)


def test_chunked_attention_does_not_look_past_the_current_chunk():
    model = tiny_conformer(chunk_size=2).eval()
    feats = torch.randn(1, 24, 8)
    changed = feats.clone()
    changed[:, 12:] = torch.randn(1, 12, 8)  # encoder frames 3.. (chunk 1 and later) see the change
    lengths = torch.tensor([24])
    with torch.no_grad():
        before, _ = model.encode(feats, lengths)
        after, _ = model.encode(changed, lengths)
    torch.testing.assert_close(before[:, :2], after[:, :2])
    assert not torch.allclose(before[:, 3:], after[:, 3:])


def test_attention_mask_hides_padding_and_later_chunks():
    mask = attention_mask(torch.tensor([3, 2]), 4, chunk_size=2)
    assert mask.shape == (2, 1, 4, 4)
    assert mask[0, 0].int().tolist() == [[1, 1, 0, 0], [1, 1, 0, 0], [1, 1, 1, 0], [1, 1, 1, 0]]
    assert mask[1, 0, 3].int().tolist() == [1, 1, 0, 0]


def test_ctc_greedy_decode_of_a_forced_head(speech_batch):
    model = tiny_conformer(head="ctc").eval()
    feats, feat_lens, _, _ = speech_batch
    with torch.no_grad():
        model.ctc_head.weight.zero_()
        model.ctc_head.bias.copy_(torch.tensor([0.0, 0, 0, 9, 0, 0]))
    assert model.greedy_decode(feats, feat_lens) == [[3], [3], [3]]


def test_transducer_greedy_decode_of_a_forced_joiner(speech_batch):
    model = tiny_conformer(head="transducer").eval()
    feats, feat_lens, _, _ = speech_batch
    with torch.no_grad():
        model.joiner.out.weight.zero_()
        model.joiner.out.bias.copy_(torch.tensor([0.0, 0, 9, 0, 0, 0]))
    assert model.greedy_decode(feats, feat_lens, max_symbols_per_frame=1) == [[2] * 6, [2] * 4, [2] * 2]


@pytest.mark.parametrize("head", ["ctc", "transducer"])
def test_site_steps_name_every_top_level_submodule_with_weights(head):
    model = tiny_conformer(head=head)
    weighted = {name for name, child in model.named_children() if any(True for _ in child.parameters())}
    assert set(model.site_steps) == weighted
    assert model.kind == head


def test_attention_uses_separate_linear_projections():
    attn = tiny_conformer().encoder.blocks[0].attn
    assert all(isinstance(getattr(attn, name), torch.nn.Linear) for name in "qkvo")


@pytest.mark.parametrize("params", [{"conv_kernel": 4}, {"d_model": 16, "n_heads": 3}])
def test_invalid_shapes_are_rejected(params):
    with pytest.raises(ValidationError):
        ConformerConfig(**params)
