import pytest
import torch

from mpsearch.models.transformer_lm import TransformerLM, TransformerLMConfig


def tiny_lm(**overrides) -> TransformerLM:
    torch.manual_seed(0)
    params = {"vocab_size": 7, "d_model": 16, "n_heads": 2, "n_layers": 2, "ff_mult": 2, "dropout": 0.0}
    return TransformerLM(TransformerLMConfig(**{**params, **overrides}))


def token_batch():
    tokens = torch.tensor([[2, 3, 4, 5, 6], [3, 3, 2, -1, -1], [6, -1, -1, -1, -1]])
    return tokens, torch.tensor([5, 3, 1])


@pytest.mark.parametrize("tie", [False, True])
def test_a_few_steps_lower_the_loss(tie):
    model = tiny_lm(tie_embeddings=tie)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    losses = []
    for _ in range(8):
        optimizer.zero_grad()
        loss = model(*token_batch())
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0], losses


def test_nll_counts_each_label_and_one_eos_per_sentence():
    _total, count = tiny_lm().nll(*token_batch())
    assert count.item() == 5 + 3 + 1 + 3


def test_padded_batch_equals_sentences_alone():
    model = tiny_lm().eval()
    tokens, lengths = token_batch()
    with torch.no_grad():
        total, _ = model.nll(tokens, lengths)
        alone = sum(model.nll(tokens[b:b + 1, : lengths[b]], lengths[b:b + 1])[0] for b in range(3))
    assert total.item() == pytest.approx(alone.item(), abs=1e-5)


def test_predictions_never_see_later_tokens():
    model = tiny_lm().eval()
    tokens = torch.tensor([[2, 3, 4, 5]])
    with torch.no_grad():
        before = model.logits(tokens)
        after = model.logits(torch.tensor([[2, 3, 6, 6]]))
    torch.testing.assert_close(before[:, :2], after[:, :2])


def test_tied_head_shares_the_embedding():
    model = tiny_lm(tie_embeddings=True)
    assert model.head.weight is model.embed.weight
    weighted = {name for name, child in model.named_children() if any(True for _ in child.parameters())}
    assert model.kind == "lm" and set(model.site_steps) == weighted
