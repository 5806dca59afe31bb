"""NNA GroupNorm, and the integer affine parameters every NNA normalisation holds.

A GroupNorm is the LayerNorm kernel (`numerics.layer_norm_codes`: integer mean and variance, a normalised
integer reciprocal square root, int16 gamma, int32 beta) run over each group's channels and frames at
once, with gamma and beta per channel.
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mpsearch.quant.nna.base import NNAModule
from mpsearch.quant.nna.errors import NNAError
from mpsearch.quant.nna.gradients import grad_wanted
from mpsearch.quant.nna.kernels import multipliers
from mpsearch.quant.nna.numerics import (
    NORM_EPS_FRAC_BITS,
    NORM_FRAC_BITS,
    NORM_GAMMA_BITS,
    NORM_MAX_EPS,
    NNANumerics,
    layer_norm_codes,
    saturate,
    signed_range,
)
from mpsearch.quant.parts import MIN_SCALE

# Values one normalisation may reduce: C * S2 - S1^2 < 2^14 * N^2 must leave 2^NORM_EPS_FRAC_BITS of room
# below the reciprocal square root's 2^62.
MAX_NORM_SIZE = 1 << 15


def norm_affine(weight: Tensor | None, bias: Tensor | None, channels: int, out_scale: Tensor,
                numerics: NNANumerics) -> dict[str, Tensor]:
    """gamma (int16 codes, one per-tensor scale), beta (int32 at gamma's scale * 2^-NORM_FRAC_BITS) and the
    output multiplier and shift of a normalisation's affine part."""
    device = out_scale.device
    gamma_max = signed_range(NORM_GAMMA_BITS)[1]
    if weight is None:
        gamma, gamma_scale = torch.ones(channels, dtype=torch.int64, device=device), 1.0
    else:
        w = weight.detach().double()
        gamma_scale = max(float(w.abs().max()) / gamma_max, MIN_SCALE)
        gamma = torch.round(w / gamma_scale).to(torch.int64).clamp(-gamma_max, gamma_max)
    acc_scale = gamma_scale * 2.0 ** -NORM_FRAC_BITS
    if bias is None:
        beta = torch.zeros(channels, dtype=torch.int64, device=device)
    else:
        beta = saturate(torch.round(bias.detach().double() / acc_scale).to(torch.int64), numerics.acc_range)
    (m,), shift = multipliers([acc_scale / float(out_scale)], numerics, device)
    return {"gamma": gamma, "beta": beta, "gamma_scale": torch.tensor(gamma_scale), "multiplier": m, "shift": shift}


def norm_eps_term(eps: float, size: int, in_scale: float) -> int:
    """eps in the variance sum's units: eps * N^2 / s_in^2 * 2^NORM_EPS_FRAC_BITS for N reduced values."""
    return min(round(eps * size * size / (in_scale * in_scale) * 2.0 ** NORM_EPS_FRAC_BITS), NORM_MAX_EPS)


class NNAGroupNorm(NNAModule, nn.GroupNorm):
    """GroupNorm of (B, C, ...) int8 codes: each group's C/G channels times all frames normalised as one
    LayerNorm row (`numerics.layer_norm_codes`), gamma and beta per channel. Keeps the float module's
    parameters (same names, same tensors)."""

    @classmethod
    def from_op(cls, module: nn.Module, numerics: NNANumerics | None = None) -> NNAGroupNorm:
        if not isinstance(module, nn.GroupNorm):
            raise NNAError(f"NNAGroupNorm.from_op needs an nn.GroupNorm; got {type(module).__name__}.")
        new = cls.__new__(cls)
        new.__dict__.update({k: copy.copy(v) if isinstance(v, (dict, list, set)) else v
                             for k, v in module.__dict__.items()})
        device = module.weight.device if module.weight is not None else None
        new.init_nna(numerics or NNANumerics(), device)
        return new

    def float_op(self, x: Tensor) -> Tensor:
        return F.group_norm(x, self.num_groups, self.weight, self.bias, self.eps)

    def integer_params(self) -> dict[str, Tensor]:
        """gamma (int16 codes), beta (int32), multiplier and shift of the output (eps depends on the length)."""
        return norm_affine(self.weight, self.bias, self.num_channels, self.out_scale, self.numerics)

    def forward(self, x: Tensor) -> Tensor:
        if self.check_ready():
            return self.calibration_forward((x,), self.float_op)
        groups, channels = self.num_groups, self.num_channels
        size = x[0].numel() // groups
        if size > MAX_NORM_SIZE:
            raise NNAError(f"'{self.nna_name}' normalises {size} values per group, more than the chip's "
                           f"{MAX_NORM_SIZE}; run shorter utterances (or chunks) through it.")
        p = self.integer_params()
        with torch.no_grad():
            codes = self.input_codes(x)
            grouped = codes.reshape(codes.shape[0], groups, size)
            frames = size // (channels // groups)

            def per_channel(v: Tensor) -> Tensor:  # (C,) -> (G, size), each channel over its frames
                return v.reshape(groups, channels // groups, 1).expand(-1, -1, frames).reshape(groups, size)

            eps = norm_eps_term(self.eps, size, float(self.in_scales[0]))
            out = layer_norm_codes(grouped, per_channel(p["gamma"]), per_channel(p["beta"]), eps, p["multiplier"],
                                   p["shift"], self.numerics, axis=-1).reshape(codes.shape)
        return self.emit(out, self.out_scale, self.float_op(x) if grad_wanted() else None)
