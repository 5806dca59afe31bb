"""Quantized GRU and Elman RNN: per-matrix quantizers for weight_ih_l{k}[_reverse] and weight_hh_l{k}[_reverse].

Like QuantLSTM (mpsearch.quant.modules) they adopt the float module's parameters. With weight
quantizers only, the fake-quantized matrices go to the float module's own fused kernel. Once an
activation is quantized (a site with act_bits), the layers run unrolled in Python: the input of each
layer is quantized before its input projection (all timesteps in one matmul) and the hidden state before
every recurrent matmul, with one scale per forward, observed from every state the matmul consumed.
PackedSequence input is padded for the unrolled path and packed again.
"""

from __future__ import annotations

from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence, pad_packed_sequence

from mpsearch.quant.modules import (
    QuantModule,
    _entry,
    _reverse_padded,
    direction_output,
    hidden_state_plan,
)


class _QuantRecurrent(QuantModule):
    float_class: ClassVar[type[nn.RNNBase]]

    def quantizable_weights(self) -> list[str]:
        return [n for n in self._flat_weights_names if n.startswith(("weight_ih", "weight_hh"))]

    def site_name(self, module_name: str, param: str) -> str:
        return f"{module_name}.{param}"

    def cell(self, projected_t: Tensor, recurrent: Tensor, h: Tensor) -> Tensor:
        """The next hidden state from the input projection and the recurrent matmul of one step."""
        raise NotImplementedError

    def forward(self, input, hx=None):
        if not len(self.input_quantizers):
            flat = self._flat_weights
            self._flat_weights = [self.quantized(n) for n in self._flat_weights_names]
            try:
                return self.float_class.forward(self, input, hx)
            finally:
                self._flat_weights = flat
        if isinstance(input, PackedSequence):
            # Padded in the caller's batch order, which is also hx's and h_n's.
            padded, lengths = pad_packed_sequence(input, batch_first=True)
            output, h_n = self._unrolled(padded, hx, lengths)
            return pack_padded_sequence(output, lengths, batch_first=True, enforce_sorted=False), h_n
        batched = input.dim() == 3
        if not batched:
            input = input.unsqueeze(0 if self.batch_first else 1)
            hx = None if hx is None else hx.unsqueeze(1)
        x = input if self.batch_first else input.transpose(0, 1)
        output, h_n = self._unrolled(x, hx, None)
        if not self.batch_first:
            output = output.transpose(0, 1)
        if not batched:
            return output.squeeze(0 if self.batch_first else 1), h_n.squeeze(1)
        return output, h_n

    def _unrolled(self, x: Tensor, hx: Tensor | None, lengths: Tensor | None) -> tuple[Tensor, Tensor]:
        """x: (B, T, F) batch first; lengths: (B,) valid steps (None: all T)."""
        directions = 2 if self.bidirectional else 1
        if hx is None:
            hx = x.new_zeros(self.num_layers * directions, x.shape[0], self.hidden_size)
        steps = x.shape[1]
        mask = None
        if lengths is not None and int(lengths.min()) < steps:
            mask = (torch.arange(steps)[None, :] < lengths[:, None]).to(x.device)
        h_list = []
        for layer in range(self.num_layers):
            outputs = []
            for direction in range(directions):
                suffix = "_reverse" if direction else ""
                y, h = self._run_direction(x, f"l{layer}{suffix}", bool(direction),
                                           hx[layer * directions + direction], mask, lengths)
                outputs.append(y)
                h_list.append(h)
            x = outputs[0] if directions == 1 else torch.cat(outputs, dim=2)
            if self.dropout and self.training and layer < self.num_layers - 1:
                x = F.dropout(x, self.dropout, True)
        return x, torch.stack(h_list)

    def _run_direction(self, x: Tensor, tag: str, reverse: bool, h: Tensor, mask: Tensor | None,
                       lengths: Tensor | None) -> tuple[Tensor, Tensor]:
        ih, hh = f"weight_ih_{tag}", f"weight_hh_{tag}"
        x = self._quantize_input(ih, x)
        if reverse:
            x = _reverse_padded(x, lengths)
        b_ih = getattr(self, f"bias_ih_{tag}") if self.bias else None
        b_hh = getattr(self, f"bias_hh_{tag}") if self.bias else None
        projected = F.linear(x, self.quantized(ih), b_ih)
        w_hh = self.quantized(hh)
        h_quantizer = _entry(self.input_quantizers, hh)
        quantize_h, observe_h, h_scale = hidden_state_plan(h_quantizer, h, self.training)
        h0, outputs = h, []
        for t, projected_t in enumerate(projected.unbind(1)):
            h_in = h_quantizer.fake_quant(h, h_scale) if quantize_h else h
            h_new = self.cell(projected_t, F.linear(h_in, w_hh, b_hh), h)
            h = torch.where(mask[:, t, None], h_new, h) if mask is not None else h_new
            outputs.append(h_new)
        return direction_output(outputs, h0, mask, h_quantizer if observe_h else None, reverse, lengths), h


class QuantGRU(_QuantRecurrent, nn.GRU):
    """nn.GRU with a quantizer per matrix (gate order r, z, n as torch's)."""

    float_class = nn.GRU

    def cell(self, projected_t: Tensor, recurrent: Tensor, h: Tensor) -> Tensor:
        hidden = self.hidden_size
        gates = torch.sigmoid(projected_t[:, :2 * hidden] + recurrent[:, :2 * hidden])
        reset, update = gates[:, :hidden], gates[:, hidden:]
        candidate = torch.tanh(projected_t[:, 2 * hidden:] + reset * recurrent[:, 2 * hidden:])
        return (1 - update) * candidate + update * h


class QuantRNN(_QuantRecurrent, nn.RNN):
    """nn.RNN (tanh or relu) with a quantizer per matrix."""

    float_class = nn.RNN

    def cell(self, projected_t: Tensor, recurrent: Tensor, h: Tensor) -> Tensor:
        pre = projected_t + recurrent
        return torch.tanh(pre) if self.nonlinearity == "tanh" else torch.relu(pre)


RECURRENT_QUANT_MODULES: dict[type[nn.Module], type[QuantModule]] = {nn.GRU: QuantGRU, nn.RNN: QuantRNN}
