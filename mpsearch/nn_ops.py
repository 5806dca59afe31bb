"""Float op modules for arithmetic that model code would otherwise write inline (in the spirit of
torch.ao's FloatFunctional), shared by the models and by quantisation.

An op written as a module is reachable from outside the model: quantisation or accelerator
emulation can replace it (recognising it by its `op_name`). In float each behaves exactly as the
inline expression it stands for, operation for operation. This module imports nothing from mpsearch,
so both mpsearch.models and mpsearch.quant can build on it without importing each other.
"""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import Tensor, nn


class Add(nn.Module):
    """alpha * a + beta * b (broadcasting), with constant alpha and beta; a + b by default.

    A factor of 1 is not multiplied at all, so Add(beta=0.5)(a, b) is `a + 0.5 * b` exactly.
    """

    op_name: ClassVar[str] = "add"

    def __init__(self, alpha: float = 1.0, beta: float = 1.0) -> None:
        super().__init__()
        self.alpha = float(alpha)
        self.beta = float(beta)

    def forward(self, a: Tensor, b: Tensor) -> Tensor:
        if self.alpha != 1.0:
            a = self.alpha * a
        if self.beta != 1.0:
            b = self.beta * b
        return a + b

    def extra_repr(self) -> str:
        return "" if self.alpha == self.beta == 1.0 else f"alpha={self.alpha}, beta={self.beta}"


class Mul(nn.Module):
    """a * b (broadcasting)."""

    op_name: ClassVar[str] = "mul"

    def forward(self, a: Tensor, b: Tensor) -> Tensor:
        return a * b


class MatMul(nn.Module):
    """a @ b, then divided by a constant `divisor` when one is given (attention's sqrt(d))."""

    op_name: ClassVar[str] = "matmul"

    def __init__(self, divisor: float | None = None) -> None:
        super().__init__()
        self.divisor = None if divisor is None else float(divisor)

    def forward(self, a: Tensor, b: Tensor) -> Tensor:
        out = a @ b
        return out if self.divisor is None else out / self.divisor

    def extra_repr(self) -> str:
        return "" if self.divisor is None else f"divisor={self.divisor}"


class Softmax(nn.Module):
    """Softmax over `dim` where `mask` (boolean, broadcasting; True = keep) allows; masked positions get
    probability 0. Without a mask, a plain softmax."""

    op_name: ClassVar[str] = "softmax"

    def __init__(self, dim: int = -1) -> None:
        super().__init__()
        self.dim = dim

    def forward(self, x: Tensor, mask: Tensor | None = None) -> Tensor:
        if mask is not None:
            x = x.masked_fill(~mask, torch.finfo(x.dtype).min)
        return x.softmax(dim=self.dim)

    def extra_repr(self) -> str:
        return f"dim={self.dim}"
