"""NNA modules for transformer and Conformer layers: LayerNorm, int8 x int8 matmuls and products,
softmax, rotary positions, GLU and masking, each computing the chip's integer result (see modules.py
for the conventions: straight-through float surrogates, linked input scales, phases).

The integer algorithms are the kernels of `numerics` (layer_norm_codes, softmax_codes, rotary_codes),
which the reference executor runs on numpy int64 arrays.
"""

from __future__ import annotations

import copy
import math
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mpsearch.quant.nna.base import NNAModule
from mpsearch.quant.nna.errors import NNAError
from mpsearch.quant.nna.gradients import grad_wanted
from mpsearch.quant.nna.kernels import act_scale, multipliers
from mpsearch.quant.nna.norm import norm_affine, norm_eps_term
from mpsearch.quant.nna.numerics import (
    ROTARY_FRAC_BITS,
    SOFTMAX_MIN_PEAK,
    NNANumerics,
    build_lut,
    exp_table,
    layer_norm_codes,
    requantize,
    rotary_codes,
    rotary_tables,
    saturate,
    sigmoid,
    softmax_codes,
    softmax_numerator,
)
from mpsearch.quant.nna.ops import NNAOp


class NNALayerNorm(NNAModule, nn.LayerNorm):
    """LayerNorm over one dim (the last, or `normalized_dim` of a LayerNorm subclass that declares it)
    with integer mean and variance, a normalised integer reciprocal square root (31 significant bits),
    int16 gamma and int32 beta: `numerics.layer_norm_codes`. Keeps the float module's parameters (same names, same tensors).
    """

    @classmethod
    def from_op(cls, module: nn.Module, numerics: NNANumerics | None = None) -> NNALayerNorm:
        if not isinstance(module, nn.LayerNorm):
            raise NNAError(f"NNALayerNorm.from_op needs an nn.LayerNorm; got {type(module).__name__}.")
        dim = getattr(module, "normalized_dim", None)
        if dim is None and type(module).forward is not nn.LayerNorm.forward:
            raise NNAError(f"{type(module).__name__} overrides LayerNorm.forward without saying which dim it "
                           "normalises; give the class a `normalized_dim` attribute or use nn.LayerNorm.")
        if len(module.normalized_shape) != 1:
            raise NNAError("The NNA normalises over one dim; got normalized_shape "
                           f"{tuple(module.normalized_shape)}: normalise over the channels only.")
        new = cls.__new__(cls)
        new.__dict__.update({k: copy.copy(v) if isinstance(v, (dict, list, set)) else v
                             for k, v in module.__dict__.items()})
        new.dim = -1 if dim is None else int(dim)
        device = module.weight.device if module.weight is not None else None
        new.init_nna(numerics or NNANumerics(), device)
        return new

    def float_op(self, x: Tensor) -> Tensor:
        if self.dim % x.dim() == x.dim() - 1:
            return F.layer_norm(x, self.normalized_shape, self.weight, self.bias, self.eps)
        moved = x.transpose(self.dim, -1)
        return F.layer_norm(moved, self.normalized_shape, self.weight, self.bias, self.eps).transpose(self.dim, -1)

    def integer_params(self) -> dict[str, Tensor]:
        """gamma (int16 codes), beta (int32), eps_term (int64), multiplier and shift of the output."""
        channels = self.normalized_shape[0]
        p = norm_affine(self.weight, self.bias, channels, self.out_scale, self.numerics)
        eps_term = norm_eps_term(self.eps, channels, float(self.in_scales[0]))
        return {**p, "eps": torch.tensor(eps_term, device=self.out_scale.device)}

    def forward(self, x: Tensor) -> Tensor:
        if self.check_ready():
            return self.calibration_forward((x,), self.float_op)
        p = self.integer_params()
        with torch.no_grad():
            # gamma and beta broadcast over the dims after the normalised one.
            dim = self.dim % x.dim()
            tail = (1,) * (x.dim() - 1 - dim)
            codes = layer_norm_codes(self.input_codes(x), p["gamma"].reshape(-1, *tail),
                                     p["beta"].reshape(-1, *tail), p["eps"], p["multiplier"], p["shift"],
                                     self.numerics, axis=dim)
        return self.emit(codes, self.out_scale, self.float_op(x) if grad_wanted() else None)

    def get_extra_state(self) -> dict[str, Any]:
        return {**super().get_extra_state(), "dim": self.dim}

    def set_extra_state(self, state: dict[str, Any]) -> None:
        self.dim = state["dim"]
        super().set_extra_state(state)


