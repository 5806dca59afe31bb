"""Causal Transformer language model over the tokenizer's labels, blank doubling as BOS and EOS."""

from __future__ import annotations

from typing import ClassVar

import torch
from pydantic import Field, model_validator
from torch import Tensor, nn

from mpsearch.config import Section
from mpsearch.models.conformer import MultiHeadSelfAttention
from mpsearch.models.ops import Add

BOUNDARY = 0  # the blank label marks both the start and the end of a sentence


class TransformerLMConfig(Section):
    """Hyper-parameters of :class:`TransformerLM`; ``vocab_size`` comes from the tokenizer."""

    vocab_size: int = Field(30, ge=2)
    d_model: int = Field(128, ge=2)
    n_heads: int = Field(4, ge=1)
    n_layers: int = Field(4, ge=1)
    ff_mult: int = Field(4, ge=1)
    dropout: float = Field(0.1, ge=0.0, lt=1.0)
    tie_embeddings: bool = False

    @model_validator(mode="after")
    def _heads_divide_model(self) -> TransformerLMConfig:
        if self.d_model % self.n_heads or (self.d_model // self.n_heads) % 2:
            raise ValueError(f"d_model ({self.d_model}) must be n_heads ({self.n_heads}) "
                             "times an even head size")
        return self


class MLP(nn.Module):
    """Linear -> GELU -> Linear."""

    def __init__(self, d_model: int, mult: int, dropout: float) -> None:
        super().__init__()
        self.up = nn.Linear(d_model, mult * d_model)
        self.activation = nn.GELU()
        self.down = nn.Linear(mult * d_model, d_model)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: Tensor) -> Tensor:
        return self.dropout(self.down(self.activation(self.up(x))))


class DecoderBlock(nn.Module):
    """Pre-norm causal self-attention and MLP, each with a residual connection."""

    def __init__(self, config: TransformerLMConfig) -> None:
        super().__init__()
        self.attn_norm = nn.LayerNorm(config.d_model)
        self.attn = MultiHeadSelfAttention(config.d_model, config.n_heads, config.dropout)
        self.attn_dropout = nn.Dropout(config.dropout)
        self.mlp_norm = nn.LayerNorm(config.d_model)
        self.mlp = MLP(config.d_model, config.ff_mult, config.dropout)
        # residual adds as modules, so integer emulation can replace them (they hold no weights)
        self.attn_residual = Add()
        self.mlp_residual = Add()

    def forward(self, x: Tensor) -> Tensor:
        x = self.attn_residual(x, self.attn_dropout(self.attn(self.attn_norm(x), causal=True)))
        return self.mlp_residual(x, self.mlp(self.mlp_norm(x)))


class TransformerLM(nn.Module):
    """Causal Transformer LM; ``forward`` returns the mean next-token NLL over valid positions."""

    kind: ClassVar[str] = "lm"
    config_class: ClassVar[type[Section]] = TransformerLMConfig
    site_steps: ClassVar[dict[str, str]] = {
        "embed": "token", "blocks": "token", "norm": "token", "head": "token",
    }

    def __init__(self, config: TransformerLMConfig) -> None:
        super().__init__()
        self.config = config
        self.embed = nn.Embedding(config.vocab_size, config.d_model)
        self.dropout = nn.Dropout(config.dropout)
        self.blocks = nn.ModuleList(DecoderBlock(config) for _ in range(config.n_layers))
        self.norm = nn.LayerNorm(config.d_model)
        self.head = nn.Linear(config.d_model, config.vocab_size, bias=False)
        if config.tie_embeddings:
            self.head.weight = self.embed.weight

    def logits(self, tokens: Tensor) -> Tensor:
        """(B, L) token ids -> (B, L, V) next-token scores; causal, so right padding is harmless."""
        x = self.dropout(self.embed(tokens))
        for block in self.blocks:
            x = block(x)
        return self.head(self.norm(x))

    def nll(self, tokens: Tensor, lengths: Tensor) -> tuple[Tensor, Tensor]:
        """Summed next-token NLL and the number of predicted tokens (each sentence's labels + EOS).

        ``tokens`` is (B, L) padded past ``lengths`` with any value; BOS and EOS are added here.
        """
        lengths = lengths.to(tokens.device)
        valid = torch.arange(tokens.shape[1], device=tokens.device)[None, :] < lengths[:, None]
        labels = torch.where(valid, tokens, BOUNDARY)
        bos = torch.full_like(labels[:, :1], BOUNDARY)
        inputs = torch.cat([bos, labels], dim=1)
        # Each sentence's EOS sits at its own length; the padding after it is ignored below.
        targets = torch.cat([labels, torch.full_like(bos, BOUNDARY)], dim=1)
        predicted = torch.arange(inputs.shape[1], device=tokens.device)[None, :] <= lengths[:, None]
        losses = nn.functional.cross_entropy(self.logits(inputs).float().transpose(1, 2), targets,
                                             reduction="none")
        return (losses * predicted).sum(), predicted.sum()

    def forward(self, tokens: Tensor, lengths: Tensor) -> Tensor:
        """Mean next-token cross-entropy over the valid positions of a padded batch."""
        total, count = self.nll(tokens, lengths)
        return total / count
