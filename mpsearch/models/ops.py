"""Float op modules for arithmetic that model code would otherwise write inline (in the spirit of
torch.ao's FloatFunctional).

An op written as a module is reachable from outside the model: quantisation or accelerator
emulation can replace it (recognising it by its `op_name`) without the model importing them. In
float each behaves exactly as the inline expression.
"""

from __future__ import annotations

from typing import ClassVar

from torch import Tensor, nn


class Add(nn.Module):
    """a + b (broadcasting)."""

    op_name: ClassVar[str] = "add"

    def forward(self, a: Tensor, b: Tensor) -> Tensor:
        return a + b


class Mul(nn.Module):
    """a * b (broadcasting)."""

    op_name: ClassVar[str] = "mul"

    def forward(self, a: Tensor, b: Tensor) -> Tensor:
        return a * b
