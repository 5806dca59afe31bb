"""Quantized drop-in modules that keep the original float parameters.

Each Quant* class subclasses the float module it replaces and adopts its parameters, buffers and
attributes unchanged, so parameter names (and therefore state dicts) stay those of the float model,
fine-tuning starts from the float weights, and `find_sites` finds the same sites on a quantized model.
Quantizers sit beside the parameters in ModuleDicts keyed by parameter name:
`weight_quantizers[param]` fake-quantizes that weight on every forward, `input_quantizers[param]`
fake-quantizes the activation entering that weight's matmul, and `weight_sparsifiers[param]` (when the
config asks for sparsity) masks the quantized weight: the weight used is mask * Q(W), so pruned weights
are exact zeros whatever the quantizer's grid.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import _VF, Tensor, nn
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence, pad_packed_sequence

from mpsearch.errors import PolicyError
from mpsearch.quant.config import QuantConfig
from mpsearch.quant.quantizers import make_activation_quantizer, make_weight_quantizer
from mpsearch.quant.sparsity import make_sparsifier

RECURRENT_PATHS = ("auto", "fused", "unrolled")


class QuantModule:
    """Mixin for the quantized modules: quantizer bookkeeping shared by all of them."""

    float_class: ClassVar[type[nn.Module]]
    # False where the module's input is not an activation (an Embedding's indices).
    quantizes_inputs: ClassVar[bool] = True

    weight_quantizers: nn.ModuleDict
    input_quantizers: nn.ModuleDict
    weight_sparsifiers: nn.ModuleDict

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.weight_quantizers = nn.ModuleDict()
        self.input_quantizers = nn.ModuleDict()
        self.weight_sparsifiers = nn.ModuleDict()

    @classmethod
    def from_float(cls, module: nn.Module, configs: Mapping[str, QuantConfig | None]):
        """Adopt `module`'s parameters (the same tensors, not copies) and quantize them per `configs`.

        `configs` maps a parameter name ("weight", "weight_ih_l0", ...) to its QuantConfig, or None to
        keep it float; parameters not named stay float.
        """
        if not isinstance(module, cls.float_class):
            raise PolicyError(f"{cls.__name__}.from_float needs an {cls.float_class.__name__}; "
                              f"got {type(module).__name__}.")
        new = cls.__new__(cls)
        # Shallow copies of the module's tables: the parameters are shared, the new module's own
        # registrations (the quantizers) do not leak into the old one.
        new.__dict__.update({k: copy.copy(v) if isinstance(v, (dict, list, set)) else v
                             for k, v in module.__dict__.items()})
        for table in ("weight_quantizers", "input_quantizers", "weight_sparsifiers"):
            nn.Module.__setattr__(new, table, nn.ModuleDict())
        new.set_quantizers(configs)
        return new

    def set_quantizers(self, configs: Mapping[str, QuantConfig | None]) -> None:
        """(Re)build the quantizers of the parameters named in `configs` (None removes them)."""
        for param, cfg in configs.items():
            weight = getattr(self, param, None)
            if not isinstance(weight, Tensor):
                raise PolicyError(f"{type(self).__name__} has no weight '{param}'; valid weights: "
                                  f"{', '.join(self.quantizable_weights())}.")
            for table in (self.weight_quantizers, self.input_quantizers, self.weight_sparsifiers):
                if param in table:
                    del table[param]
            if cfg is None:
                continue
            self.weight_quantizers[param] = make_weight_quantizer(cfg, weight)
            sparsifier = make_sparsifier(cfg, weight)
            if sparsifier is not None:
                self.weight_sparsifiers[param] = sparsifier.to(device=weight.device)
            act = make_activation_quantizer(cfg) if self.quantizes_inputs else None
            if act is not None:
                self.input_quantizers[param] = act.to(device=weight.device)

    def quantizable_weights(self) -> list[str]:
        return ["weight"]

    def site_name(self, module_name: str, param: str) -> str:
        """The Site name (as find_sites gives it) of one of this module's weights."""
        return module_name

    def quantized(self, param: str) -> Tensor:
        """The fake-quantized (and masked, if sparse) value of weight `param` (the float weight if it is
        not quantized)."""
        weight = getattr(self, param)
        quantizer = _entry(self.weight_quantizers, param)
        value = weight if quantizer is None else quantizer(weight)
        sparsifier = _entry(self.weight_sparsifiers, param)
        return value if sparsifier is None else sparsifier(value)

    @torch.no_grad()
    def quantize_int(self, param: str) -> tuple[Tensor, Tensor, Tensor]:
        """(int8 codes, scale, zero point) of quantized weight `param` as deployed: pruned weights hold the
        zero point's code, so (codes - zero_point) * scale is exactly the weight the module computes with."""
        codes, scale, zero_point = self.weight_quantizers[param].quantize_int(getattr(self, param))
        sparsifier = _entry(self.weight_sparsifiers, param)
        if sparsifier is not None:
            codes = torch.where(sparsifier.mask, codes, zero_point)
        return codes, scale, zero_point

    def _quantize_input(self, param: str, x: Tensor) -> Tensor:
        return self.input_quantizers[param](x) if param in self.input_quantizers else x


