"""MixedPrecisionWeight: the supernet's selectable bit width, a part that sits where a weight quantizer sits.

A quantized module (`mpsearch.quant.modules`) computes with `weight_quantizers[param](W)`; the supernet
puts a MixedPrecisionWeight in that slot, so Linear, Conv1d, Embedding and every LSTM matrix (fused
kernel included) use the mixed weight with no model code of their own:

    W_mix = sum_k p_k * M_k * Q_{b_k}(W)

one shared float weight W, quantized at each candidate's bit width b_k (one quantizer per distinct
width, since a learned part such as LSQ's step depends on the width) and masked by each candidate's
sparsity mask M_k, mixed by the probabilities p the supernet sets before every forward pass.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from mpsearch.errors import MpsearchError, PolicyError
from mpsearch.quant.config import QuantConfig, SparsityConfig
from mpsearch.quant.quantizers import make_weight_quantizer
from mpsearch.quant.sparsity import check_sparsity_shape
from mpsearch.space import DENSE, sparsity_from_label


class SupernetError(MpsearchError):
    """The supernet cannot be built or trained as asked."""


@dataclass(frozen=True)
class Choice:
    """One candidate of a site: a weight width and a sparsity label ('dense', '2:4', 'csp:0.5', ...)."""

    weight_bits: int
    sparsity: str = DENSE

    @property
    def label(self) -> str:
        return f"{self.weight_bits}b" if self.sparsity == DENSE else f"{self.weight_bits}b {self.sparsity}"

    @property
    def sparsity_config(self) -> SparsityConfig | None:
        return sparsity_from_label(self.sparsity)

    def config(self, base: QuantConfig) -> QuantConfig:
        """`base` (method, activation bits, granularity) at this choice's width and sparsity."""
        return QuantConfig(weight_bits=self.weight_bits, act_bits=base.act_bits, method=base.method,
                           granularity=base.granularity, symmetric=base.symmetric,
                           sparsity=self.sparsity_config, options=dict(base.options))




@torch.no_grad()
def sparsity_mask(weight: Tensor, sparsity: SparsityConfig) -> Tensor:
    """The mask (True: kept) of `sparsity` on the current weight.

    N:M keeps the N largest |W| of every M consecutive weights along dim 1 (as the NM sparsifier does).
    Unstructured sparsity, csp included, prunes the smallest |W| of the tensor: the supernet compares
    sparsity levels, and CSP's own support is found later, when the chosen policy is fine-tuned.
    """
    w = weight.detach().abs()
    if sparsity.method == "nm":
        n, m = sparsity.n, sparsity.m
        scores = w.movedim(1, -1)
        blocks = scores.reshape(-1, m)
        keep = torch.zeros_like(blocks, dtype=torch.bool).scatter_(1, blocks.topk(n, dim=1).indices, True)
        return keep.reshape(scores.shape).movedim(-1, 1)
    count = round(sparsity.fraction * w.numel())
    keep = torch.ones(w.numel(), dtype=torch.bool, device=w.device)
    if count:
        keep[torch.argsort(w.reshape(-1), stable=True)[:count]] = False
    return keep.reshape(w.shape)


class MixedPrecisionWeight(nn.Module):
    """sum_k p_k * mask_k * Q_{b_k}(W) over a site's candidates; `probs` is set by the supernet.

    `base` gives what every candidate shares (method, granularity, symmetry, options); the candidates
    differ in weight bits and sparsity only.
    """

    def __init__(self, weight: Tensor, choices: Sequence[Choice], base: QuantConfig, site: str = "") -> None:
        super().__init__()
        if not choices:
            raise SupernetError(f"Site '{site}' has no candidates; give its group at least one weight_bits choice.")
        self.site = site
        self.choices = tuple(choices)
        self.quantizers = nn.ModuleDict()
        for bits in sorted({c.weight_bits for c in self.choices}):
            self.quantizers[str(bits)] = make_weight_quantizer(Choice(bits).config(base), weight)
        self.sparsities: dict[str, SparsityConfig] = {}
        for choice in self.choices:
            config = choice.sparsity_config
            if config is not None:
                try:
                    check_sparsity_shape(tuple(weight.shape), config)
                except PolicyError as exc:
                    raise PolicyError(f"Site '{site}': {exc}") from None
                self.sparsities[choice.sparsity] = config
        self.probs: Tensor | None = None

    @property
    def bits(self) -> int:
        """The width of the most probable candidate (the widest before probabilities are set)."""
        if self.probs is None:
            return max(c.weight_bits for c in self.choices)
        return self.choices[int(self.probs.detach().argmax())].weight_bits

    @property
    def quantized_in_training(self) -> bool:
        return all(getattr(q, "quantized_in_training", True) for q in self.quantizers.values())

    def set_probs(self, probs: Tensor) -> None:
        if probs.dim() != 1 or probs.shape[0] != len(self.choices):
            raise SupernetError(f"Site '{self.site}' has {len(self.choices)} candidates but probabilities of shape "
                                f"{tuple(probs.shape)}; pass one probability per candidate.")
        self.probs = probs

    def candidate(self, weight: Tensor, index: int) -> Tensor:
        """The weight as candidate `index` alone would compute with: mask * Q_b(W)."""
        choice = self.choices[index]
        value = self.quantizers[str(choice.weight_bits)](weight)
        if choice.sparsity != DENSE:
            value = value * sparsity_mask(weight, self.sparsities[choice.sparsity])
        return value

    def forward(self, weight: Tensor) -> Tensor:
        if self.probs is None:
            raise SupernetError(f"Site '{self.site}' has no mixing probabilities; call Supernet.set_temperature "
                                "(or set_probs) before the forward pass.")
        probs = self.probs.to(weight.dtype)
        # Each width is quantized and each mask computed once, however many candidates share them.
        quantized = {bits: q(weight) for bits, q in self.quantizers.items()}
        masks = {label: sparsity_mask(weight, cfg) for label, cfg in self.sparsities.items()}
        mixed = None
        for k, choice in enumerate(self.choices):
            value = quantized[str(choice.weight_bits)]
            if choice.sparsity != DENSE:
                value = value * masks[choice.sparsity]
            term = probs[k] * value
            mixed = term if mixed is None else mixed + term
        return mixed

    def extra_repr(self) -> str:
        return f"site={self.site!r}, choices=[{', '.join(c.label for c in self.choices)}]"
