"""Hugging Face Wav2Vec2-Conformer's relative and rotary position attention, written with ops the NNA has.

Relative (Transformer-XL, the default): the scores are (q + u) k^T / sqrt(d) + shift((q + v) P^T) / sqrt(d),
with P = linear_pos(table) over the constant sinusoidal table of relative offsets. On the chip that is two
adds of a learned (heads, head_size) constant (the positions op: the parameter's own int8 codes), one
Linear site over a table the host supplies, two matmuls, the shift as a gather of codes (pure re-indexing,
exact on integers) and one saturating add of the two score matrices.

Rotary: Hugging Face rotates the attention's input (before linear_q and linear_k) per head in the
rotate-half layout: dims (i, i + d/2) are a pair at angle t * base^(-2i/d). That is the interleaved rotary
of the NNA (pair (2i, 2i+1), the same angle) with the dims permuted, so the codes are permuted into the
interleaved order, rotated by the NNA rotary op and permuted back.
"""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import Tensor, nn

from mpsearch.nn_ops import Add
from mpsearch.quant.attention import ScaledMatMul
from mpsearch.quant.nna.errors import NNAError
from mpsearch.quant.nna.transformer import NNARotary

# Modules that make a table from the input's length alone, on the host: the relative table reaches its
# Linear site as an input, quantized with its own scale; the rotary op makes its own cos/sin tables.
HOST_TABLES = frozenset({"Wav2Vec2ConformerRelPositionalEmbedding", "Wav2Vec2ConformerRotaryPositionalEmbedding"})


class AddTable(nn.Module):
    """x + table[:R] for (..., R, D) x (op "positions"): a learned constant added, such as per-head
    attention biases (heads, head_size) added to (..., frames, heads, head_size) queries."""

    op_name: ClassVar[str] = "positions"

    def __init__(self, table: nn.Parameter) -> None:
        super().__init__()
        self.table = table

    def forward(self, x: Tensor) -> Tensor:
        return x + self.table[: x.shape[-2]]


class InterleavedRotary(nn.Module):
    """The NNA rotary op's float function (op "rotary"): pair (2i, 2i+1) of frame t of (..., T, D) rotated
    by the angle t * base^(-2i/D)."""

    op_name: ClassVar[str] = "rotary"

    def __init__(self, base: float = 10000.0) -> None:
        super().__init__()
        self.base = float(base)

    def forward(self, x: Tensor) -> Tensor:
        return NNARotary.float_op(self, x)  # type: ignore[arg-type]  # reads only `base`

    def extra_repr(self) -> str:
        return f"base={self.base}"


def position_ops(module: nn.Module) -> dict[str, nn.Module]:
    """The ops a Wav2Vec2ConformerSelfAttention gains for its position_embeddings_type, beside those of
    its attention (scores, softmax, context)."""
    kind, head_size = getattr(module, "position_embeddings_type", None), module.head_size
    ops: dict[str, nn.Module] = {}
    if kind == "relative":
        ops.update(bias_u=AddTable(module.pos_bias_u), bias_v=AddTable(module.pos_bias_v),
                   position_scores=ScaledMatMul(divisor=head_size ** 0.5), score_add=Add())
    elif kind == "rotary":
        if head_size % 2:
            raise NNAError(f"Rotary positions pair the dims of a head; head size {head_size} is odd: build the "
                           "model with an even hidden_size / num_attention_heads.")
        ops["rotary"] = InterleavedRotary(module.config.rotary_embedding_base)
    elif kind is not None:
        raise NNAError(f"Its '{kind}' position attention has no NNA version; build the model with "
                       "position_embeddings_type 'relative', 'rotary' or None.")
    return ops


def rotate_half(module: nn.Module, x: Tensor) -> Tensor:
    """Hugging Face's rotate-half rotary of (B, T, heads * head_size) states, per head, through the
    module's interleaved `rotary` op."""
    batch, frames, _ = x.shape
    half = module.head_size // 2
    order = torch.stack([torch.arange(half), torch.arange(half) + half], dim=-1).flatten().to(x.device)
    heads = x.view(batch, frames, -1, module.head_size).transpose(1, 2)
    rotated = module.rotary(heads[..., order])[..., order.argsort()]
    return rotated.transpose(1, 2).reshape(batch, frames, -1)


def relative_scores(module: nn.Module, q: Tensor, k: Tensor, table: Tensor | None) -> Tensor:
    """(q + u) k^T / sqrt(d) + shift((q + v) P^T) / sqrt(d) for (B, T, heads * d) queries, (B, heads, T, d)
    keys and the (1, 2T - 1, D) relative table (offsets T - 1 down to 1 - T)."""
    if table is None:
        raise NNAError("Relative position attention needs the encoder's relative position table; call it "
                       "from its Wav2Vec2ConformerEncoder.")
    d, frames = module.head_size, k.shape[2]
    q = q.view(*q.shape[:2], -1, d)  # (B, T, heads, d): the biases are (heads, d) tables
    content = module.scores(module.bias_u(q).transpose(1, 2), k.transpose(2, 3))
    positions = module.linear_pos(table).view(*table.shape[:2], -1, d).permute(0, 2, 3, 1)
    by_offset = module.position_scores(module.bias_v(q).transpose(1, 2), positions)
    # Query i and key j are offset i - j apart, which the table holds in column T - 1 - i + j.
    steps = torch.arange(frames, device=k.device)
    column = (frames - 1 - steps)[:, None] + steps[None, :]
    relative = by_offset.gather(-1, column.expand(*by_offset.shape[:2], frames, frames))
    return module.score_add(content, relative)

