"""Conformer encoder with a CTC or a transducer head.

Attention is written out with separate q, k, v and output Linears (not nn.MultiheadAttention) so
that each projection is its own quantisation site. Positions enter through rotary embeddings, which
are relative and need no parameters. Arithmetic between layers (residual adds, attention's matmuls,
softmax, rotary positions, masking) is written with the op modules of mpsearch.models.ops, so that
integer emulation can replace each op from outside; in float they compute exactly the inline
expressions.
"""

from __future__ import annotations

import math
from typing import ClassVar, Literal

import torch
from pydantic import Field, field_validator, model_validator
from torch import Tensor, nn

from mpsearch.config import Section
from mpsearch.eval.decoding import ctc_greedy
from mpsearch.models.ctc_loss import ctc_loss as pure_ctc_loss
from mpsearch.models.ops import Add, Mask, MatMul, Rotary, Softmax
from mpsearch.models.rnnt import (
    BLANK,
    ConvSubsampling,
    Joiner,
    Predictor,
    subsampled_lengths,
    transducer_greedy_search,
    transducer_loss,
)


class ConformerConfig(Section):
    """Hyper-parameters of :class:`Conformer`; ``n_mels`` and ``vocab_size`` come from the data."""

    n_mels: int = Field(80, ge=1)
    vocab_size: int = Field(30, ge=2)
    d_model: int = Field(96, ge=2)
    n_heads: int = Field(4, ge=1)
    n_layers: int = Field(4, ge=1)
    ff_mult: int = Field(4, ge=1)
    conv_kernel: int = Field(15, ge=1)
    conv_norm: Literal["layer", "batch"] = "layer"
    dropout: float = Field(0.1, ge=0.0, lt=1.0)
    chunk_size: int | None = Field(None, ge=1, description="encoder frames per attention chunk; "
                                      "None attends to the whole utterance")
    head: Literal["ctc", "transducer"] = "ctc"
    pred_embed: int = Field(64, ge=1)
    pred_hidden: int = Field(128, ge=1)
    pred_layers: int = Field(1, ge=1)
    joint_dim: int = Field(128, ge=1)
    ctc_impl: Literal["torch", "pure"] = Field(
        "torch", description="CTC loss kernel: torch's (fast) or pure PyTorch (twice differentiable, "
                             "for Hessian-based sensitivity)")

    @field_validator("conv_kernel")
    @classmethod
    def _kernel_is_odd(cls, value: int) -> int:
        if value % 2 == 0:
            raise ValueError("must be odd so the convolution is centred")
        return value

    @model_validator(mode="after")
    def _heads_divide_model(self) -> ConformerConfig:
        if self.d_model % self.n_heads or (self.d_model // self.n_heads) % 2:
            raise ValueError(f"d_model ({self.d_model}) must be n_heads ({self.n_heads}) "
                             "times an even head size")
        return self


class MultiHeadSelfAttention(nn.Module):
    """Self-attention with separate q, k, v, o Linears and rotary positions; mask True = may attend.

    Written out rather than calling scaled_dot_product_attention: the fused CPU kernel has no second
    derivative, and Hessian-based sensitivity needs Hessian-vector products through every layer.
    """

    def __init__(self, d_model: int, n_heads: int, dropout: float) -> None:
        super().__init__()
        self.n_heads = n_heads
        self.q = nn.Linear(d_model, d_model)
        self.k = nn.Linear(d_model, d_model)
        self.v = nn.Linear(d_model, d_model)
        self.o = nn.Linear(d_model, d_model)
        self.rotary_q = Rotary()
        self.rotary_k = Rotary()
        self.scores = MatMul(divisor=math.sqrt(d_model // n_heads))
        self.softmax = Softmax(dim=-1)
        self.dropout = nn.Dropout(dropout)
        self.context = MatMul()

    def forward(self, x: Tensor, mask: Tensor | None = None, causal: bool = False) -> Tensor:
        batch, frames, d_model = x.shape

        def heads(t: Tensor) -> Tensor:
            return t.view(batch, frames, self.n_heads, -1).transpose(1, 2)

        q, k, v = heads(self.q(x)), heads(self.k(x)), heads(self.v(x))
        scores = self.scores(self.rotary_q(q), self.rotary_k(k).transpose(-2, -1))
        if causal:
            earlier = torch.ones(frames, frames, dtype=torch.bool, device=x.device).tril()
            mask = earlier if mask is None else mask & earlier
        weights = self.dropout(self.softmax(scores, mask))
        return self.o(self.context(weights, v).transpose(1, 2).reshape(batch, frames, d_model))


class FeedForward(nn.Module):
    """LayerNorm -> Linear -> Swish -> Linear, the Conformer's macaron half."""

    def __init__(self, d_model: int, mult: int, dropout: float) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(d_model)
        self.up = nn.Linear(d_model, mult * d_model)
        self.activation = nn.SiLU()
        self.down = nn.Linear(mult * d_model, d_model)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: Tensor) -> Tensor:
        return self.dropout(self.down(self.dropout(self.activation(self.up(self.norm(x))))))


class ChannelLayerNorm(nn.LayerNorm):
    """LayerNorm over the channels of a (B, C, T) tensor."""

    normalized_dim: ClassVar[int] = 1  # the dim it normalises (nn.LayerNorm's is the last)

    def forward(self, x: Tensor) -> Tensor:
        return super().forward(x.transpose(1, 2)).transpose(1, 2)


class ConvModule(nn.Module):
    """Pointwise Conv1d -> GLU -> depthwise Conv1d -> norm -> Swish -> pointwise Conv1d."""

    def __init__(self, d_model: int, kernel: int, norm: str, causal: bool, dropout: float) -> None:
        super().__init__()
        self.norm_in = nn.LayerNorm(d_model)
        self.pointwise_in = nn.Conv1d(d_model, 2 * d_model, kernel_size=1)
        self.glu = nn.GLU(dim=1)
        self.mask = Mask()
        # Causal padding when chunked, so a chunk's output never waits for the next chunk's frames.
        self.padding = (kernel - 1, 0) if causal else ((kernel - 1) // 2, (kernel - 1) // 2)
        self.depthwise = nn.Conv1d(d_model, d_model, kernel_size=kernel, groups=d_model)
        self.norm = nn.BatchNorm1d(d_model) if norm == "batch" else ChannelLayerNorm(d_model)
        self.activation = nn.SiLU()
        self.pointwise_out = nn.Conv1d(d_model, d_model, kernel_size=1)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: Tensor, valid: Tensor) -> Tensor:
        y = self.glu(self.pointwise_in(self.norm_in(x).transpose(1, 2)))
        # Padded frames are zeroed so a valid frame's window sees what it would see run alone.
        y = self.mask(y, valid[:, None, :])
        y = self.depthwise(nn.functional.pad(y, self.padding))
        y = self.pointwise_out(self.activation(self.norm(y)))
        return self.dropout(y.transpose(1, 2))


class ConformerBlock(nn.Module):
    """Half feed-forward, self-attention, convolution, half feed-forward, LayerNorm."""

    def __init__(self, config: ConformerConfig) -> None:
        super().__init__()
        d = config.d_model
        self.ff1 = FeedForward(d, config.ff_mult, config.dropout)
        self.ff1_residual = Add(beta=0.5)
        self.attn_norm = nn.LayerNorm(d)
        self.attn = MultiHeadSelfAttention(d, config.n_heads, config.dropout)
        self.attn_dropout = nn.Dropout(config.dropout)
        self.attn_residual = Add()
        self.conv = ConvModule(d, config.conv_kernel, config.conv_norm, config.chunk_size is not None,
                               config.dropout)
        self.conv_residual = Add()
        self.ff2 = FeedForward(d, config.ff_mult, config.dropout)
        self.ff2_residual = Add(beta=0.5)
        self.norm = nn.LayerNorm(d)

    def forward(self, x: Tensor, attn_mask: Tensor, valid: Tensor) -> Tensor:
        x = self.ff1_residual(x, self.ff1(x))  # x + 0.5 * ff1(x)
        x = self.attn_residual(x, self.attn_dropout(self.attn(self.attn_norm(x), attn_mask)))
        x = self.conv_residual(x, self.conv(x, valid))
        x = self.ff2_residual(x, self.ff2(x))
        return self.norm(x)


def attention_mask(lengths: Tensor, frames: int, chunk_size: int | None) -> Tensor:
    """(B, 1, T, T) boolean mask: keys inside the utterance and, if chunked, in this or an earlier chunk."""
    positions = torch.arange(frames, device=lengths.device)
    mask = (positions[None, :] < lengths[:, None])[:, None, None, :]
    if chunk_size is not None:
        chunk = positions // chunk_size
        mask = mask & (chunk[None, :] <= chunk[:, None])[None, None]
    return mask


class ConformerEncoder(nn.Module):
    """A stack of Conformer blocks over subsampled frames."""

    def __init__(self, config: ConformerConfig) -> None:
        super().__init__()
        self.chunk_size = config.chunk_size
        self.blocks = nn.ModuleList(ConformerBlock(config) for _ in range(config.n_layers))

    def forward(self, x: Tensor, lengths: Tensor) -> Tensor:
        mask = attention_mask(lengths, x.shape[1], self.chunk_size)
        valid = (torch.arange(x.shape[1], device=x.device)[None, :] < lengths[:, None]).to(x.dtype)
        for block in self.blocks:
            x = block(x, mask, valid)
        return x


class Conformer(nn.Module):
    """Conformer acoustic model with a CTC or a transducer head; ``forward`` returns its loss."""

    config_class: ClassVar[type[Section]] = ConformerConfig

    def __init__(self, config: ConformerConfig) -> None:
        super().__init__()
        self.config = config
        self.kind = config.head
        self.frontend = ConvSubsampling(config.n_mels, config.d_model)
        self.frontend_dropout = nn.Dropout(config.dropout)
        self.encoder = ConformerEncoder(config)
        if config.head == "ctc":
            self.ctc_head = nn.Linear(config.d_model, config.vocab_size)
            self.site_steps = {"frontend": "frame", "encoder": "frame", "ctc_head": "frame"}
        else:
            self.enc_proj = nn.Linear(config.d_model, config.joint_dim)
            self.predictor = Predictor(config.vocab_size, config.pred_embed, config.pred_hidden,
                                       config.pred_layers, config.joint_dim, config.dropout)
            self.joiner = Joiner(config.joint_dim, config.vocab_size)
            self.site_steps = {"frontend": "frame", "encoder": "frame", "enc_proj": "frame",
                               "predictor": "token", "joiner": "joint"}

    def output_lengths(self, feat_lens: Tensor) -> Tensor:
        """Encoder frames produced for ``feat_lens`` feature frames."""
        return subsampled_lengths(feat_lens)

    def encode(self, feats: Tensor, feat_lens: Tensor) -> tuple[Tensor, Tensor]:
        """(B, T, n_mels) features -> (B, T', d_model) encoder output and its lengths."""
        x, lengths = self.frontend(feats, feat_lens)
        return self.encoder(self.frontend_dropout(x), lengths), lengths

    def forward(self, feats: Tensor, feat_lens: Tensor, targets: Tensor, target_lens: Tensor) -> Tensor:
        """Mean CTC or transducer loss over the utterances of a padded batch."""
        enc, enc_lens = self.encode(feats, feat_lens)
        if self.kind == "transducer":
            return transducer_loss(self.enc_proj(enc), enc_lens, targets, target_lens, self.predictor,
                                   self.joiner)
        log_probs = self.ctc_head(enc).float().log_softmax(dim=-1)
        valid = torch.arange(targets.shape[1], device=targets.device)[None, :] < target_lens[:, None]
        targets = torch.where(valid, targets, BLANK)  # padding may be -1
        ctc = pure_ctc_loss if self.config.ctc_impl == "pure" else nn.functional.ctc_loss
        losses = ctc(log_probs.transpose(0, 1), targets, enc_lens, target_lens, blank=BLANK, reduction="none",
                     zero_infinity=True)
        return losses.mean()

    def greedy_decode(self, feats: Tensor, feat_lens: Tensor,
                      max_symbols_per_frame: int = 5) -> list[list[int]]:
        """Greedy label sequences (without blanks) per utterance of a padded batch; call eval() first."""
        with torch.no_grad():
            enc, enc_lens = self.encode(feats, feat_lens)
            if self.kind == "ctc":
                return ctc_greedy(self.ctc_head(enc), enc_lens, blank=BLANK)
            enc = self.enc_proj(enc)
        return transducer_greedy_search(enc, enc_lens, self.predictor, self.joiner, max_symbols_per_frame)
