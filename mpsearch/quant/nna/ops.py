"""NNA ops without weights: the saturating add (a table of every code pair) and lookup-table
non-linearities (sigmoid, tanh, SiLU, GELU)."""

from __future__ import annotations

from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mpsearch.quant.nna.base import NNAModule
from mpsearch.quant.nna.codes import TableCodes
from mpsearch.quant.nna.errors import NNAError
from mpsearch.quant.nna.gradients import grad_wanted
from mpsearch.quant.nna.kernels import multipliers
from mpsearch.quant.nna.numerics import (
    LUT_FUNCTIONS,
    LUT_INPUT_CAPS,
    NNANumerics,
    build_lut,
    lut_inputs,
    requantize_sum,
)


class NNAOp(NNAModule, nn.Module):
    """An NNA op without weights."""

    def __init__(self, numerics: NNANumerics | None = None) -> None:
        super().__init__()
        self.init_nna(numerics or NNANumerics())

    @classmethod
    def from_op(cls, module: nn.Module, numerics: NNANumerics | None = None) -> NNAOp:
        """The NNA version of float op `module`, taking over its constants (factors, dims)."""
        return cls(numerics)


class NNAAdd(NNAOp):
    """Saturating add alpha * a + beta * b of two int8 tensors of different scales: the constant factors
    fold into the two multipliers, which share one shift and one rounding.

    The result is a function of the two input codes alone, so the forward looks it up in a table of
    every code pair, built by `requantize_sum` itself, and hands it over as `TableCodes`.
    """

    op_name: ClassVar[str] = "add"
    input_ports = 2
    alpha: float = 1.0
    beta: float = 1.0

    def __init__(self, numerics: NNANumerics | None = None) -> None:
        super().__init__(numerics)
        # Derived from the frozen scales by prepare(), so not saved.
        self.register_buffer("table", torch.zeros(1 << (2 * self.numerics.activation_bits), dtype=torch.int64),
                             persistent=False)

    @classmethod
    def from_op(cls, module: nn.Module, numerics: NNANumerics | None = None) -> NNAAdd:
        new = cls(numerics)
        new.alpha, new.beta = float(getattr(module, "alpha", 1.0)), float(getattr(module, "beta", 1.0))
        if new.alpha < 0 or new.beta < 0:
            raise NNAError(f"The NNA add takes non-negative factors (its multipliers are unsigned); got alpha "
                           f"{new.alpha}, beta {new.beta}: negate the operand in a layer before it instead.")
        return new

    def integer_params(self) -> dict[str, Tensor]:
        out = self.out_scale.double()
        (m_a, m_b), shift = multipliers([self.alpha * self.in_scales[0].double() / out,
                                         self.beta * self.in_scales[1].double() / out],
                                        self.numerics, self.out_scale.device)
        return {"multipliers": torch.stack([m_a, m_b]), "shift": shift}

    def prepare(self) -> None:
        """The table: entry (a - lo) * 2^bits + (b - lo) is the add of codes a and b."""
        p, n = self.integer_params(), self.numerics
        codes = torch.from_numpy(lut_inputs(n.activation_bits)).to(self.out_scale.device)
        self.table = requantize_sum([codes[:, None], codes[None, :]], list(p["multipliers"]), p["shift"],
                                    n.rounding, n.act_range).reshape(-1)

    def float_op(self, a: Tensor, b: Tensor) -> Tensor:
        if self.alpha != 1.0:
            a = self.alpha * a
        if self.beta != 1.0:
            b = self.beta * b
        return a + b

    def forward(self, a: Tensor, b: Tensor) -> Tensor:
        if self.check_ready():
            return self.calibration_forward((a, b), self.float_op)
        n = self.numerics
        lo = n.act_range[0]
        with torch.no_grad():
            index_a = self.input_codes(a, 0, int64=False).to(torch.int32, copy=True).sub_(lo)
            index_b = self.input_codes(b, 1, int64=False).to(torch.int32, copy=True).sub_(lo)
            codes = TableCodes.of(self.table, [index_a.bitwise_left_shift_(n.activation_bits), index_b])
        return self.emit(codes, self.out_scale, self.float_op(a, b) if grad_wanted() else None)

    def extra_repr(self) -> str:
        return "" if self.alpha == self.beta == 1.0 else f"alpha={self.alpha}, beta={self.beta}"

    def get_extra_state(self) -> dict[str, Any]:
        return {**super().get_extra_state(), "alpha": self.alpha, "beta": self.beta}

    def set_extra_state(self, state: dict[str, Any]) -> None:
        self.alpha, self.beta = state.get("alpha", 1.0), state.get("beta", 1.0)
        super().set_extra_state(state)


class NNALookup(NNAOp):
    """A non-linearity by a 2^activation_bits-entry table indexed by the input code.

    A bounded function (sigmoid, tanh) has output scale 1/127; an unbounded one (SiLU, GELU) the calibrated
    range of its output, and its table saturates beyond it.
    """

    function: ClassVar[str]
    bounded: ClassVar[bool] = True

    def __init__(self, numerics: NNANumerics | None = None) -> None:
        super().__init__(numerics)
        self.register_buffer("lut", torch.zeros(1 << self.numerics.activation_bits, dtype=torch.int64))

    def output_scale(self, uses: list[Any]) -> float:
        return self.numerics.unit_scale if self.bounded else super().output_scale(uses)

    def prepare(self) -> None:
        out_scale = self.numerics.unit_scale if self.bounded else float(self.out_scale)
        table = build_lut(LUT_FUNCTIONS[self.function], float(self.in_scales[0]), out_scale,
                          self.numerics.activation_bits, self.numerics.lut_bits)
        self.lut = torch.from_numpy(table).to(self.in_scales.device)

    def float_fn(self, x: Tensor) -> Tensor:
        return {"sigmoid": torch.sigmoid, "tanh": torch.tanh, "silu": F.silu, "gelu": F.gelu}[self.function](x)

    def forward(self, x: Tensor) -> Tensor:
        if self.check_ready():
            return self.calibration_forward((x,), self.float_fn, observe=not self.bounded)
        lo = self.numerics.act_range[0]
        with torch.no_grad():
            # Behind a table (an add's), the two tables compose: the input codes are never gathered.
            table = self.input_table(x)
            if table is not None:
                codes = table.then(self.lut, -lo)
            else:
                index = self.input_codes(x, int64=False).to(torch.int32, copy=True).sub_(lo)
                codes = TableCodes.of(self.lut, [index])
        return self.emit(codes, self.out_scale, self.float_fn(x) if grad_wanted() else None,
                         bounds=self.numerics.lut_range)


class NNATanh(NNALookup):
    function = "tanh"
    input_cap = LUT_INPUT_CAPS["tanh"]


class NNASigmoid(NNALookup):
    function = "sigmoid"
    input_cap = LUT_INPUT_CAPS["sigmoid"]


class NNASiLU(NNALookup):
    """x * sigmoid(x) (SiLU, Swish) as one table at the calibrated output scale."""

    function = "silu"
    bounded = False


class NNAGELU(NNALookup):
    """GELU (Transformer MLPs) as one table at the calibrated output scale."""

    function = "gelu"
    bounded = False


class NNAReLU(nn.ReLU):
    """max(code, 0) at the input's scale: exact on any grid, so it needs no scale of its own
    (the chip fuses it into the producer's requantisation as a lower saturation bound)."""
