"""Third-party speech modules whose forward computes float arithmetic inline (residual adds, attention
through a fused kernel, padding masks), rewritten with op modules the NNA converter replaces.

Hugging Face's Wav2Vec2 and Wav2Vec2-Conformer encoders (and their attention) are matched by class name,
so nothing here imports transformers until such a model is converted. A rewritten module keeps its
children, names and parameters; it gains op children (`ResidualAdd`, the split attention's
`ScaledMatMul` and `MaskedSoftmax`, `FrameMask`) and a forward that computes the same function through
them; the Conformer's relative and rotary position attention is written with NNA ops in `hf_positions`.
What cannot be rewritten faithfully (adapters, causal attention) is reported as a blocker, with what to do.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from mpsearch.quant.attention import MaskedSoftmax, ScaledMatMul
from mpsearch.quant.nna.errors import NNAError
from mpsearch.quant.nna.hf_positions import position_ops, relative_scores, rotate_half


class ResidualAdd(nn.Module):
    """alpha * a + beta * b (op "add"): a residual connection written inline by model code."""

    op_name: ClassVar[str] = "add"

    def __init__(self, alpha: float = 1.0, beta: float = 1.0) -> None:
        super().__init__()
        self.alpha, self.beta = float(alpha), float(beta)

    def forward(self, a: Tensor, b: Tensor) -> Tensor:
        return (a if self.alpha == 1.0 else self.alpha * a) + (b if self.beta == 1.0 else self.beta * b)


class FrameMask(nn.Module):
    """x * mask for a 0/1 mask (op "mask"): padded frames set to 0."""

    op_name: ClassVar[str] = "mask"

    def forward(self, x: Tensor, mask: Tensor) -> Tensor:
        return x * mask


def keep_mask(mask: Tensor | None) -> Tensor | None:
    """A Hugging Face attention mask as a boolean keep-mask: boolean masks are one already (True = attend),
    additive float masks hold 0 where attended and a large negative value elsewhere."""
    if mask is None or mask.dtype == torch.bool:
        return mask
    keep = mask == 0
    if not bool((keep | (mask <= torch.finfo(mask.dtype).min / 2)).all()):
        raise NNAError("The attention mask adds a float bias to the scores, which the NNA softmax cannot take; "
                       "pass a padding mask only (0/1 attention_mask).")
    return keep


def _attend(module: nn.Module, q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None) -> tuple[Tensor, Tensor]:
    """softmax(q k^T / sqrt(d)) v through the module's op children, (B, H, T, d) -> (B, T, H * d), and the
    attention weights."""
    return _weigh(module, module.scores(q, k.transpose(2, 3)), v, mask)


def _weigh(module: nn.Module, scores: Tensor, v: Tensor, mask: Tensor | None) -> tuple[Tensor, Tensor]:
    """softmax(scores) v through the module's op children, as (B, T, H * d), and the attention weights."""
    weights = module.softmax(scores, keep_mask(mask))
    out = module.context(weights, v).transpose(1, 2)
    return out.reshape(*out.shape[:2], -1), weights


def _heads(t: Tensor, head_dim: int) -> Tensor:
    return t.view(*t.shape[:2], -1, head_dim).transpose(1, 2)


def _hf_attention_forward(self, hidden_states, key_value_states=None, attention_mask=None, output_attentions=False,
                          **kwargs):
    source = hidden_states if key_value_states is None else key_value_states
    q = _heads(self.q_proj(hidden_states), self.head_dim)
    k, v = _heads(self.k_proj(source), self.head_dim), _heads(self.v_proj(source), self.head_dim)
    out, weights = _attend(self, q, k, v, attention_mask)
    return self.out_proj(out), (weights if output_attentions else None)


