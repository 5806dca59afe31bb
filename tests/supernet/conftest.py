import pytest
import torch
from torch import nn

from mpsearch.quant import find_sites
from mpsearch.space import SearchSpace
from mpsearch.testing.toy_models import ToySpeechModel, toy_batch


def teacher_batches(model: nn.Module, n: int = 4):
    batches = []
    for seed in range(n):
        feats, tokens = toy_batch(model, 4, 12, 5, seed=seed)
        with torch.no_grad():
            batches.append((feats, tokens, model(feats, tokens)))
    return batches


@pytest.fixture
def toy():
    """A ToySpeechModel (conv, 2-layer LSTM encoder, embedding + LSTM predictor, joiner) as its own teacher."""
    torch.manual_seed(0)
    model = ToySpeechModel()
    return model, teacher_batches(model)


@pytest.fixture
def toy_space(toy):
    model, _ = toy
    return SearchSpace.from_dict({"groups": {
        "encoder": {"sites": ["frontend", "encoder.*"], "weight_bits": [2, 4, 8]},
        "predictor": {"sites": ["embed", "predictor.*"], "weight_bits": [2, 4, 8], "sparsity": [None, "2:4"]},
        "joiner": {"sites": "joiner", "weight_bits": [2, 4, 8], "method": ["uniform", "gq"], "tied": False},
    }}, find_sites(model))
