"""NNA absolute positions: a table of position codes added to the frames by the chip's saturating add.

The table (a constant sinusoidal one or a learned one) is held as int8 codes with one per-tensor scale
from its own range, known without data, as an Embedding's is; frame t's codes and row t's codes are
brought to the output scale by two multipliers that share one shift and one rounding (`requantize_sum`).
"""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import Tensor, nn

from mpsearch.quant.nna.errors import NNAError
from mpsearch.quant.nna.gradients import grad_wanted
from mpsearch.quant.nna.kernels import act_scale, multipliers
from mpsearch.quant.nna.numerics import NNANumerics, requantize_sum, saturate
from mpsearch.quant.nna.ops import NNAOp


class NNAAddPositions(NNAOp):
    """x + table[:T] for (..., T, D) int8 codes (op "positions"); keeps the float op's table (the same
    buffer or parameter), so a learned table trains with straight-through gradients."""

    op_name: ClassVar[str] = "positions"

    @classmethod
    def from_op(cls, module: nn.Module, numerics: NNANumerics | None = None) -> NNAAddPositions:
        table = getattr(module, "table", None)
        if not isinstance(table, Tensor) or table.dim() != 2:
            raise NNAError(f"The NNA positions op adds a (frames, dim) table; {type(module).__name__} has none: "
                           "give it a 2-D `table` buffer or parameter.")
        new = cls(numerics)
        if isinstance(table, nn.Parameter):
            new.table = table
        else:
            new.register_buffer("table", table)
        return new

    def table_codes(self, frames: int) -> tuple[Tensor, Tensor]:
        """(int8 codes of the first `frames` rows, their per-tensor scale) of the table as it is now."""
        if frames > self.table.shape[0]:
            raise NNAError(f"'{self.nna_name}' holds positions for {self.table.shape[0]} frames; got {frames}: "
                           "build the table for the longest input.")
        table = self.table.detach().double()
        scale = torch.tensor(act_scale(float(table.abs().max()), self.numerics), dtype=torch.float64)
        codes = saturate(torch.round(table[:frames] / scale).to(torch.int64), self.numerics.act_range)
        return codes, scale

    def float_op(self, x: Tensor) -> Tensor:
        return x + self.table[: x.shape[-2]]

    def forward(self, x: Tensor) -> Tensor:
        if self.check_ready():
            return self.calibration_forward((x,), self.float_op)
        n = self.numerics
        with torch.no_grad():
            table, table_scale = self.table_codes(x.shape[-2])
            out = self.out_scale.double()
            (m_x, m_t), shift = multipliers([self.in_scales[0].double() / out, table_scale / out], n, x.device)
            codes = requantize_sum([self.input_codes(x), table.to(x.device)], [m_x, m_t], shift, n.rounding,
                                   n.act_range)
        return self.emit(codes, self.out_scale, self.float_op(x) if grad_wanted() else None)