def _conformer_attention_forward(self, hidden_states, attention_mask=None, relative_position_embeddings=None,
                                 **kwargs):
    kind = getattr(self, "position_embeddings_type", None)
    # Hugging Face rotates the projections' input, not the queries and keys.
    rotated = rotate_half(self, hidden_states) if kind == "rotary" else hidden_states
    q, k = self.linear_q(rotated), _heads(self.linear_k(rotated), self.head_size)
    v = _heads(self.linear_v(hidden_states), self.head_size)
    if kind == "relative":
        scores = relative_scores(self, q, k, relative_position_embeddings)
        return self.linear_out(_weigh(self, scores, v, attention_mask)[0]), None
    return self.linear_out(_attend(self, _heads(q, self.head_size), k, v, attention_mask)[0]), None


def _post_norm_layer_forward(self, hidden_states, attention_mask=None, **kwargs):
    attended, _ = self.attention(hidden_states, attention_mask=attention_mask, **kwargs)
    hidden_states = self.layer_norm(self.attention_add(hidden_states, self.dropout(attended)))
    hidden_states = self.feed_forward_add(hidden_states, self.feed_forward(hidden_states))
    return self.final_layer_norm(hidden_states)


def _pre_norm_layer_forward(self, hidden_states, attention_mask=None, **kwargs):
    attended, _ = self.attention(self.layer_norm(hidden_states), attention_mask=attention_mask, **kwargs)
    hidden_states = self.attention_add(hidden_states, self.dropout(attended))
    return self.feed_forward_add(hidden_states, self.feed_forward(self.final_layer_norm(hidden_states)))


def _conformer_layer_forward(self, hidden_states, attention_mask=None, relative_position_embeddings=None,
                             **kwargs):
    hidden_states = self.ffn1_add(self.ffn1(self.ffn1_layer_norm(hidden_states)), hidden_states)
    attended, _ = self.self_attn(hidden_states=self.self_attn_layer_norm(hidden_states),
                                 attention_mask=attention_mask,
                                 relative_position_embeddings=relative_position_embeddings, **kwargs)
    hidden_states = self.self_attn_add(self.self_attn_dropout(attended), hidden_states)
    hidden_states = self.conv_add(hidden_states, self.conv_module(hidden_states))
    hidden_states = self.ffn2_add(self.ffn2(self.ffn2_layer_norm(hidden_states)), hidden_states)
    return self.final_layer_norm(hidden_states)


def _encoder_forward(self, hidden_states, attention_mask=None, **kwargs):
    from transformers.modeling_outputs import BaseModelOutput

    keep = None if attention_mask is None else attention_mask[:, None, None, :].bool()
    # Padded frames are zeroed before the positional conv reads them; without padding the mask is all
    # ones, so the mask op sees data in every calibration.
    frames = hidden_states.new_ones(hidden_states.shape[:2]) if attention_mask is None else attention_mask
    hidden_states = self.frame_mask(hidden_states, frames[..., None].to(hidden_states.dtype))
    if hasattr(self, "position_add"):
        hidden_states = self.position_add(hidden_states, self.pos_conv_embed(hidden_states))
    # The post-norm encoder normalises before its layers, the pre-norm and Conformer ones after them.
    norm_last = type(self).__name__ != "Wav2Vec2Encoder"
    if not norm_last:
        hidden_states = self.layer_norm(hidden_states)
    hidden_states = self.dropout(hidden_states)
    if getattr(self, "embed_positions", None) is not None:
        # The relative table (the rotary one goes unused: the rotary op makes its own).
        kwargs["relative_position_embeddings"] = self.embed_positions(hidden_states)
    for layer in self.layers:
        if self.training and self.config.layerdrop > 0.0 and torch.rand([]) < self.config.layerdrop:
            continue  # LayerDrop, as the float encoder does it
        hidden_states = layer(hidden_states, attention_mask=keep, **kwargs)
    if norm_last:
        hidden_states = self.layer_norm(hidden_states)
    return BaseModelOutput(last_hidden_state=hidden_states)