class _Product(NNAOp):
    """Two int8 inputs multiplied (elementwise or as a matmul), int32 accumulator, requantized."""

    input_ports = 2
    divisor: float | None = None

    def integer_params(self) -> dict[str, Tensor]:
        real = self.in_scales[0].double() * self.in_scales[1].double() / self.out_scale.double()
        if self.divisor is not None:
            real = real / self.divisor
        (m,), shift = multipliers([real], self.numerics, self.out_scale.device)
        return {"multiplier": m, "shift": shift}

    def float_op(self, a: Tensor, b: Tensor) -> Tensor:
        raise NotImplementedError

    def integer_op(self, a: Tensor, b: Tensor) -> Tensor:
        raise NotImplementedError

    def forward(self, a: Tensor, b: Tensor) -> Tensor:
        if self.check_ready():
            return self.calibration_forward((a, b), self.float_op)
        p = self.integer_params()
        n = self.numerics
        with torch.no_grad():
            acc = saturate(self.integer_op(self.input_codes(a, 0), self.input_codes(b, 1)), n.acc_range)
            codes = requantize(acc, p["multiplier"], p["shift"], n.rounding, n.act_range)
        return self.emit(codes, self.out_scale, self.float_op(a, b) if grad_wanted() else None)


class NNAMatMul(_Product):
    """a @ b of int8 tensors (attention's q k^T and weights v): exact int products summed in int32,
    requantized with the constant divisor (1/sqrt(d)) folded into the multiplier."""

    op_name: ClassVar[str] = "matmul"

    @classmethod
    def from_op(cls, module: nn.Module, numerics: NNANumerics | None = None) -> NNAMatMul:
        new = cls(numerics)
        divisor = getattr(module, "divisor", None)
        if divisor is not None and not (math.isfinite(divisor) and divisor > 0):
            raise NNAError(f"The NNA matmul folds a positive divisor into its multiplier; got {divisor}.")
        new.divisor = divisor
        return new

    def float_op(self, a: Tensor, b: Tensor) -> Tensor:
        out = a @ b
        return out if self.divisor is None else out / self.divisor

    def integer_op(self, a: Tensor, b: Tensor) -> Tensor:
        # float64 is exact: |a * b| <= 2^14 per term, far below 2^53 for any inner size that fits int32.
        return torch.matmul(a.to(torch.float64), b.to(torch.float64)).to(torch.int64)

    def get_extra_state(self) -> dict[str, Any]:
        return {**super().get_extra_state(), "divisor": self.divisor}

    def set_extra_state(self, state: dict[str, Any]) -> None:
        self.divisor = state.get("divisor")
        super().set_extra_state(state)

    def extra_repr(self) -> str:
        return "" if self.divisor is None else f"divisor={self.divisor}"


class NNAMul(_Product):
    """a * b of int8 tensors (broadcasting), requantized."""

    op_name: ClassVar[str] = "mul"

    def float_op(self, a: Tensor, b: Tensor) -> Tensor:
        return a * b

    def integer_op(self, a: Tensor, b: Tensor) -> Tensor:
        return a * b


