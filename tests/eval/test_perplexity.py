import pytest
import torch

from mpsearch.eval.perplexity import perplexity
from mpsearch.models.transformer_lm import TransformerLM, TransformerLMConfig


def uniform_lm(vocab):
    model = TransformerLM(TransformerLMConfig(vocab_size=vocab, d_model=8, n_heads=2, n_layers=1))
    torch.nn.init.zeros_(model.head.weight)  # every next token equally likely
    return model


def test_uniform_model_has_perplexity_equal_to_vocab_size():
    batches = [(torch.tensor([[2, 3, 4], [5, -1, -1]]), torch.tensor([3, 1])),
               {"tokens": torch.tensor([[6, 6]]), "lengths": torch.tensor([2])}]
    assert perplexity(uniform_lm(9), batches) == pytest.approx(9.0, rel=1e-5)


def test_mode_is_restored_and_dropout_is_off():
    model = TransformerLM(TransformerLMConfig(vocab_size=5, d_model=8, n_heads=2, n_layers=1, dropout=0.5))
    batches = [(torch.tensor([[2, 3, 4]]), torch.tensor([3]))]
    assert perplexity(model, batches) == perplexity(model, batches)
    assert model.training


def test_no_tokens_is_an_error():
    from mpsearch.errors import MpsearchError

    with pytest.raises(MpsearchError, match="no tokens"):
        perplexity(uniform_lm(5), [])