class QuantLinear(QuantModule, nn.Linear):
    float_class = nn.Linear

    def forward(self, input: Tensor) -> Tensor:
        return F.linear(self._quantize_input("weight", input), self.quantized("weight"), self.bias)


class QuantConv1d(QuantModule, nn.Conv1d):
    float_class = nn.Conv1d

    def forward(self, input: Tensor) -> Tensor:
        return self._conv_forward(self._quantize_input("weight", input), self.quantized("weight"), self.bias)


class QuantEmbedding(QuantModule, nn.Embedding):
    """Embedding with a quantized table. Its input is indices, so `act_bits` does not apply to it."""

    float_class = nn.Embedding
    quantizes_inputs = False

    @classmethod
    def from_float(cls, module: nn.Module, configs: Mapping[str, QuantConfig | None]):
        if getattr(module, "max_norm", None) is not None:
            raise PolicyError("An Embedding with max_norm renormalises its table in place, which a quantized "
                              "table cannot follow; remove max_norm or keep this site float (null).")
        return super().from_float(module, configs)

    def forward(self, input: Tensor) -> Tensor:
        return F.embedding(input, self.quantized("weight"), self.padding_idx, self.max_norm,
                           self.norm_type, self.scale_grad_by_freq, self.sparse)


class QuantLSTM(QuantModule, nn.LSTM):
    """nn.LSTM with per-matrix quantizers for weight_ih_l{k}[_reverse] and weight_hh_l{k}[_reverse].

    Two recurrent paths, chosen by `recurrent_path` ("auto" by default):
    - fused: the weights are fake-quantized once per forward and handed to the same fused kernel
      nn.LSTM uses (torch._VF.lstm), one call for all layers, or one per layer when layer inputs are
      quantized. Possible while nothing inside the recurrence is quantized.
    - unrolled: input projections for all timesteps in one matmul, then a Python loop over time for
      the recurrent part, quantizing the hidden state before every W_hh matmul. Needed when a
      weight_hh site has act_bits (and for a bidirectional LSTM with quantized layer inputs); this is
      also where integer (NNA) emulation of the gates will go.
    "auto" picks fused when it can. Both accept what nn.LSTM accepts: batch_first or not, unbatched
    input, an optional (h_0, c_0), PackedSequence (the unrolled path pads it, masks the state past
    each sequence's end and packs the output again), bidirectional, proj_size (weight_hr stays float).
    """

    float_class = nn.LSTM
    recurrent_path: str = "auto"

    def quantizable_weights(self) -> list[str]:
        return [n for n in self._flat_weights_names if n.startswith(("weight_ih", "weight_hh"))]

    def site_name(self, module_name: str, param: str) -> str:
        return f"{module_name}.{param}"

    def _needs_unrolled(self) -> bool:
        quantized_inputs = list(self.input_quantizers.keys())
        if any(name.startswith("weight_hh") for name in quantized_inputs):
            return True
        return self.bidirectional and bool(quantized_inputs)

    def _path(self) -> str:
        if self.recurrent_path not in RECURRENT_PATHS:
            raise PolicyError(f"Unknown recurrent_path '{self.recurrent_path}'; valid choices: "
                              f"{', '.join(RECURRENT_PATHS)}.")
        needs_unrolled = self._needs_unrolled()
        if self.recurrent_path == "fused" and needs_unrolled:
            raise PolicyError("The fused LSTM path cannot quantize the hidden state inside the recurrence; "
                              "set recurrent_path to 'auto' or 'unrolled', or drop act_bits on weight_hh sites.")
        if self.recurrent_path == "auto":
            return "unrolled" if needs_unrolled else "fused"
        return self.recurrent_path

    def _zeros_state(self, batch: int, like: Tensor) -> tuple[Tensor, Tensor]:
        layers = self.num_layers * (2 if self.bidirectional else 1)
        out_size = self.proj_size if self.proj_size > 0 else self.hidden_size
        return (torch.zeros(layers, batch, out_size, dtype=like.dtype, device=like.device),
                torch.zeros(layers, batch, self.hidden_size, dtype=like.dtype, device=like.device))

    def forward(self, input, hx=None):
        path = self._path()
        if isinstance(input, PackedSequence):
            data, batch_sizes, sorted_indices, unsorted_indices = input
            if hx is None:
                hx = self._zeros_state(int(batch_sizes[0]), data)
            else:
                hx = self.permute_hidden(hx, sorted_indices)
            if path == "fused":
                output, h_n, c_n = self._fused(data, batch_sizes, hx)
            else:
                # Without its permutation the packed batch pads in sorted order, matching hx.
                padded, lengths = pad_packed_sequence(PackedSequence(data, batch_sizes), batch_first=True)
                output, h_n, c_n = self._unrolled(padded, hx, lengths)
                output = pack_padded_sequence(output, lengths, batch_first=True).data
            packed = PackedSequence(output, batch_sizes, sorted_indices, unsorted_indices)
            return packed, self.permute_hidden((h_n, c_n), unsorted_indices)

        if input.dim() not in (2, 3):
            raise ValueError(f"LSTM: Expected input to be 2D or 3D, got {input.dim()}D instead")
        batched = input.dim() == 3
        batch_dim = 0 if self.batch_first else 1
        if not batched:
            input = input.unsqueeze(batch_dim)
            if hx is not None:
                hx = (hx[0].unsqueeze(1), hx[1].unsqueeze(1))
        if hx is None:
            hx = self._zeros_state(input.shape[batch_dim], input)
        self.check_forward_args(input, hx, None)
        if path == "fused":
            output, h_n, c_n = self._fused(input, None, hx)
        else:
            x = input if self.batch_first else input.transpose(0, 1)
            output, h_n, c_n = self._unrolled(x, hx, None)
            if not self.batch_first:
                output = output.transpose(0, 1)
        if not batched:
            return output.squeeze(batch_dim), (h_n.squeeze(1), c_n.squeeze(1))
        return output, (h_n, c_n)

    def _quantized_flat_weights(self) -> list[Tensor]:
        return [self.quantized(name) for name in self._flat_weights_names]

    def _fused_call(self, x: Tensor, batch_sizes: Tensor | None, hx: tuple[Tensor, Tensor],
                    weights: list[Tensor], num_layers: int, dropout: float):
        if batch_sizes is None:
            return _VF.lstm(x, hx, weights, self.bias, num_layers, dropout, self.training,
                            self.bidirectional, self.batch_first)
        return _VF.lstm(x, batch_sizes, hx, weights, self.bias, num_layers, dropout, self.training,
                        self.bidirectional)

    def _fused(self, x: Tensor, batch_sizes: Tensor | None, hx: tuple[Tensor, Tensor]):
        weights = self._quantized_flat_weights()
        if not len(self.input_quantizers):
            output, h_n, c_n = self._fused_call(x, batch_sizes, hx, weights, self.num_layers, self.dropout)
            return output, h_n, c_n
        # One call per layer so each layer's input can be quantized on its way in.
        directions = 2 if self.bidirectional else 1
        per_layer = len(weights) // self.num_layers
        h_list, c_list = [], []
        for layer in range(self.num_layers):
            x = self._quantize_input(f"weight_ih_l{layer}", x)
            span = slice(layer * directions, (layer + 1) * directions)
            x, h, c = self._fused_call(x, batch_sizes, (hx[0][span], hx[1][span]),
                                       weights[layer * per_layer:(layer + 1) * per_layer], 1, 0.0)
            if self.dropout and self.training and layer < self.num_layers - 1:
                x = F.dropout(x, self.dropout, True)
            h_list.append(h)
            c_list.append(c)
        return x, torch.cat(h_list), torch.cat(c_list)

    def _unrolled(self, x: Tensor, hx: tuple[Tensor, Tensor], lengths: Tensor | None):
        """x: (B, T, F) batch first; lengths: (B,) valid steps (None: all T)."""
        steps = x.shape[1]
        mask = None
        if lengths is not None and int(lengths.min()) < steps:
            mask = torch.arange(steps)[None, :] < lengths[:, None]
            mask = mask.to(x.device)
        directions = 2 if self.bidirectional else 1
        h_list, c_list = [], []
        for layer in range(self.num_layers):
            outputs = []
            for direction in range(directions):
                index = layer * directions + direction
                y, h, c = self._run_direction(x, layer, direction == 1, hx[0][index], hx[1][index], mask, lengths)
                outputs.append(y)
                h_list.append(h)
                c_list.append(c)
            x = outputs[0] if directions == 1 else torch.cat(outputs, dim=2)
            if self.dropout and self.training and layer < self.num_layers - 1:
                x = F.dropout(x, self.dropout, True)
        return x, torch.stack(h_list), torch.stack(c_list)

    def _run_direction(self, x: Tensor, layer: int, reverse: bool, h: Tensor, c: Tensor,
                       mask: Tensor | None, lengths: Tensor | None):
        suffix = "_reverse" if reverse else ""
        ih, hh = f"weight_ih_l{layer}{suffix}", f"weight_hh_l{layer}{suffix}"
        x = self._quantize_input(ih, x)
        if reverse:
            x = _reverse_padded(x, lengths)
        bias = getattr(self, f"bias_ih_l{layer}{suffix}") + getattr(self, f"bias_hh_l{layer}{suffix}") \
            if self.bias else None
        # Input projections of every timestep at once; only the recurrent matmul stays in the loop.
        projected = F.linear(x, self.quantized(ih), bias)
        w_hh_t = self.quantized(hh).t()
        w_hr_t = getattr(self, f"weight_hr_l{layer}{suffix}").t() if self.proj_size > 0 else None

        h_quantizer = _entry(self.input_quantizers, hh)
        quantize_h, observe_h, h_scale = hidden_state_plan(h_quantizer, h, self.training)
        hidden = self.hidden_size
        outputs = []
        h0 = h
        # unbind, not projected[:, t]: each slice's backward would allocate and add a full-size gradient.
        for t, projected_t in enumerate(projected.unbind(1)):
            h_in = h_quantizer.fake_quant(h, h_scale) if quantize_h else h
            gates = torch.addmm(projected_t, h_in, w_hh_t)
            # One sigmoid over all four gates is fewer kernel launches than three slices.
            sig = torch.sigmoid(gates)
            g = torch.tanh(gates[:, 2 * hidden:3 * hidden])
            c_new = sig[:, hidden:2 * hidden] * c + sig[:, :hidden] * g
            h_new = sig[:, 3 * hidden:] * torch.tanh(c_new)
            if w_hr_t is not None:
                h_new = h_new @ w_hr_t
            if mask is not None:
                valid = mask[:, t, None]
                h = torch.where(valid, h_new, h)
                c = torch.where(valid, c_new, c)
            else:
                h, c = h_new, c_new
            outputs.append(h_new)
        return direction_output(outputs, h0, mask, h_quantizer if observe_h else None, reverse, lengths), h, c