class NNASoftmax(NNAOp):
    """Softmax over the last dim by an exp table on (code - row max), an int32 sum and one fixed-point
    reciprocal per row (`numerics.softmax_codes`); masked positions get probability exactly 0.

    The output scale is the calibrated peak probability / 127, kept within [2^-7, 1] / 127.
    """

    op_name: ClassVar[str] = "softmax"

    def __init__(self, numerics: NNANumerics | None = None) -> None:
        super().__init__(numerics)
        self.register_buffer("exp_lut", torch.zeros(1 << self.numerics.activation_bits, dtype=torch.int64))
        self.numerator = 0

    @classmethod
    def from_op(cls, module: nn.Module, numerics: NNANumerics | None = None) -> NNASoftmax:
        if getattr(module, "dim", -1) != -1:
            raise NNAError(f"The NNA softmax runs over the last dim; got dim {module.dim}: move that dim last.")
        return cls(numerics)

    def output_scale(self, uses: list[Any]) -> float:
        return act_scale(min(max(self._observed_out, SOFTMAX_MIN_PEAK), 1.0), self.numerics)

    def prepare(self) -> None:
        self.exp_lut = torch.from_numpy(exp_table(float(self.in_scales[0]), self.numerics)).to(self.out_scale.device)
        self.numerator = softmax_numerator(float(self.out_scale))

    @staticmethod
    def float_op(x: Tensor, mask: Tensor | None) -> Tensor:
        if mask is not None:
            x = x.masked_fill(~mask, torch.finfo(x.dtype).min)
        return x.softmax(dim=-1)

    def forward(self, x: Tensor, mask: Tensor | None = None) -> Tensor:
        if self.check_ready():
            return self.calibration_forward((x,), lambda x: self.float_op(x, mask))
        with torch.no_grad():
            codes = self.input_codes(x)
            valid = torch.ones_like(codes) if mask is None else mask.expand(codes.shape)
            codes = softmax_codes(codes, valid, self.exp_lut, self.numerator, self.numerics)
        return self.emit(codes, self.out_scale, self.float_op(x, mask) if grad_wanted() else None)


class NNARotary(NNAOp):
    """Rotary positions of (..., T, D) int8 codes with int16 Q1.14 cos/sin tables
    (`numerics.rotary_tables`, `rotary_codes`): int32 products requantized to the calibrated scale."""

    op_name: ClassVar[str] = "rotary"
    base: float = 10000.0

    @classmethod
    def from_op(cls, module: nn.Module, numerics: NNANumerics | None = None) -> NNARotary:
        new = cls(numerics)
        new.base = float(getattr(module, "base", 10000.0))
        return new

    def float_op(self, x: Tensor) -> Tensor:
        frames, dim = x.shape[-2:]
        inv_freq = self.base ** (-torch.arange(0, dim, 2, device=x.device, dtype=torch.float32) / dim)
        angles = torch.arange(frames, device=x.device, dtype=torch.float32)[:, None] * inv_freq[None, :]
        cos, sin = angles.cos().to(x.dtype), angles.sin().to(x.dtype)
        even, odd = x[..., 0::2], x[..., 1::2]
        return torch.stack([even * cos - odd * sin, even * sin + odd * cos], dim=-1).flatten(-2)

    def tables(self, frames: int, dim: int, device: torch.device) -> tuple[Tensor, Tensor]:
        cache = self.__dict__.setdefault("_tables", {})
        key = (frames, dim, str(device))
        if key not in cache:
            cos, sin = rotary_tables(frames, dim, self.base)
            cache.clear()  # one length at a time is what a batch needs
            cache[key] = torch.from_numpy(cos).to(device), torch.from_numpy(sin).to(device)
        return cache[key]

    def integer_params(self) -> dict[str, Tensor]:
        real = self.in_scales[0].double() * 2.0 ** -ROTARY_FRAC_BITS / self.out_scale.double()
        (m,), shift = multipliers([real], self.numerics, self.out_scale.device)
        return {"multiplier": m, "shift": shift}

    def forward(self, x: Tensor) -> Tensor:
        if x.shape[-1] % 2:
            raise NNAError(f"Rotary positions need an even last dim; got {x.shape[-1]}.")
        if self.check_ready():
            return self.calibration_forward((x,), self.float_op)
        p = self.integer_params()
        with torch.no_grad():
            cos, sin = self.tables(x.shape[-2], x.shape[-1], x.device)
            codes = rotary_codes(self.input_codes(x), cos, sin, p["multiplier"], p["shift"], self.numerics)
        return self.emit(codes, self.out_scale, self.float_op(x) if grad_wanted() else None)

    def get_extra_state(self) -> dict[str, Any]:
        return {**super().get_extra_state(), "base": self.base}

    def set_extra_state(self, state: dict[str, Any]) -> None:
        self.base = state.get("base", 10000.0)
        super().set_extra_state(state)

    def extra_repr(self) -> str:
        return f"base={self.base}"


