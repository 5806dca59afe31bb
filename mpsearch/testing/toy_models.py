"""A tiny transducer-shaped model with every site kind, for tests of quantization on user models.

It is a plain user model on purpose (no mpsearch model classes): quantization must work on it unchanged.
"""

from __future__ import annotations

import torch
from torch import nn


class ToySpeechModel(nn.Module):
    """Conv front end, LSTM encoder, embedding + LSTM predictor, linear joiner."""

    def __init__(self, n_mels: int = 10, channels: int = 16, hidden: int = 24, vocab: int = 12,
                 embed: int = 8, encoder_layers: int = 2) -> None:
        super().__init__()
        self.frontend = nn.Conv1d(n_mels, channels, kernel_size=3, padding=1)
        self.encoder = nn.LSTM(channels, hidden, num_layers=encoder_layers, batch_first=True)
        self.embed = nn.Embedding(vocab, embed)
        self.predictor = nn.LSTM(embed, hidden, batch_first=True)
        self.joiner = nn.Linear(hidden, vocab)

    def forward(self, feats: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.frontend(feats.transpose(1, 2))).transpose(1, 2)
        enc, _ = self.encoder(x)
        pred, _ = self.predictor(self.embed(tokens))
        return self.joiner(torch.tanh(enc[:, :, None] + pred[:, None]))


def toy_batch(model: ToySpeechModel, batch: int, frames: int, tokens: int, seed: int = 1):
    """Random features and token ids that fit `model`."""
    gen = torch.Generator().manual_seed(seed)
    n_mels, vocab = model.frontend.in_channels, model.embed.num_embeddings
    return (torch.randn(batch, frames, n_mels, generator=gen),
            torch.randint(0, vocab, (batch, tokens), generator=gen))
