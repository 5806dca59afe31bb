"""nn.MultiheadAttention rewritten with separate q/k/v/out Linears and op modules, so each projection is a
site of its own and NNA emulation can replace the matmuls and the softmax (they carry the `op_name`s
the NNA converter knows). In float it computes what nn.MultiheadAttention computes.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from mpsearch.errors import PolicyError
from mpsearch.nn_ops import MatMul, Softmax

# The attention ops under the names the NNA rewrites use.
ScaledMatMul = MatMul
MaskedSoftmax = Softmax


class SplitMultiheadAttention(nn.Module):
    """nn.MultiheadAttention with q_proj, k_proj, v_proj and out_proj Linears; same call and results.

    Masks: boolean masks, and float masks holding only 0 and -inf (what nn.TransformerEncoder passes),
    become one boolean keep-mask for the softmax; any other float mask is added to the scores.
    """

    # Keeps nn.Transformer*Layer off its fused path, which reads the packed in_proj_weight.
    _qkv_same_embed_dim = False
    in_proj_bias = None
    in_proj_weight = None

    def __init__(self, mha: nn.MultiheadAttention) -> None:
        super().__init__()
        if mha.bias_k is not None or mha.add_zero_attn:
            raise PolicyError("nn.MultiheadAttention with add_bias_kv or add_zero_attn has no split form; "
                              "build it without them.")
        embed, self.num_heads, self.batch_first = mha.embed_dim, mha.num_heads, mha.batch_first
        self.embed_dim, self.head_dim = embed, mha.head_dim
        with torch.no_grad():
            if mha._qkv_same_embed_dim:
                weights = mha.in_proj_weight.chunk(3)
            else:
                weights = (mha.q_proj_weight, mha.k_proj_weight, mha.v_proj_weight)
            biases = mha.in_proj_bias.chunk(3) if mha.in_proj_bias is not None else (None,) * 3
            for name, weight, bias in zip(("q_proj", "k_proj", "v_proj"), weights, biases):
                linear = nn.Linear(weight.shape[1], weight.shape[0], bias=bias is not None,
                                   device=weight.device, dtype=weight.dtype)
                linear.weight.copy_(weight)
                if bias is not None:
                    linear.bias.copy_(bias)
                setattr(self, name, linear)
        self.out_proj = mha.out_proj
        self.scores = ScaledMatMul(divisor=math.sqrt(self.head_dim))
        self.softmax = MaskedSoftmax()
        self.dropout = nn.Dropout(mha.dropout)
        self.context = ScaledMatMul()

    def forward(self, query: Tensor, key: Tensor, value: Tensor, key_padding_mask: Tensor | None = None,
                need_weights: bool = True, attn_mask: Tensor | None = None, average_attn_weights: bool = True,
                is_causal: bool = False) -> tuple[Tensor, Tensor | None]:
        batched = query.dim() == 3
        if not batched:
            query, key, value = query.unsqueeze(0), key.unsqueeze(0), value.unsqueeze(0)
            key_padding_mask = None if key_padding_mask is None else key_padding_mask.unsqueeze(0)
        elif not self.batch_first:
            query, key, value = query.transpose(0, 1), key.transpose(0, 1), value.transpose(0, 1)
        batch, targets, sources = query.shape[0], query.shape[1], key.shape[1]

        def heads(t: Tensor, frames: int) -> Tensor:
            return t.reshape(batch, frames, self.num_heads, self.head_dim).transpose(1, 2)

        q, k, v = heads(self.q_proj(query), targets), heads(self.k_proj(key), sources), heads(self.v_proj(value), sources)
        scores = self.scores(q, k.transpose(-2, -1))
        if is_causal and attn_mask is None:
            attn_mask = torch.ones(targets, sources, dtype=torch.bool, device=query.device).triu(1)
        keep, additive = None, None
        for mask in (_mask_4d(attn_mask, batch, self.num_heads), _padding_4d(key_padding_mask)):
            keep_part, add_part = _split_mask(mask)
            keep = keep_part if keep is None else (keep if keep_part is None else keep & keep_part)
            additive = add_part if additive is None else (additive if add_part is None else additive + add_part)
        if additive is not None:
            scores = scores + additive
        weights = self.softmax(scores, keep)
        out = self.context(self.dropout(weights), v).transpose(1, 2).reshape(batch, targets, self.embed_dim)
        out = self.out_proj(out)
        if not batched:
            out = out.squeeze(0)
        elif not self.batch_first:
            out = out.transpose(0, 1)
        if not need_weights:
            return out, None
        weights = weights.mean(dim=1) if average_attn_weights else weights
        return out, weights if batched else weights.squeeze(0)


def _mask_4d(mask: Tensor | None, batch: int, heads: int) -> Tensor | None:
    if mask is None:
        return None
    if mask.dim() == 2:
        return mask[None, None]
    return mask.reshape(batch, heads, *mask.shape[-2:])


def _padding_4d(mask: Tensor | None) -> Tensor | None:
    return None if mask is None else mask[:, None, None, :]


def _split_mask(mask: Tensor | None) -> tuple[Tensor | None, Tensor | None]:
    """(boolean keep-mask, additive float mask) of an nn.MultiheadAttention mask (True/-inf = masked)."""
    if mask is None:
        return None, None
    if mask.dtype == torch.bool:
        return ~mask, None
    if bool(((mask == 0) | (mask == float("-inf"))).all()):
        return mask == 0, None
    return None, mask