def _attention_ops(module: nn.Module, head_dim: int) -> dict[str, nn.Module]:
    if getattr(module, "is_causal", False):
        raise NNAError("causal attention is not rewritten; build the model as an encoder (is_causal False).")
    return {"scores": ScaledMatMul(divisor=head_dim ** 0.5), "softmax": MaskedSoftmax(), "context": ScaledMatMul()}


def _conformer_attention_ops(module: nn.Module) -> dict[str, nn.Module]:
    return {**_attention_ops(module, module.head_size), **position_ops(module)}


def _stable_layer_ops(module: nn.Module) -> dict[str, nn.Module]:
    if getattr(module, "adapter_layer", None) is not None:
        raise NNAError("Its attention adapter has no NNA version; build the model without adapter_attn_dim.")
    return {"attention_add": ResidualAdd(), "feed_forward_add": ResidualAdd()}


def _encoder_ops(module: nn.Module) -> dict[str, nn.Module]:
    ops: dict[str, nn.Module] = {"frame_mask": FrameMask()}
    if type(module).__name__.startswith("Wav2Vec2Conformer"):
        # It builds a positional conv it never calls: no chip would hold it, and nothing could calibrate it.
        ops["pos_conv_embed"] = nn.Identity()
    else:
        ops["position_add"] = ResidualAdd()
    return ops


# Class name -> (the ops it gains, given the module; its forward through them).
REWRITES: dict[str, tuple[Callable[[nn.Module], dict[str, nn.Module]], Callable[..., Any]]] = {
    "Wav2Vec2Attention": (lambda m: _attention_ops(m, m.head_dim), _hf_attention_forward),
    "Wav2Vec2ConformerSelfAttention": (_conformer_attention_ops, _conformer_attention_forward),
    "Wav2Vec2EncoderLayer": (lambda m: {"attention_add": ResidualAdd(), "feed_forward_add": ResidualAdd()},
                             _post_norm_layer_forward),
    "Wav2Vec2EncoderLayerStableLayerNorm": (_stable_layer_ops, _pre_norm_layer_forward),
    "Wav2Vec2ConformerEncoderLayer": (
        lambda m: {"ffn1_add": ResidualAdd(alpha=0.5), "self_attn_add": ResidualAdd(), "conv_add": ResidualAdd(),
                   "ffn2_add": ResidualAdd(alpha=0.5)}, _conformer_layer_forward),
    "Wav2Vec2Encoder": (_encoder_ops, _encoder_forward),
    "Wav2Vec2EncoderStableLayerNorm": (_encoder_ops, _encoder_forward),
    "Wav2Vec2ConformerEncoder": (_encoder_ops, _encoder_forward),
}
_REWRITTEN: dict[type, type] = {}


def rewrite_inline_arithmetic(model: nn.Module, errors: list[tuple[str, nn.Module, NNAError]] | None = None) -> None:
    """Rewrite, in place, every module of `model` that `REWRITES` names. With `errors`, a module that cannot
    be rewritten is left as it is and (name, module, error) appended; without, the error is raised."""
    for name, module in list(model.named_modules()):
        rewrite = REWRITES.get(type(module).__name__)
        if rewrite is None:
            continue
        ops_of, forward = rewrite
        try:
            ops = ops_of(module)
        except NNAError as exc:
            error = NNAError(f"Module '{name or '<root>'}' ({type(module).__name__}): {exc}")
            if errors is None:
                raise error from None
            errors.append((name, module, error))
            continue
        for op_name, op in ops.items():
            module.add_module(op_name, op)
        module.__class__ = _rewritten_class(type(module), forward)


def _rewritten_class(cls: type, forward: Callable[..., Any]) -> type:
    """`cls` with `forward` (one class per rewritten class, made once)."""
    if cls in _REWRITTEN.values():
        return cls
    if cls not in _REWRITTEN:
        _REWRITTEN[cls] = type(cls.__name__, (cls,), {"forward": forward, "__module__": __name__,
                                                     "__qualname__": cls.__name__})
    return _REWRITTEN[cls]
