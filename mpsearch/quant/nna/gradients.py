"""Straight-through gradients of the NNA emulation: a module's output has the integer result's value
and the float surrogate's gradient, so the loss sees the chip's errors and the weights get the usual
QAT gradients."""

from __future__ import annotations

import torch
from torch import Tensor


class _StraightThrough(torch.autograd.Function):
    """value forward, the surrogate's gradient backward: `value + (surrogate - surrogate.detach())` in
    one node and no elementwise pass."""

    @staticmethod
    def forward(ctx, surrogate: Tensor, value: Tensor) -> Tensor:
        return value

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor, None]:
        return grad, None


def straight_through(value: Tensor, surrogate: Tensor) -> Tensor:
    """`value` forward, `surrogate`'s gradient backward (broadcast where the two differ in shape)."""
    if surrogate.shape == value.shape and surrogate.dtype == value.dtype:
        return _StraightThrough.apply(surrogate, value)
    return value + (surrogate - surrogate.detach())


def grad_wanted() -> bool:
    """Whether a forward should compute its float surrogate (only a backward reads it)."""
    return torch.is_grad_enabled()
