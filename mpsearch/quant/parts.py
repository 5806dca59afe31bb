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
from mpsearch.quant.rounding import ROUNDINGS
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


class Rounding(nn.Module):
    """A rounding mode of `mpsearch.quant.rounding.ROUNDINGS` as a quantizer part, with a straight-through
    gradient. Holds the mode's name only, so quantizer state stays plain values."""

    def __init__(self, mode: str = "half_even") -> None:
        super().__init__()
        ROUNDINGS.get(mode)
        self.mode = mode

    def round(self, x: Tensor) -> Tensor:
        return ROUNDINGS.get(self.mode).round(x)

    def round_(self, x: Tensor) -> Tensor:
        """In place, for tensors no one else holds (inside fake_quantize)."""
        return ROUNDINGS.get(self.mode).round_(x)

    def forward(self, x: Tensor) -> Tensor:
        # x + (r - x) is exactly r for |r - x| <= 0.5, so the value is the integer and the gradient is 1.
        return x + (self.round(x) - x).detach()

    def extra_repr(self) -> str:
        return self.mode


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


def _rows(x: Tensor, per_channel: bool) -> Tensor:
    """x as (groups, values): one row per output channel (dim 0), or a single row."""
    if x.dim() == 0:
        return x.reshape(1, 1)
    return x.reshape(x.shape[0], -1) if per_channel else x.reshape(1, -1)


# Clipping level (the end code's value, in standard deviations) of the least-squares uniform grid for a
# Gaussian, by the number of positive codes 2^(b-1)-1 of a b-bit symmetric grid (b = 2..8); found by Lloyd
# iterations on 10^6 Gaussian samples. A starting point only: the search refines it on the data.
GAUSSIAN_CLIP = {1: 1.223, 3: 1.951, 7: 2.476, 15: 2.914, 31: 3.266, 63: 3.523, 127: 3.995}


