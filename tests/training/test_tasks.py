import math

import torch

from mpsearch.training.tasks import unigram_perplexity


def test_unigram_perplexity_of_uniform_text_is_the_symbol_count():
    # three labels plus the end symbol, each equally frequent: perplexity 4 (add-one smoothing aside)
    sentences = [torch.tensor([1, 2, 3])] * 1000
    assert math.isclose(unigram_perplexity(sentences, sentences), 4.0, rel_tol=1e-2)


def test_unigram_perplexity_prefers_frequent_symbols():
    train = [torch.tensor([1, 1, 1, 2])] * 100
    assert unigram_perplexity(train, [torch.tensor([1, 1])]) < unigram_perplexity(train, [torch.tensor([2, 2])])
