"""Weight and activation quantizers, registered by the method name a policy uses.

A weight quantizer is built from a QuantConfig and the weight it will quantize
(`QUANTIZERS.get(cfg.method).from_config(cfg, weight)`) and is composed of parts (mpsearch.quant.parts):
a BitWidth (the integer range), a rounding mode and a scale part; the zero point comes from the scale
part. Its public interface, which the contract suite in mpsearch.testing relies on and nothing more:

    forward(w) -> fake-quantized float w (straight-through gradients)
    quantize_int(w) -> (int8 codes, scale, zero_point), with (codes - zero_point) * scale == forward(w)
    bits, levels, set_bits(b), scale_and_zero_point(w), check_config(cfg)
    quantized_in_training: whether forward(w) in training mode is already on the grid (a method that
        trains float weights, as ADMM does, or assigns them softly, as GQ does while annealing, is
        quantized in eval mode only; export and deployment use the eval-mode forward)

Methods beyond uniform and lsq (gq, s8bqat, admm) live in mpsearch.quant.methods, imported at the end
of this module so they register here. Activation quantizers are per tensor and chosen by the weight
method's `activation_method`.
"""

from __future__ import annotations

import math
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from mpsearch.errors import PolicyError
from mpsearch.quant.config import QuantConfig
from mpsearch.quant.parts import (
    MIN_SCALE,
    ROUNDINGS,
    BitWidth,
    WEIGHT_SCALES,
    LearnedStep,
    fake_quantize,
    grad_scale,
    integer_codes,
    scale_shape,
)
from mpsearch.registry import Registry

QUANTIZERS: Registry[type[WeightQuantizer]] = Registry("quantization method")
ACTIVATION_QUANTIZERS: Registry[type[ActivationQuantizer]] = Registry("activation quantizer")


def _check_rounding(value: Any) -> None:
    ROUNDINGS.get(value)


def _check_momentum(value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 < value <= 1.0:
        raise PolicyError(f"The option 'act_momentum' must be a number in (0, 1]; got {value!r}.")


def _check_weight_scale(value: Any) -> None:
    if value not in WEIGHT_SCALES:
        raise PolicyError(f"The option 'weight_scale' must be one of {', '.join(WEIGHT_SCALES.names())}; "
                          f"got {value!r}.")


# Option name -> validator. A quantizer class lists the names it reads in `options`.
OPTION_CHECKS = {"rounding": _check_rounding, "act_momentum": _check_momentum,
                 "weight_scale": _check_weight_scale}


def validate_options(cfg: QuantConfig) -> None:
    """Raise a PolicyError for an option the config's method (or its activation quantizer, or its
    sparsity) does not read."""
    weight_cls = QUANTIZERS.get(cfg.method)
    allowed = dict(weight_cls.options)
    allowed.update(ACTIVATION_QUANTIZERS.get(weight_cls.activation_method).options)
    if cfg.sparsity is not None:
        allowed.update(sparsity.SPARSITY_OPTIONS)
        sparsity.check_sparsity_options(cfg)
    unknown = sorted(set(cfg.options) - set(allowed))
    if unknown:
        raise PolicyError(f"Unknown option(s) {unknown} for method '{cfg.method}'; valid options: "
                          f"{', '.join(sorted(allowed)) or '(none)'}.")
    for key, value in cfg.options.items():
        OPTION_CHECKS.get(key, lambda v: None)(value)


def _option(cfg: QuantConfig, cls: type, name: str) -> Any:
    return cfg.options.get(name, cls.options[name])


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
        self.rounding = ROUNDINGS.get(rounding)()
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
        return cfg.options.get(name, cls.options[name])

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
                   _option(cfg, cls, "rounding"), _option(cfg, cls, "weight_scale"))

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
        return cls(cfg.weight_bits, weight, cfg.granularity == "per_channel", _option(cfg, cls, "rounding"),
                   _option(cfg, cls, "weight_scale"))

    def set_bits(self, bits: int) -> None:
        # The initial step scales as 1/sqrt(qmax); keeping that relation preserves what was learned.
        old_qmax = self.width.qmax
        super().set_bits(bits)
        self.scaling.rescale(math.sqrt(old_qmax / self.width.qmax))

    def scale_and_zero_point(self, w: Tensor) -> tuple[Tensor, Tensor | None]:
        return self.scaling(self.width), None