def hidden_state_plan(quantizer: nn.Module | None, h: Tensor, training: bool) -> tuple[bool, bool, Tensor | None]:
    """(quantize the hidden state, observe its range, the one scale for every step) of a recurrent
    matrix whose input quantizer is `quantizer` (None: not quantized)."""
    if quantizer is None:
        return False, False, None
    quantize = quantizer.initialized and not quantizer.calibrating
    observe = quantizer.calibrating or (not quantizer.frozen and (training or not quantizer.initialized))
    return quantize, observe, quantizer.scale(h) if quantize else None


def direction_output(outputs: list[Tensor], h0: Tensor, mask: Tensor | None, observer: nn.Module | None,
                     reverse: bool, lengths: Tensor | None) -> Tensor:
    """The (B, T, H) output of one direction from its per-step states: padding zeroed, in input order.

    `observer` (the hidden-state quantizer, when it observes) gets one range update per forward from
    every state the recurrent matmul consumed; it used the range as it was before this batch.
    """
    y = torch.stack(outputs, dim=1)
    if mask is not None:
        y = y * mask[:, :, None]
    if observer is not None:
        seen = y[mask] if mask is not None else y.reshape(-1, y.shape[-1])
        observer.observe(torch.cat([h0.detach(), seen.detach()]))
    return _reverse_padded(y, lengths) if reverse else y


def _entry(table: nn.ModuleDict, key: str) -> nn.Module | None:
    # nn.ModuleDict has no get().
    try:
        return table[key]
    except KeyError:
        return None


def _reverse_padded(x: Tensor, lengths: Tensor | None) -> Tensor:
    """Reverse each sequence of a (B, T, F) batch within its own length; padding stays in place."""
    if lengths is None:
        return x.flip(1)
    steps = x.shape[1]
    t = torch.arange(steps)[None, :]
    lengths = lengths.to(torch.long)[:, None]
    index = torch.where(t < lengths, lengths - 1 - t, t).to(x.device)
    return x.gather(1, index[:, :, None].expand_as(x))


# Float module class -> its quantized replacement.
QUANT_MODULES: dict[type[nn.Module], type[QuantModule]] = {
    nn.Linear: QuantLinear,
    nn.Conv1d: QuantConv1d,
    nn.Embedding: QuantEmbedding,
    nn.LSTM: QuantLSTM,
}