class MseScale(nn.Module):
    """The scale (and zero point) that minimises ||Q(x) - x||^2 per channel (or per tensor); no state.

    A max-abs scale spends the grid on the few largest weights: on Gaussian weights its 2-bit relative
    error is about 0.8, where the best clipping gives about 0.43 (0.29 against 0.21 at 3 bits). So the
    range is searched, as Brevitas' MSE scaling and the LSQ+ initialisation do, on a strided sample of
    every channel (SAMPLE_PER_ROW values; more for one per-tensor row), which is cheap and enough for a
    scale:
      - without a zero point: the best of max|x| / qmax and the Gaussian-optimal clipping of the
        channel's RMS (times 3/4, 1 and 4/3), then LLOYD_STEPS alternations of codes
        q = clamp(round(x / s)) and the least-squares scale s = <x, q> / <q, q> (Leng et al.'s
        projection), none of which can raise the error; the scale stays small enough that the largest
        |x| keeps the end code;
      - with a zero point (asymmetric): the best of clipping ratios from 1 down to 0.1 of the min/max
        range among those where both ends of the range clip (ratio 1, the min/max range, always counts).
    Both keep the quantizer idempotent: Q(x) takes the end codes, so on Q(x) the max-abs (or min/max)
    candidate reproduces it with zero error, wins ties by coming first, and is a fixed point of the Lloyd
    step. The result is detached: the gradient is the plain STE.
    """

    SAMPLE_PER_ROW = 256
    SAMPLE_PER_TENSOR = 16384
    RMS_FACTORS = (0.75, 1.0, 4.0 / 3.0)
    LLOYD_STEPS = 3
    RATIOS = tuple(float(r) for r in torch.linspace(1.0, 0.1, 16))

    def __init__(self, per_channel: bool) -> None:
        super().__init__()
        self.per_channel = per_channel

    def forward(self, x: Tensor, width: BitWidth) -> tuple[Tensor, Tensor | None]:
        x = x.detach()
        shape = scale_shape(x.shape, self.per_channel) if x.dim() else ()
        rows = _rows(x, self.per_channel)
        if rows.dtype not in (torch.float32, torch.float64):
            rows = rows.float()
        per_row = max(self.SAMPLE_PER_ROW, self.SAMPLE_PER_TENSOR // rows.shape[0])
        sample = rows[:, :: max(1, rows.shape[1] // per_row)].contiguous()
        if width.mode == "asymmetric":
            scale, zero_point = self._asymmetric(rows, sample, width)
            return scale.to(x.dtype).reshape(shape), zero_point.to(x.dtype).reshape(shape)
        qmin, qmax = width.qmin, width.qmax
        lo, hi = torch.aminmax(rows, dim=1, keepdim=True)  # one pass, no |x| copy
        peak = hi.clamp_min(0.0) if width.mode == "unsigned" else torch.maximum(hi, -lo)
        clip = GAUSSIAN_CLIP[min(GAUSSIAN_CLIP, key=lambda n: abs(n - qmax))]
        rms = sample.square().mean(dim=1, keepdim=True).sqrt()
        candidates = [peak / qmax] + [torch.minimum(rms * (f * clip / qmax), peak / qmax) for f in self.RMS_FACTORS]
        scale, best = None, None
        for candidate in candidates:
            candidate = candidate.clamp_min(MIN_SCALE)
            error = _grid_error(sample, candidate, None, qmin, qmax)
            if scale is None:
                scale, best = candidate, error
            else:
                better = error < best  # strict: the earlier candidate (max-abs first) keeps ties
                scale, best = torch.where(better, candidate, scale), torch.where(better, error, best)
        scale = lloyd_steps(sample, scale, peak, width, self.LLOYD_STEPS)
        return scale.to(x.dtype).reshape(shape), None

    def _asymmetric(self, rows: Tensor, sample: Tensor, width: BitWidth) -> tuple[Tensor, Tensor]:
        qmin, qmax = width.qmin, width.qmax
        lo = rows.amin(dim=1, keepdim=True).clamp(max=0.0)
        hi = rows.amax(dim=1, keepdim=True).clamp(min=0.0)
        best = None
        for ratio in self.RATIOS:
            # Ratio 1 computes exactly what MinMaxScale does.
            scale = ((hi - lo) * ratio / (qmax - qmin)).clamp_min(MIN_SCALE)
            zero_point = (qmin + torch.round(-lo * ratio / scale)).clamp(qmin, qmax)
            error = _grid_error(sample, scale, zero_point, qmin, qmax)
            if best is None:
                best = (scale, zero_point, error)
                continue
            # Both ends must clip (an end at 0 is the range's own end), or Q(x) would not fill the grid.
            low_ok = (lo == 0) | (lo / scale + zero_point <= qmin)
            high_ok = (hi == 0) | (hi / scale + zero_point >= qmax)
            better = (error < best[2]) & low_ok & high_ok
            best = tuple(torch.where(better, new, old) for new, old in zip((scale, zero_point, error), best))
        return best[0], best[1]

    def extra_repr(self) -> str:
        return f"per_channel={self.per_channel}"


def lloyd_steps(rows: Tensor, scale: Tensor, peak: Tensor, width: BitWidth, steps: int) -> Tensor:
    """`steps` alternations of codes q = clamp(round(x / s)) and the least-squares scale s = <x, q> / <q, q>
    on every row of `rows` (G, M), from `scale` (G, 1); grids without a zero point.

    Neither half can raise the row's squared error. The scale is capped so that the row's largest |x|
    (`peak`, (G, 1)) keeps the end code, which makes the result a fixed point for rows already on a grid.
    """
    qmin, qmax = width.qmin, width.qmax
    # x / s > qmax - 1/2 keeps the end code; the margin keeps ties from rounding it away.
    cap = (peak / (qmax - 0.25)).clamp_min(MIN_SCALE)
    for _ in range(steps):
        q = (rows / scale).clamp_(qmin, qmax).round_()
        num, den = torch.linalg.vecdot(rows, q), torch.linalg.vecdot(q, q)
        fitted = torch.where(den > 0, num / den.clamp_min(1e-30), scale.squeeze(1)).unsqueeze(1)
        scale = torch.minimum(fitted, cap).clamp_min(MIN_SCALE)
    return scale


def least_squares_scale(x: Tensor, width: BitWidth, per_channel: bool, max_steps: int = 50) -> Tensor:
    """The scale alpha of min ||x - alpha * q|| over alpha and integer codes q in the symmetric (or unsigned)
    range, per channel or per tensor (Leng et al. 2018's projection for ADMM): MseScale's search, then
    alternations of codes and least-squares scale on every value of x until no scale changes (at most
    `max_steps`). Shaped like MseScale's scale; detached."""
    x = x.detach()
    start, _ = MseScale(per_channel)(x, width)
    rows = _rows(x, per_channel)
    if rows.dtype not in (torch.float32, torch.float64):
        rows = rows.float()
    lo, hi = torch.aminmax(rows, dim=1, keepdim=True)
    peak = hi.clamp_min(0.0) if width.mode == "unsigned" else torch.maximum(hi, -lo)
    scale = start.reshape(-1, 1).to(rows.dtype)
    for _ in range(max_steps):
        fitted = lloyd_steps(rows, scale, peak, width, 1)
        if torch.equal(fitted, scale):
            break
        scale = fitted
    return scale.to(x.dtype).reshape(start.shape)


def _grid_error(x: Tensor, scale: Tensor, zero_point: Tensor | None, qmin: int, qmax: int) -> Tensor:
    """Squared error of every row of x on the grid (scale, zero point), summed over the row."""
    v = x / scale
    if zero_point is not None:
        v = v + zero_point
    d = torch.round(v.clamp(qmin, qmax)).sub_(v)
    return d.square_().sum(dim=1, keepdim=True) * scale.square()


WEIGHT_SCALES: Registry[type[nn.Module]] = Registry("weight scale")
WEIGHT_SCALES.register("mse")(MseScale)
WEIGHT_SCALES.register("maxabs")(MinMaxScale)


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
