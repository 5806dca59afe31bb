"""The parts quantizers are built from: bit width (integer range), rounding, scale and zero point.

Every part is a small nn.Module so a quantizer's repr shows how it is composed and learned parts
(a step size, centroids) sit in its state dict under a stable name.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from mpsearch.errors import PolicyError
from mpsearch.quant.config import MAX_BITS, MIN_BITS
from mpsearch.registry import Registry

# A floor for scales: an all-zero channel would otherwise divide by zero (its values stay zero).
MIN_SCALE = 1e-8

INT_RANGE_MODES = ("symmetric", "asymmetric", "unsigned")


def check_bits(bits: object, what: str = "bits") -> int:
    """Return `bits` if it is an integer in [MIN_BITS, MAX_BITS], else raise a PolicyError."""
    if not isinstance(bits, int) or isinstance(bits, bool) or not MIN_BITS <= bits <= MAX_BITS:
        raise PolicyError(f"The '{what}' must be an integer in [{MIN_BITS}, {MAX_BITS}]; got {bits!r}.")
    return bits


class BitWidth(nn.Module):
    """Bit width and the integer range it allows.

    - symmetric: the restricted range [-(2^(b-1)-1), 2^(b-1)-1] (int8 is [-127, 127]), so the grid
      is symmetric about zero, the scale alone describes it and -q never overflows; one code
      (-2^(b-1)) is given up.
    - asymmetric: the full signed range [-2^(b-1), 2^(b-1)-1] with an integer zero point, so the
      integers still fit the accelerator's signed b-bit storage.
    - unsigned: [0, 2^b-1], for activations that are never negative (zero point 0).
    """

    def __init__(self, bits: int, mode: str = "symmetric") -> None:
        super().__init__()
        if mode not in INT_RANGE_MODES:
            raise PolicyError(f"Unknown integer range mode '{mode}'; valid choices: {', '.join(INT_RANGE_MODES)}.")
        self.bits = check_bits(bits)
        self.mode = mode

    def set_bits(self, bits: int) -> None:
        self.bits = check_bits(bits)

    @property
    def qmin(self) -> int:
        if self.mode == "symmetric":
            return -(2 ** (self.bits - 1) - 1)
        return -(2 ** (self.bits - 1)) if self.mode == "asymmetric" else 0

    @property
    def qmax(self) -> int:
        return 2 ** self.bits - 1 if self.mode == "unsigned" else 2 ** (self.bits - 1) - 1

    @property
    def levels(self) -> int:
        return self.qmax - self.qmin + 1

    def extra_repr(self) -> str:
        return f"bits={self.bits}, mode={self.mode}, range=[{self.qmin}, {self.qmax}]"


class RoundHalfEven(nn.Module):
    """Round to nearest, ties to even (torch.round, numpy.rint), with a straight-through gradient."""

    @staticmethod
    def round(x: Tensor) -> Tensor:
        return torch.round(x)

    @staticmethod
    def round_(x: Tensor) -> Tensor:
        """In place, for tensors no one else holds (inside fake_quantize)."""
        return x.round_()

    def forward(self, x: Tensor) -> Tensor:
        # x + (r - x) is exactly r for |r - x| <= 0.5, so the value is the integer and the gradient is 1.
        return x + (self.round(x) - x).detach()


class RoundHalfAway(RoundHalfEven):
    """Round to nearest, ties away from zero (C's round(), common in fixed-point hardware)."""

    @staticmethod
    def round(x: Tensor) -> Tensor:
        # floor(|x| + 0.5) is wrong just below a tie (0.49999997 + 0.5 rounds up to 1.0 in float32).
        trunc = torch.trunc(x)
        tie = (x - trunc).abs() == 0.5
        return torch.where(tie, trunc + torch.sign(x), torch.round(x))

    @classmethod
    def round_(cls, x: Tensor) -> Tensor:
        return x.copy_(cls.round(x))


ROUNDINGS: Registry[type[RoundHalfEven]] = Registry("rounding mode")
ROUNDINGS.register("half_even")(RoundHalfEven)
ROUNDINGS.register("half_away")(RoundHalfAway)


def scale_shape(weight_shape: tuple[int, ...] | torch.Size, per_channel: bool) -> tuple[int, ...]:
    """(out_channels, 1, ...) per channel along dim 0, (1, 1, ...) per tensor: broadcastable either way."""
    ones = (1,) * (len(weight_shape) - 1)
    return (weight_shape[0], *ones) if per_channel else (1, *ones)


def reduce_dims(x: Tensor, per_channel: bool) -> tuple[int, ...]:
    return tuple(range(1, x.dim())) if per_channel else tuple(range(x.dim()))


def mean_abs(x: Tensor, per_channel: bool) -> Tensor:
    """Mean |x| per channel (dim 0) or over the tensor, shaped like the scale."""
    if x.dim() == 0:
        return x.abs()
    return x.abs().mean(dim=reduce_dims(x, per_channel), keepdim=True)


class MinMaxScale(nn.Module):
    """Scale (and zero point) from the tensor's own range, recomputed on every call; no state.

    Symmetric: scale = max|x| / qmax. Asymmetric: the range is widened to include 0 (so 0 is exactly
    representable) and the zero point is qmin + round(-min / scale). Both ends of the range then land
    exactly on qmin and qmax, so quantizing an already quantized tensor reproduces the same scale and
    zero point: the quantizer is idempotent. The result is detached: the gradient is the plain STE.
    """

    def __init__(self, per_channel: bool) -> None:
        super().__init__()
        self.per_channel = per_channel

    def forward(self, x: Tensor, width: BitWidth) -> tuple[Tensor, Tensor | None]:
        x = x.detach()
        dims = reduce_dims(x, self.per_channel)
        if width.mode == "asymmetric":
            lo = x.amin(dim=dims, keepdim=True).clamp(max=0.0)
            hi = x.amax(dim=dims, keepdim=True).clamp(min=0.0)
            scale = ((hi - lo) / (width.qmax - width.qmin)).clamp_min(MIN_SCALE)
            zero_point = (width.qmin + torch.round(-lo / scale)).clamp(width.qmin, width.qmax)
            return scale, zero_point
        if width.mode == "unsigned":
            return (x.amax(dim=dims, keepdim=True).clamp_min(0.0) / width.qmax).clamp_min(MIN_SCALE), None
        return (x.abs().amax(dim=dims, keepdim=True) / width.qmax).clamp_min(MIN_SCALE), None

    def extra_repr(self) -> str:
        return f"per_channel={self.per_channel}"


def grad_scale(x: Tensor, factor: float) -> Tensor:
    """Value of x, gradient multiplied by factor (LSQ's step-size gradient scale)."""
    scaled = x * factor
    return (x - scaled).detach() + scaled


class LearnedStep(nn.Module):
    """A learned step size (LSQ, Esser et al. 2020), one per tensor or per channel.

    The gradient reaching the step is scaled by g = 1 / sqrt(n * qmax), with n the number of values
    that share one step (a channel's for per-channel steps), so the step's update has the same size
    relative to its value as the weights' updates, whatever the layer size and bit width.
    """

    def __init__(self, init: Tensor, values_per_step: int) -> None:
        super().__init__()
        self.step = nn.Parameter(init.detach().clone().clamp_min(MIN_SCALE))
        self.values_per_step = max(int(values_per_step), 1)

    def forward(self, width: BitWidth) -> Tensor:
        g = 1.0 / math.sqrt(self.values_per_step * max(width.qmax, 1))
        # A clamp, not abs(): an optimiser that drives the step below zero must not flip the grid.
        return grad_scale(self.step, g).clamp_min(MIN_SCALE)

    @torch.no_grad()
    def rescale(self, factor: float) -> None:
        self.step.mul_(factor)

    def extra_repr(self) -> str:
        return f"shape={tuple(self.step.shape)}, values_per_step={self.values_per_step}"


class _FakeQuantize(torch.autograd.Function):
    """One autograd node for fake quantization; about half the time of the same ops recorded one by one.

    Gradients: straight-through for x inside the range, zero where it was clamped; for a scale that
    requires grad, the LSQ gradient (q - v inside the range, the clamped code outside, both relative
    to the zero point), summed to the scale's shape. The zero point gets none (it is an integer).
    """

    @staticmethod
    def forward(x, scale, zero_point, qmin, qmax, rounding, learn_scale):
        v = x / scale
        if zero_point is not None:
            v += zero_point
        inside = v.ge(qmin).logical_and_(v.le(qmax))
        q = rounding.round_(v.clamp(qmin, qmax))
        # d out / d scale per element: q - v inside the range, the clamped code outside (both
        # relative to the zero point, which cancels inside). Computed here while v is at hand.
        local = torch.where(inside, v.neg_().add_(q), q if zero_point is None else q - zero_point) \
            if learn_scale else None
        if zero_point is not None:
            q -= zero_point
        return q.mul_(scale), inside, local

    @staticmethod
    def setup_context(ctx, inputs, outputs):
        # A separate setup_context (no ctx in forward) keeps the function usable under torch.func.
        scale = inputs[1]
        _, inside, local = outputs
        ctx.mark_non_differentiable(inside, *([] if local is None else [local]))
        ctx.scale_shape = scale.shape
        ctx.save_for_backward(inside, local)

    @staticmethod
    def backward(ctx, grad, *_):
        inside, local = ctx.saved_tensors
        grad_x = grad * inside if ctx.needs_input_grad[0] else None
        grad_scale_ = (grad * local).sum_to_size(ctx.scale_shape) if ctx.needs_input_grad[1] else None
        return grad_x, grad_scale_, None, None, None, None, None


def fake_quantize(x: Tensor, scale: Tensor, zero_point: Tensor | None, qmin: int, qmax: int,
                  rounding: nn.Module) -> Tensor:
    """(round(clamp(x / scale + zp, qmin, qmax)) - zp) * scale, with straight-through gradients.

    Clamping before rounding, as in the LSQ paper, gives a learned scale the paper's gradient:
    round(v) - v inside the range, qmin or qmax outside it (minus the zero point if any).
    """
    learn_scale = scale.requires_grad and torch.is_grad_enabled()
    return _FakeQuantize.apply(x, scale, zero_point, qmin, qmax, rounding, learn_scale)[0]


def integer_codes(x: Tensor, scale: Tensor, zero_point: Tensor | None, qmin, qmax,
                  rounding: nn.Module) -> Tensor:
    """The integers fake_quantize represents x by (before subtracting the zero point), as float."""
    v = x / scale
    if zero_point is not None:
        v = v + zero_point
    return rounding.round(torch.clamp(v, qmin, qmax))
