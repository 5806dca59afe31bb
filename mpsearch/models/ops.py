"""Float op modules for arithmetic that model code would otherwise write inline (in the spirit of
torch.ao's FloatFunctional). The plain arithmetic ops live in mpsearch.nn_ops, shared with quantisation;
this module adds the position ops the models need.

An op written as a module is reachable from outside the model: quantisation or accelerator
emulation can replace it (recognising it by its `op_name`) without the model importing them. In
float each behaves exactly as the inline expression it stands for, operation for operation, so a
model's outputs do not change by a bit when it writes the op as a module.
"""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import Tensor, nn

from mpsearch.nn_ops import Add, MatMul, Mul, Softmax

__all__ = ["Add", "AddPositions", "Mask", "MatMul", "Mul", "Rotary", "Softmax", "rotate_positions",
           "sinusoidal_positions"]


def rotate_positions(x: Tensor, base: float = 10000.0) -> Tensor:
    """Rotary position embedding of (..., T, D) queries or keys, D even: pair (2i, 2i+1) of frame t is
    rotated by the angle t * base^(-2i/D)."""
    frames, dim = x.shape[-2:]
    inv_freq = base ** (-torch.arange(0, dim, 2, device=x.device, dtype=torch.float32) / dim)
    angles = torch.arange(frames, device=x.device, dtype=torch.float32)[:, None] * inv_freq[None, :]
    cos, sin = angles.cos().to(x.dtype), angles.sin().to(x.dtype)
    even, odd = x[..., 0::2], x[..., 1::2]
    return torch.stack([even * cos - odd * sin, even * sin + odd * cos], dim=-1).flatten(-2)


class Rotary(nn.Module):
    """Rotary position embedding (`rotate_positions`) of (..., T, D) queries or keys."""

    op_name: ClassVar[str] = "rotary"

    def __init__(self, base: float = 10000.0) -> None:
        super().__init__()
        self.base = float(base)

    def forward(self, x: Tensor) -> Tensor:
        return rotate_positions(x, self.base)

    def extra_repr(self) -> str:
        return f"base={self.base}"


class Mask(nn.Module):
    """x * mask for a 0/1 mask (broadcasting): zeroes what the mask marks 0, such as padded frames."""

    op_name: ClassVar[str] = "mask"

    def forward(self, x: Tensor, mask: Tensor) -> Tensor:
        return x * mask


def sinusoidal_positions(frames: int, dim: int, base: float = 10000.0) -> Tensor:
    """The (frames, dim) sinusoidal position table of "Attention Is All You Need": sin in the even
    columns, cos in the odd ones, at angle t * base^(-2i/dim)."""
    inv_freq = base ** (-torch.arange(0, dim, 2, dtype=torch.float32) / dim)
    angles = torch.arange(frames, dtype=torch.float32)[:, None] * inv_freq[None, :]
    table = torch.zeros(frames, dim)
    table[:, 0::2], table[:, 1::2] = angles.sin(), angles.cos()[:, : dim // 2]
    return table


class AddPositions(nn.Module):
    """x + table[:T] for (..., T, dim) x: absolute positions added to the frames, from a constant
    sinusoidal table (a buffer) or a learned one (a parameter, initialised sinusoidal)."""

    op_name: ClassVar[str] = "positions"

    def __init__(self, max_frames: int, dim: int, learned: bool = False, base: float = 10000.0) -> None:
        super().__init__()
        table = sinusoidal_positions(max_frames, dim, base)
        if learned:
            self.table = nn.Parameter(table)
        else:
            self.register_buffer("table", table)

    def forward(self, x: Tensor) -> Tensor:
        return x + self.table[: x.shape[-2]]
