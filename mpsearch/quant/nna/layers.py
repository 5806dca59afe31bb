"""NNA layers with weight sites (Linear, Conv1d, Embedding): int8 weight codes from each site's own
quantizer, int32 accumulation, per-channel requantisation to int8."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mpsearch.quant.config import QuantConfig
from mpsearch.quant.modules import QuantModule
from mpsearch.quant.nna.base import NNAModule
from mpsearch.quant.nna.errors import NNAError
from mpsearch.quant.nna.gradients import grad_wanted
from mpsearch.quant.nna.kernels import (
    act_scale,
    exact_matmul_dtype,
    integer_matmul,
    multipliers,
    requantize_,
)
from mpsearch.quant.nna.numerics import NNANumerics, requantize, saturate

# What a bare nn.Module keeps in its __dict__ (hooks, registries, flags): not quantizer state.
_MODULE_INTERNALS = frozenset(vars(nn.Module()))
_SCALARS = (int, float, str, bool, type(None))


def _code_inputs(module: QuantModule, param: str) -> tuple[tuple[Tensor, ...], tuple] | None:
    """Everything `quantize_int(param)` reads: the weight, the tensors of its quantizer and sparsifier,
    and their other attributes (bit width, options, flags), or None where an attribute is not a plain
    value that can be compared."""
    tensors: list[Tensor] = [getattr(module, param)]
    values: list[Any] = []
    owners = [module.weight_quantizers[param]]
    if param in getattr(module, "weight_sparsifiers", {}):
        owners.append(module.weight_sparsifiers[param])
    for owner in owners:
        for sub in owner.modules():
            tensors.extend(t for t in sub._parameters.values() if t is not None)
            tensors.extend(t for t in sub._buffers.values() if t is not None)
            for key, value in vars(sub).items():
                if key in _MODULE_INTERNALS and key != "training":
                    continue
                if isinstance(value, tuple) and all(isinstance(v, _SCALARS) for v in value) or \
                        isinstance(value, _SCALARS):
                    values.append((key, value))
                else:
                    return None
    return tuple(tensors), tuple(values)


def _same_state(state: tuple[tuple[Tensor, ...], tuple], memo: tuple[tuple[Tensor, ...], tuple]) -> bool:
    (tensors, values), (kept, kept_values) = state, memo
    return values == kept_values and len(tensors) == len(kept) and all(
        t.dtype == k.dtype and t.shape == k.shape and t.device == k.device and torch.equal(t, k)
        for t, k in zip(tensors, kept))


class NNAWeighted(NNAModule, QuantModule):
    """A module with weight sites: codes from each site's own quantizer (symmetric, 2..8 bits)."""

    # The NNA quantizes activations itself (calibrated, linked scales), not with input quantizers.
    quantizes_inputs = False

    @classmethod
    def from_float(cls, module: nn.Module, configs: Mapping[str, QuantConfig | None],
                   numerics: NNANumerics | None = None):
        new = super().from_float(module, configs)
        weight = next(iter(new.parameters()))
        new.init_nna(numerics or NNANumerics(), weight.device)
        return new

    def weight_codes(self, param: str) -> tuple[Tensor, Tensor, int]:
        """(int8 codes, per-output-channel float32 scale of shape (out,), bits) of weight `param`.

        Deriving them (a scale search per channel) costs far more than the integer forward of a
        decoding step, and between training steps nothing changes: they are kept with a copy of
        everything they are computed from and reused while all of it is equal, value for value.
        """
        state = _code_inputs(self, param)
        memos = self.__dict__.setdefault("_weight_code_memos", {})
        memo = memos.get(param)
        if state is not None and memo is not None and _same_state(state, memo[0]):
            return memo[1]
        weight = getattr(self, param)
        quantizer = self.weight_quantizers[param]
        codes, scale, _ = self.quantize_int(param)  # QuantModule.quantize_int: pruned weights at code 0
        result = codes, scale.reshape(-1).expand(weight.shape[0]).to(torch.float32), quantizer.bits
        if state is None:
            memos.pop(param, None)
        else:
            memos[param] = ((tuple(t.detach().clone() for t in state[0]), state[1]), result)
        return result


class _Affine(NNAWeighted):
    """Linear and Conv1d: int32 accumulation, int32 bias, per-channel requantisation to int8."""

    # Linear outputs have channels last; Conv1d outputs (B, C, L) or (C, L) have them at dim -2.
    channels_last: ClassVar[bool] = True

    def integer_params(self) -> dict[str, Tensor]:
        """Everything the chip holds for this layer (int tensors; scales for reference)."""
        codes, w_scale, bits = self.weight_codes("weight")
        in_scale, out_scale = self.in_scales[0], self.out_scale
        acc_scale = in_scale.double() * w_scale.double()
        if self.bias is not None:
            bias = saturate(torch.round(self.bias.detach().double() / acc_scale).to(torch.int64),
                            self.numerics.acc_range)
        else:
            bias = torch.zeros(codes.shape[0], dtype=torch.int64, device=codes.device)
        (m,), shift = multipliers([acc_scale / out_scale.double()], self.numerics, codes.device)
        return {"weight": codes, "weight_scale": w_scale, "bits": torch.tensor(bits), "bias": bias,
                "multiplier": m, "shift": shift}

    def _channels(self, v: Tensor) -> Tensor:
        return v if self.channels_last else v[:, None]

    def forward(self, input: Tensor) -> Tensor:
        if self.check_ready():
            return self.calibration_forward((input,), lambda x: self.float_op(x, self.quantized("weight")))
        p, n = self.integer_params(), self.numerics
        with torch.no_grad():
            acc = self.integer_acc(input, p["weight"]).add_(self._channels(p["bias"])).clamp_(*n.acc_range)
            codes = requantize_(acc, self._channels(p["multiplier"]), self._channels(p["shift"]), n.rounding,
                                n.act_range)
        surrogate = self.float_op(input, self.quantized("weight")) if grad_wanted() else None
        return self.emit(codes, self.out_scale, surrogate)


