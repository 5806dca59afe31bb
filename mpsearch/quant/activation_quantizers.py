"""Activation quantizers: per tensor, their range observed (calibrated) and then used, registered by the
name a weight method's `activation_method` gives."""

from __future__ import annotations

import math
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from mpsearch.errors import PolicyError
from mpsearch.quant.config import QuantConfig
from mpsearch.quant.options import check_momentum, option_value
from mpsearch.quant.parts import MIN_SCALE, BitWidth, Rounding, fake_quantize, grad_scale, integer_codes
from mpsearch.registry import Registry

ACTIVATION_QUANTIZERS: Registry[type[ActivationQuantizer]] = Registry("activation quantizer")


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
        check_momentum(momentum)
        self.width = BitWidth(bits, "symmetric")
        self.rounding = Rounding(rounding)
        self.momentum = float(momentum)
        self.frozen = False
        self.calibrating = False
        self._initialized = False

    @classmethod
    def from_config(cls, cfg: QuantConfig) -> ActivationQuantizer:
        return cls(cfg.act_bits, option_value(cfg, cls, "rounding"), option_value(cfg, cls, "act_momentum"))

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