class NNAGLU(NNAOp):
    """GLU a * sigmoid(b) over `dim`: the gate half through a sigmoid table (scale 1/127), then an
    int8 x int8 product requantized to the calibrated output scale. Both halves share the input's scale."""

    op_name: ClassVar[str] = "glu"
    dim: int = -1

    def __init__(self, numerics: NNANumerics | None = None) -> None:
        super().__init__(numerics)
        self.register_buffer("lut", torch.zeros(1 << self.numerics.activation_bits, dtype=torch.int64))

    @classmethod
    def from_op(cls, module: nn.Module, numerics: NNANumerics | None = None) -> NNAGLU:
        new = cls(numerics)
        new.dim = int(getattr(module, "dim", -1))
        return new

    def prepare(self) -> None:
        n = self.numerics
        table = build_lut(sigmoid, float(self.in_scales[0]), n.unit_scale, n.activation_bits, n.lut_bits)
        self.lut = torch.from_numpy(table).to(self.out_scale.device)

    def integer_params(self) -> dict[str, Tensor]:
        real = self.in_scales[0].double() * self.numerics.unit_scale / self.out_scale.double()
        (m,), shift = multipliers([real], self.numerics, self.out_scale.device)
        return {"multiplier": m, "shift": shift, "lut": self.lut}

    def forward(self, x: Tensor) -> Tensor:
        if x.shape[self.dim] % 2:
            raise NNAError(f"GLU halves dim {self.dim}, which has odd size {x.shape[self.dim]}.")
        if self.check_ready():
            return self.calibration_forward((x,), lambda x: F.glu(x, self.dim))
        p = self.integer_params()
        n = self.numerics
        with torch.no_grad():
            value, gate = self.input_codes(x).chunk(2, dim=self.dim)
            codes = requantize(value * self.lut[gate - n.act_range[0]], p["multiplier"], p["shift"], n.rounding,
                               n.act_range)
        return self.emit(codes, self.out_scale, F.glu(x, self.dim) if grad_wanted() else None)

    def get_extra_state(self) -> dict[str, Any]:
        return {**super().get_extra_state(), "dim": self.dim}

    def set_extra_state(self, state: dict[str, Any]) -> None:
        self.dim = state.get("dim", -1)
        super().set_extra_state(state)


class NNAMask(NNAOp):
    """x * mask for a 0/1 mask (padded frames): zeroing codes is exact on any grid, so the output keeps
    its input's codes and scale, and calibration links the consumers straight to x's producer (the
    chip skips or zeroes those frames; the executor, running one utterance unpadded, has none)."""

    op_name: ClassVar[str] = "mask"

    def forward(self, x: Tensor, mask: Tensor) -> Tensor:
        if self.check_ready():
            if mask.requires_grad or not bool(((mask == 0) | (mask == 1)).all()):
                raise NNAError(f"'{self.nna_name}' multiplies by a mask that is not a constant of 0s and 1s, "
                               "which would move its input off the grid; use Mul for a product of activations.")
            self.see_input(0, x)
            source = self.input_sources[0]
            if source is None:
                raise NNAError(f"'{self.nna_name}' masks a model input; the chip masks activations of a layer "
                               "(mask the features on the host instead).")
            out = x * mask
            self._calls += 1
            self._tracer.producers[out.grad_fn] = source  # consumers read x's producer's grid
            return out
        return x * mask

    def freeze_output(self, uses: list[Any]) -> None:
        if not self._calls:
            super().freeze_output(uses)  # raises: saw no data

    def freeze_inputs(self, modules: dict[str, NNAModule]) -> None:
        super().freeze_inputs(modules)
        self.out_scale.copy_(self.in_scales[0])