class NNALinear(_Affine, nn.Linear):
    float_class = nn.Linear

    def float_op(self, x: Tensor, weight: Tensor) -> Tensor:
        return F.linear(x, weight, self.bias)

    def integer_acc(self, input: Tensor, weight_codes: Tensor) -> Tensor:
        """The accumulators (a fresh int64 tensor) of the input codes times the weight codes."""
        table = self.input_table(input)
        if table is not None:
            return table.matmul(weight_codes)
        return integer_matmul(self.input_codes(input, int64=False), weight_codes)


class NNAConv1d(_Affine, nn.Conv1d):
    float_class = nn.Conv1d
    channels_last = False

    @classmethod
    def from_float(cls, module: nn.Module, configs: Mapping[str, QuantConfig | None],
                   numerics: NNANumerics | None = None):
        if getattr(module, "padding_mode", "zeros") != "zeros":
            raise NNAError(f"NNA emulation pads with zero codes only; got padding_mode "
                           f"'{module.padding_mode}'. Pad in the model or keep padding_mode 'zeros'.")
        if isinstance(getattr(module, "padding", 0), str):
            raise NNAError(f"NNA emulation runs Conv1d with integer padding; got padding {module.padding!r}: "
                           "give the padding as a number.")
        return super().from_float(module, configs, numerics)

    def float_op(self, x: Tensor, weight: Tensor) -> Tensor:
        return self._conv_forward(x, weight, self.bias)

    def integer_acc(self, input: Tensor, weight_codes: Tensor) -> Tensor:
        # As matmuls over unfolded windows, so exactness rests on the float64 GEMM alone (a
        # convolution backend may pick FFT or Winograd algorithms, which round).
        codes = self.input_codes(input, int64=False)
        (stride,), (padding,), (dilation,) = self.stride, self.padding, self.dilation
        kernel = weight_codes.shape[-1]
        # In the matmul's operand dtype before the windows are copied out (int8: 8x less to copy).
        dtype = exact_matmul_dtype(weight_codes[0].numel(), codes.device) if self.groups == 1 else torch.float64
        codes = codes.to(dtype)
        x = F.pad(codes, (padding, padding)) if padding else codes
        windows = x.unfold(-1, dilation * (kernel - 1) + 1, stride)[..., ::dilation]  # (..., C, L, k)
        if self.groups == 1:
            out = integer_matmul(windows.transpose(-3, -2).flatten(-2), weight_codes.flatten(1))  # (..., L, O)
            return out.transpose(-1, -2)
        # Group g's outputs read only group g's input channels: one (L, C/G * k) @ (C/G * k, O/G) per group.
        groups, (channels, length) = self.groups, windows.shape[-3:-1]
        grouped = windows.reshape(*windows.shape[:-3], groups, channels // groups, length, kernel)
        grouped = grouped.transpose(-3, -2).flatten(-2).to(torch.float64)  # (..., G, L, C/G * k)
        weights = weight_codes.reshape(groups, -1, weight_codes.shape[1] * kernel).to(torch.float64)
        out = torch.matmul(grouped, weights.transpose(-1, -2)).to(torch.int64)  # (..., G, L, O/G)
        return out.transpose(-1, -2).flatten(-3, -2)


class NNAEmbedding(NNAWeighted, nn.Embedding):
    """Row lookup, then each row's codes requantized from its own scale to one per-tensor int8 scale.

    The output scale is the table's own range (known without data, so rare tokens do not saturate).
    """

    float_class = nn.Embedding
    input_ports = 0

    @classmethod
    def from_float(cls, module: nn.Module, configs: Mapping[str, QuantConfig | None],
                   numerics: NNANumerics | None = None):
        if getattr(module, "max_norm", None) is not None:
            raise NNAError("An Embedding with max_norm renormalises its table in place, which the chip "
                           "cannot follow; remove max_norm.")
        return super().from_float(module, configs, numerics)

    def output_scale(self, uses: list[Any]) -> float:
        codes, w_scale, _ = self.weight_codes("weight")
        peak = float((codes.abs().amax(dim=1).to(torch.float64) * w_scale.double()).max())
        return act_scale(peak, self.numerics)

    def integer_params(self) -> dict[str, Tensor]:
        codes, w_scale, bits = self.weight_codes("weight")
        (m,), shift = multipliers([w_scale.double() / self.out_scale.double()], self.numerics, codes.device)
        return {"weight": codes, "weight_scale": w_scale, "bits": torch.tensor(bits),
                "multiplier": m, "shift": shift}

    def forward(self, input: Tensor) -> Tensor:
        if self.check_ready():
            return self.calibration_forward(
                (), lambda: F.embedding(input, self.quantized("weight"), self.padding_idx), observe=False)
        p = self.integer_params()
        with torch.no_grad():
            rows = p["weight"].to(torch.int64)[input]
            codes = requantize(rows, p["multiplier"][input][..., None], p["shift"][input][..., None],
                               self.numerics.rounding, self.numerics.act_range)
        surrogate = F.embedding(input, self.quantized("weight"), self.padding_idx) if grad_wanted() else None
        return self.emit(codes, self.out_scale, surrogate)

