"""Perplexity of a language model over a set of batches."""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import Any

import torch
from torch import nn

from mpsearch.errors import MpsearchError


def perplexity(model: nn.Module, batches: Iterable[Any]) -> float:
    """exp of the token-weighted mean NLL, with the model in eval mode and no gradients.

    ``model.nll(tokens, lengths)`` must return (summed NLL, token count); each batch is a
    ``(tokens, lengths)`` pair or a mapping with those keys.
    """
    if not hasattr(model, "nll"):
        raise MpsearchError(f"perplexity needs a language model with an nll(tokens, lengths) method; "
                            f"got {type(model).__name__}.")
    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    try:
        with torch.no_grad():
            for batch in batches:
                tokens, lengths = (batch["tokens"], batch["lengths"]) if isinstance(batch, Mapping) else batch
                batch_nll, batch_count = model.nll(tokens, lengths)
                total += float(batch_nll)
                count += int(batch_count)
    finally:
        model.train(was_training)
    if count == 0:
        raise MpsearchError("perplexity got no tokens; pass at least one non-empty batch.")
    return math.exp(total / count)