class ActivationQuantizer(nn.Module):
    """Per-tensor activation quantizer whose range is observed (calibrated) and then used.

    Signed tensors use the restricted symmetric range ([-127, 127] at 8 bits); a tensor whose first
    observed batch has no negative value uses the unsigned range [0, 2^b - 1] (a calibration pass
    that later sees a negative value switches it to signed). The zero point is always 0, so integer
    kernels need no zero-point corrections. `forward`:
      - while `calibrating`: observe and return the input unchanged (float calibration pass);
      - training and not frozen: observe, then fake-quantize;
      - otherwise fake-quantize with the stored range (the first batch seen initialises it).
    """

    options: ClassVar[dict[str, Any]] = {"rounding": "half_even", "act_momentum": 0.1}

    def __init__(self, bits: int, rounding: str = "half_even", momentum: float = 0.1) -> None:
        super().__init__()
        _check_momentum(momentum)
        self.width = BitWidth(bits, "symmetric")
        self.rounding = ROUNDINGS.get(rounding)()
        self.momentum = float(momentum)
        self.frozen = False
        self.calibrating = False
        self._initialized = False

    @classmethod
    def from_config(cls, cfg: QuantConfig) -> ActivationQuantizer:
        return cls(cfg.act_bits, _option(cfg, cls, "rounding"), _option(cfg, cls, "act_momentum"))

    @property
    def bits(self) -> int:
        return self.width.bits

    @property
    def levels(self) -> int:
        return self.width.levels

    def set_bits(self, bits: int) -> None:
        self.width.set_bits(bits)

    @property
    def initialized(self) -> bool:
        return self._initialized

    @property
    def signed(self) -> bool:
        return self.width.mode == "symmetric"

    def _note_sign(self, x: Tensor) -> None:
        # Reading the sign syncs with the device, so it happens only on the first batch and while
        # calibrating, never in the training loop.
        if not self._initialized:
            self.width.mode = "symmetric" if bool(x.min() < 0) else "unsigned"
        elif self.calibrating and not self.signed and bool(x.min() < 0):
            self.width.mode = "symmetric"

    def observe(self, x: Tensor) -> None:
        """Update the range statistics from x (no-op when frozen)."""
        raise NotImplementedError

    def scale(self, x: Tensor) -> Tensor:
        """The scale used for x (0-dim); x is needed by methods whose gradient depends on its size."""
        raise NotImplementedError

    def freeze(self) -> None:
        """Stop observing: the range (or learned step) is what the exported model will use."""
        self.frozen = True

    def unfreeze(self) -> None:
        self.frozen = False

    def forward(self, x: Tensor) -> Tensor:
        if self.calibrating:
            self.observe(x)
            return x
        if not self.frozen and (self.training or not self._initialized):
            self.observe(x)
        return self.fake_quant(x)

    def fake_quant(self, x: Tensor, scale: Tensor | None = None) -> Tensor:
        """Fake-quantize with the current range, without observing; identity before any observation.

        A caller quantizing many same-sized tensors in a loop (the LSTM's hidden state) may compute
        `scale(x)` once and pass it in.
        """
        if not self._initialized:
            return x
        scale = self.scale(x) if scale is None else scale
        return fake_quantize(x, scale, None, self.width.qmin, self.width.qmax, self.rounding)

    @torch.no_grad()
    def quantize_int(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """(codes, scale, zero_point 0): int8 codes when signed, uint8 when unsigned."""
        if not self._initialized:
            raise PolicyError("This activation quantizer has seen no data; run a calibration pass first.")
        scale = self.scale(x)
        codes = integer_codes(x, scale, None, self.width.qmin, self.width.qmax, self.rounding)
        dtype = torch.int8 if self.signed else torch.uint8
        return codes.to(dtype), scale.detach().clone(), torch.zeros((), dtype=dtype)

    def get_extra_state(self) -> dict[str, Any]:
        return {"frozen": self.frozen, "initialized": self._initialized, "mode": self.width.mode}

    def set_extra_state(self, state: dict[str, Any]) -> None:
        self.frozen = bool(state.get("frozen", False))
        self._initialized = bool(state.get("initialized", False))
        self.width.mode = state.get("mode", "symmetric")

    def extra_repr(self) -> str:
        return (f"bits={self.bits}, mode={self.width.mode}, momentum={self.momentum}, "
                f"initialized={self._initialized}, frozen={self.frozen}")


@ACTIVATION_QUANTIZERS.register("minmax")
class MinMaxActivationQuantizer(ActivationQuantizer):
    """Range from an exponential moving average of each batch's min and max (the first batch sets it)."""

    def __init__(self, bits: int, rounding: str = "half_even", momentum: float = 0.1) -> None:
        super().__init__(bits, rounding, momentum)
        self.register_buffer("running_min", torch.tensor(math.inf))
        self.register_buffer("running_max", torch.tensor(-math.inf))

    @torch.no_grad()
    def observe(self, x: Tensor) -> None:
        if self.frozen:
            return
        x = x.detach()
        self._note_sign(x)
        lo, hi = torch.aminmax(x)
        lo, hi = lo.to(self.running_min.dtype), hi.to(self.running_max.dtype)
        if not self._initialized:
            self.running_min.copy_(lo)
            self.running_max.copy_(hi)
            self._initialized = True
        else:
            self.running_min.lerp_(lo, self.momentum)
            self.running_max.lerp_(hi, self.momentum)

    def scale(self, x: Tensor) -> Tensor:
        if self.signed:
            peak = torch.maximum(self.running_min.abs(), self.running_max.abs())
        else:
            peak = self.running_max.clamp_min(0.0)
        return (peak / self.width.qmax).clamp_min(MIN_SCALE).to(x.dtype)


@ACTIVATION_QUANTIZERS.register("lsq")
class LsqActivationQuantizer(ActivationQuantizer):
    """Learned step (LSQ) for activations: initialised from the first batch to 2 * mean|x| / sqrt(qmax).

    A calibration pass instead sets the step to a moving average of that initial value over its
    batches; outside calibration the step is learned. The step's gradient is scaled by
    1 / sqrt(numel(x) * qmax).
    """

    def __init__(self, bits: int, rounding: str = "half_even", momentum: float = 0.1) -> None:
        super().__init__(bits, rounding, momentum)
        self.step = nn.Parameter(torch.tensor(1.0))

    def set_bits(self, bits: int) -> None:
        old_qmax = self.width.qmax
        super().set_bits(bits)
        with torch.no_grad():
            self.step.mul_(math.sqrt(old_qmax / self.width.qmax))

    @torch.no_grad()
    def observe(self, x: Tensor) -> None:
        if self.frozen or (self._initialized and not self.calibrating):
            return
        x = x.detach()
        self._note_sign(x)
        init = (2.0 * x.abs().mean() / math.sqrt(self.width.qmax)).to(self.step.dtype)
        if not self._initialized:
            self.step.copy_(init)
            self._initialized = True
        else:
            self.step.lerp_(init, self.momentum)

    def scale(self, x: Tensor) -> Tensor:
        g = 1.0 / math.sqrt(max(x.numel(), 1) * self.width.qmax)
        return grad_scale(self.step, g).clamp_min(MIN_SCALE)


def make_weight_quantizer(cfg: QuantConfig, weight: Tensor) -> WeightQuantizer:
    """The registered weight quantizer for cfg.method, built for `weight`."""
    return QUANTIZERS.get(cfg.method).from_config(cfg, weight)


def make_activation_quantizer(cfg: QuantConfig) -> ActivationQuantizer | None:
    """The activation quantizer cfg.method uses, or None when cfg.act_bits is None (float activations)."""
    if cfg.act_bits is None:
        return None
    return ACTIVATION_QUANTIZERS.get(QUANTIZERS.get(cfg.method).activation_method).from_config(cfg)


# Registers gq, s8bqat and admm; at the end because those modules subclass the quantizers above.
from mpsearch.quant import methods  # noqa: F401
from mpsearch.quant.methods import sparsity
