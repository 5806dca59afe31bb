"""Weight quantizers: the registry a policy's method names, the option checks, and the base quantizers
(uniform, LSQ) that the methods in `quant.methods` build on.

A weight quantizer is built from a QuantConfig and the weight it will quantize and is composed of parts
(mpsearch.quant.parts): a BitWidth (the integer range), a rounding mode and a scale part; the zero point
comes from the scale part. `quant.quantizers` gathers every registered method.
"""

from __future__ import annotations

import math
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from mpsearch.errors import PolicyError
from mpsearch.quant.activation_quantizers import ACTIVATION_QUANTIZERS
from mpsearch.quant.config import QuantConfig
from mpsearch.quant.options import OPTION_CHECKS, option_value
from mpsearch.quant.parts import (
    WEIGHT_SCALES,
    BitWidth,
    LearnedStep,
    Rounding,
    fake_quantize,
    integer_codes,
    scale_shape,
)
from mpsearch.quant.sparsity import SPARSITY_OPTIONS, check_sparsity_options
from mpsearch.registry import Registry

QUANTIZERS: Registry[type[WeightQuantizer]] = Registry("quantization method")


def validate_options(cfg: QuantConfig) -> None:
    """Raise a PolicyError for an option the config's method (or its activation quantizer, or its
    sparsity) does not read."""
    weight_cls = QUANTIZERS.get(cfg.method)
    allowed = dict(weight_cls.options)
    allowed.update(ACTIVATION_QUANTIZERS.get(weight_cls.activation_method).options)
    if cfg.sparsity is not None:
        allowed.update(SPARSITY_OPTIONS)
        check_sparsity_options(cfg)
    unknown = sorted(set(cfg.options) - set(allowed))
    if unknown:
        raise PolicyError(f"Unknown option(s) {unknown} for method '{cfg.method}'; valid options: "
                          f"{', '.join(sorted(allowed)) or '(none)'}.")
    for key, value in cfg.options.items():
        OPTION_CHECKS.get(key, lambda v: None)(value)


class WeightQuantizer(nn.Module):
    """Base of every weight quantizer: fake quantization on a BitWidth's integer grid."""

    # The ACTIVATION_QUANTIZERS entry used for this method's input activations.
    activation_method: ClassVar[str] = "minmax"
    # Options this method reads from QuantConfig.options, with their defaults.
    options: ClassVar[dict[str, Any]] = {"rounding": "half_even"}

    def __init__(self, bits: int, symmetric: bool = True, per_channel: bool = True,
                 rounding: str = "half_even") -> None:
        super().__init__()
        self.width = BitWidth(bits, "symmetric" if symmetric else "asymmetric")
        self.rounding = Rounding(rounding)
        self.per_channel = per_channel

    @classmethod
    def check_config(cls, cfg: QuantConfig) -> None:
        """Raise a PolicyError if this method cannot honour `cfg`."""
        validate_options(cfg)

    @classmethod
    def from_config(cls, cfg: QuantConfig, weight: Tensor) -> WeightQuantizer:
        raise NotImplementedError

    @classmethod
    def option(cls, cfg: QuantConfig, name: str) -> Any:
        """The value of option `name` in cfg, or this method's default."""
        return option_value(cfg, cls, name)

    @property
    def bits(self) -> int:
        return self.width.bits

    @property
    def quantized_in_training(self) -> bool:
        """Whether forward(w) in training mode returns grid values (eval mode always does)."""
        return True

    @property
    def levels(self) -> int:
        """Number of integer codes the weights may take."""
        return self.width.levels

    @property
    def symmetric(self) -> bool:
        return self.width.mode == "symmetric"

    def set_bits(self, bits: int) -> None:
        """Switch the bit width in place (the supernet reuses one quantizer for every candidate)."""
        self.width.set_bits(bits)

    def scale_and_zero_point(self, w: Tensor) -> tuple[Tensor, Tensor | None]:
        """Scale (and integer-valued zero point, None when symmetric), shaped to broadcast over w."""
        raise NotImplementedError

    def forward(self, w: Tensor) -> Tensor:
        scale, zero_point = self.scale_and_zero_point(w)
        return fake_quantize(w, scale, zero_point, self.width.qmin, self.width.qmax, self.rounding)

    @torch.no_grad()
    def quantize_int(self, w: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """(int8 codes, scale, zero_point) with (codes - zero_point) * scale equal to forward(w)."""
        scale, zero_point = self.scale_and_zero_point(w)
        codes = integer_codes(w, scale, zero_point, self.width.qmin, self.width.qmax, self.rounding)
        if zero_point is None:
            zero_point = torch.zeros_like(scale)
        return codes.to(torch.int8), scale.detach().clone(), zero_point.to(torch.int8)

    def extra_repr(self) -> str:
        return f"per_channel={self.per_channel}"


@QUANTIZERS.register("uniform")
class UniformQuantizer(WeightQuantizer):
    """Uniform grid whose scale follows the current weight: by default the scale of least squared error
    per channel (parts.MseScale), or max|w| / qmax with option `weight_scale: maxabs` (min/max with a
    zero point when asymmetric).

    The scale is recomputed from the weight on every forward rather than calibrated once: weights move
    during fine-tuning, a stale range would clip them with zero gradient, and there is no state to
    save. Gradients are straight-through; the scale is treated as a constant.
    """

    options: ClassVar[dict[str, Any]] = {"rounding": "half_even", "weight_scale": "mse"}

    def __init__(self, bits: int, symmetric: bool = True, per_channel: bool = True,
                 rounding: str = "half_even", scale: str = "mse") -> None:
        super().__init__(bits, symmetric, per_channel, rounding)
        self.scaling = WEIGHT_SCALES.get(scale)(per_channel)

    @classmethod
    def from_config(cls, cfg: QuantConfig, weight: Tensor) -> UniformQuantizer:
        cls.check_config(cfg)
        return cls(cfg.weight_bits, cfg.symmetric, cfg.granularity == "per_channel",
                   cls.option(cfg, "rounding"), cls.option(cfg, "weight_scale"))

    def scale_and_zero_point(self, w: Tensor) -> tuple[Tensor, Tensor | None]:
        return self.scaling(w, self.width)


@QUANTIZERS.register("lsq")
class LsqQuantizer(WeightQuantizer):
    """Learned Step Size Quantization (Esser et al. 2020): the step is a parameter trained with the weights.

    The step starts at the weight's scale of least squared error (per channel or per tensor; option
    `weight_scale: maxabs` starts it at max|w| / qmax instead), as LSQ+ initialises it, rather than the
    paper's 2 * mean|w| / sqrt(qmax), which at 2-3 bits starts far from the best grid. It receives the
    LSQ gradient (round(v) - v inside the range, qmin or qmax outside) scaled by 1 / sqrt(n * qmax).
    Symmetric only: the integer range is the restricted one, [-(2^(b-1)-1), 2^(b-1)-1].
    """

    activation_method: ClassVar[str] = "lsq"
    options: ClassVar[dict[str, Any]] = {"rounding": "half_even", "weight_scale": "mse"}

    def __init__(self, bits: int, weight: Tensor, per_channel: bool = True, rounding: str = "half_even",
                 scale: str = "mse") -> None:
        super().__init__(bits, True, per_channel, rounding)
        w = weight.detach()
        init, _ = WEIGHT_SCALES.get(scale)(per_channel)(w, self.width)
        init = init.reshape(scale_shape(w.shape, per_channel))
        per_step = w.numel() // w.shape[0] if per_channel and w.dim() > 0 else w.numel()
        self.scaling = LearnedStep(init, per_step)

    @classmethod
    def check_config(cls, cfg: QuantConfig) -> None:
        super().check_config(cfg)
        if not cfg.symmetric:
            raise PolicyError("Method 'lsq' learns a symmetric step and has no zero point; "
                              "set 'symmetric: true' or use method 'uniform' for asymmetric weights.")

    @classmethod
    def from_config(cls, cfg: QuantConfig, weight: Tensor) -> LsqQuantizer:
        cls.check_config(cfg)
        return cls(cfg.weight_bits, weight, cfg.granularity == "per_channel", cls.option(cfg, "rounding"),
                   cls.option(cfg, "weight_scale"))

    def set_bits(self, bits: int) -> None:
        # The initial step scales as 1/sqrt(qmax); keeping that relation preserves what was learned.
        old_qmax = self.width.qmax
        super().set_bits(bits)
        self.scaling.rescale(math.sqrt(old_qmax / self.width.qmax))

    def scale_and_zero_point(self, w: Tensor) -> tuple[Tensor, Tensor | None]:
        return self.scaling(self.width), None
