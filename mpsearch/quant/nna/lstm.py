"""The NNA-emulated LSTM: the chip's integer cell, unrolled over time.

Per layer and step, with H hidden units and every code an integer:
  acc_x = W_ih x + bias   (int32; bias at the accumulator scale s_x * s_wih[r], precomputed for all steps)
  acc_h = W_hh h          (int32)
  pre   = sat8(round((acc_x * M_ih[r] + acc_h * M_hh[r]) / 2^shift[r]))     one scale per gate
  i, f, o = sigmoid LUTs(pre), g = tanh LUT(pre)                             scale 1/127
  c     = sat16(round((f * c * M_fc + i * g * M_ig) / 2^shift_c))            cell state, int16
  h     = sat8(round(o * tanhLUT(sat8(round(c * M_ct / 2^shift_ct))) * M_h / 2^shift_h))
The hidden state h is one int8 tensor, read by the recurrence and by the next layer alike. Gate and
cell-to-tanh input ranges are capped where the LUT output is already saturated (8 for sigmoid, 4 for
tanh): beyond that the table returns +-127 anyway, so the cap only buys resolution.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils.rnn import PackedSequence

from mpsearch.quant.config import QuantConfig
from mpsearch.quant.modules import QuantLSTM
from mpsearch.quant.nna.errors import NNAError
from mpsearch.quant.nna.modules import NNAWeighted, act_scale, integer_matmul, multipliers
from mpsearch.quant.nna.numerics import (
    LUT_FUNCTIONS,
    LUT_INPUT_CAPS,
    NNANumerics,
    build_lut,
    requantize,
    requantize_sum,
    saturate,
)
from mpsearch.quant.parts import MIN_SCALE

# PyTorch's gate order along the 4H rows: input, forget, cell candidate, output.
GATE_FUNCTIONS = ("sigmoid", "sigmoid", "tanh", "sigmoid")


class NNALSTM(NNAWeighted, QuantLSTM):
    """Unidirectional nn.LSTM (no proj_size) computed as the chip computes it; see the module docstring.

    Accepts what the model code passes nn.LSTM: batch_first or not, batched or unbatched, an
    optional (h_0, c_0) that an NNA LSTM returned before (its codes are recovered exactly). The
    `dropout` between layers is not applied: the chip has none.
    """

    float_class = nn.LSTM

    @classmethod
    def from_float(cls, module: nn.Module, configs: Mapping[str, QuantConfig | None],
                   numerics: NNANumerics | None = None):
        if isinstance(module, nn.LSTM) and (module.bidirectional or module.proj_size):
            raise NNAError("NNA emulation runs unidirectional LSTMs without proj_size; "
                           "use a streaming (unidirectional) LSTM with proj_size 0.")
        new = super().from_float(module, configs, numerics)
        layers, device = new.num_layers, new.weight_ih_l0.device
        for name, shape, dtype in (
            ("gate_scales", (layers, 4), torch.float32), ("cell_scales", (layers,), torch.float32),
            ("cell_tanh_scales", (layers,), torch.float32), ("hidden_scales", (layers,), torch.float32),
            ("gate_luts", (layers, 4, 1 << new.numerics.activation_bits), torch.int64),
            ("cell_luts", (layers, 1 << new.numerics.activation_bits), torch.int64),
            ("cell_multipliers", (layers, 2), torch.int64), ("cell_shift", (layers,), torch.int64),
            ("cell_tanh_multiplier", (layers,), torch.int64), ("cell_tanh_shift", (layers,), torch.int64),
            ("hidden_multiplier", (layers,), torch.int64), ("hidden_shift", (layers,), torch.int64),
        ):
            new.register_buffer(name, torch.ones(shape, dtype=dtype, device=device))
        return new

    # --- calibration -------------------------------------------------------------------------
    def reset_observations(self) -> None:
        super().reset_observations()
        self._observed_gates = torch.zeros(self.num_layers, 4, dtype=torch.float64)
        self._observed_cell = torch.zeros(self.num_layers, dtype=torch.float64)
        self._observed_hidden = torch.zeros(self.num_layers, dtype=torch.float64)

    def freeze_output(self, uses: list) -> None:
        # The output is the last layer's hidden state, whose scale the recurrence shares: no use-based range.
        if not self._calls:
            raise NNAError(f"'{self.nna_name}' saw no data during calibration; calibrate with batches that "
                           "run every part of the model (a forward that computes the loss does).")
        n = self.numerics
        for layer in range(self.num_layers):
            for gate, fn in enumerate(GATE_FUNCTIONS):
                self.gate_scales[layer, gate] = act_scale(float(self._observed_gates[layer, gate]), n,
                                                          LUT_INPUT_CAPS[fn])
            cell = float(self._observed_cell[layer])
            self.cell_scales[layer] = max(cell / n.cell_range[1], MIN_SCALE)
            self.cell_tanh_scales[layer] = act_scale(cell, n, LUT_INPUT_CAPS["tanh"])
            self.hidden_scales[layer] = act_scale(float(self._observed_hidden[layer]), n)
        self.out_scale.copy_(self.hidden_scales[-1])

    def prepare(self) -> None:
        n, unit, device = self.numerics, self.numerics.unit_scale, self.gate_scales.device
        for layer in range(self.num_layers):
            for gate, fn in enumerate(GATE_FUNCTIONS):
                self.gate_luts[layer, gate] = torch.from_numpy(build_lut(
                    LUT_FUNCTIONS[fn], float(self.gate_scales[layer, gate]), unit, n.activation_bits,
                    n.lut_bits))
            self.cell_luts[layer] = torch.from_numpy(build_lut(
                LUT_FUNCTIONS["tanh"], float(self.cell_tanh_scales[layer]), unit, n.activation_bits,
                n.lut_bits))
            cell = self.cell_scales[layer].double()
            # f * c has scale unit * s_c and i * g has unit^2; both land on s_c.
            (m_fc, m_ig), shift = multipliers([unit, unit * unit / cell], n, device)
            self.cell_multipliers[layer] = torch.stack([m_fc, m_ig])
            self.cell_shift[layer] = shift
            (m_ct,), shift = multipliers([cell / self.cell_tanh_scales[layer].double()], n, device)
            self.cell_tanh_multiplier[layer], self.cell_tanh_shift[layer] = m_ct, shift
            (m_h,), shift = multipliers([unit * unit / self.hidden_scales[layer].double()], n, device)
            self.hidden_multiplier[layer], self.hidden_shift[layer] = m_h, shift

    def _calibrate(self, x: Tensor, hx: tuple[Tensor, Tensor] | None):
        self.see_input(0, x)
        batch, hidden = x.shape[0], self.hidden_size
        h_n, c_n = [], []
        for layer in range(self.num_layers):
            h, c = self._initial_float(hx, layer, batch, x)
            projected = F.linear(x, self.quantized(f"weight_ih_l{layer}"), self._float_bias(layer))
            w_hh_t = self.quantized(f"weight_hh_l{layer}").t()
            gate_peak = torch.zeros(4, dtype=x.dtype, device=x.device)
            cell_peak = torch.zeros((), dtype=x.dtype, device=x.device)
            outputs = []
            for projected_t in projected.unbind(1):
                gates = projected_t + h @ w_hh_t
                per_gate = gates.detach().abs().reshape(batch, 4, hidden).amax(dim=(0, 2))
                gate_peak = torch.maximum(gate_peak, per_gate)
                h, c = _float_cell(gates, c, hidden)
                cell_peak = torch.maximum(cell_peak, c.detach().abs().max())
                outputs.append(h)
            x = torch.stack(outputs, dim=1)
            self._observed_gates[layer] = torch.maximum(self._observed_gates[layer], gate_peak.cpu().double())
            self._observed_cell[layer] = max(float(self._observed_cell[layer]), float(cell_peak))
            hidden_peak = float(x.detach().abs().max())
            self._observed_hidden[layer] = max(float(self._observed_hidden[layer]), hidden_peak)
            h_n.append(h)
            c_n.append(c)
        self.see_output(x, observe=False)
        return x, torch.stack(h_n), torch.stack(c_n)

    # --- integer forward ---------------------------------------------------------------------
    def layer_params(self, layer: int) -> dict[str, Tensor]:
        """Everything the chip holds for one layer (int tensors; scales for reference)."""
        n, hidden = self.numerics, self.hidden_size
        w_ih, s_ih, bits_ih = self.weight_codes(f"weight_ih_l{layer}")
        w_hh, s_hh, bits_hh = self.weight_codes(f"weight_hh_l{layer}")
        s_x = self.in_scales[0] if layer == 0 else self.hidden_scales[layer - 1]
        gate = self.gate_scales[layer].double().repeat_interleave(hidden)
        acc_scale = s_x.double() * s_ih.double()
        bias = self._float_bias(layer)
        if bias is None:
            bias_codes = torch.zeros(4 * hidden, dtype=torch.int64, device=w_ih.device)
        else:
            bias_codes = torch.round(bias.detach().double() / acc_scale).to(torch.int64)
            bias_codes = saturate(bias_codes, n.acc_range)
        (m_ih, m_hh), shift = multipliers(
            [acc_scale / gate, self.hidden_scales[layer].double() * s_hh.double() / gate], n, w_ih.device)
        return {
            "weight_ih": w_ih, "weight_hh": w_hh, "weight_ih_scale": s_ih, "weight_hh_scale": s_hh,
            "bits_ih": torch.tensor(bits_ih), "bits_hh": torch.tensor(bits_hh), "bias": bias_codes,
            "gate_multipliers": torch.stack([m_ih, m_hh]), "gate_shift": shift,
            "gate_luts": self.gate_luts[layer], "cell_lut": self.cell_luts[layer],
            "cell_multipliers": self.cell_multipliers[layer], "cell_shift": self.cell_shift[layer],
            "cell_tanh_multiplier": self.cell_tanh_multiplier[layer],
            "cell_tanh_shift": self.cell_tanh_shift[layer],
            "hidden_multiplier": self.hidden_multiplier[layer], "hidden_shift": self.hidden_shift[layer],
        }

    def _integer(self, x: Tensor, hx: tuple[Tensor, Tensor] | None):
        n, hidden = self.numerics, self.hidden_size
        lo, table = n.act_range[0], 1 << n.activation_bits
        batch = x.shape[0]
        grad = torch.is_grad_enabled()
        codes = self.input_codes(x)
        h_n, c_n = [], []
        for layer in range(self.num_layers):
            p = self.layer_params(layer)
            s_h, s_c = self.hidden_scales[layer], self.cell_scales[layer]
            h, c = self._initial_float(hx, layer, batch, x)
            with torch.no_grad():
                h_q = saturate(torch.round(h.detach() / s_h).to(torch.int64), n.act_range)
                c_q = saturate(torch.round(c.detach() / s_c).to(torch.int64), n.cell_range)
                acc_x = saturate(integer_matmul(codes, p["weight_ih"]) + p["bias"], n.acc_range)
                # Gate k's table starts at k * table in the flattened (4, table) LUT.
                offsets = torch.arange(4 * hidden, device=x.device) // hidden * table - lo
                luts = p["gate_luts"].reshape(-1)
            if grad:
                projected = F.linear(x, self.quantized(f"weight_ih_l{layer}"), self._float_bias(layer))
                w_hh_t = self.quantized(f"weight_hh_l{layer}").t()
            outputs, floats = [], []
            for t in range(x.shape[1]):
                with torch.no_grad():
                    acc_h = saturate(integer_matmul(h_q, p["weight_hh"]), n.acc_range)
                    pre = requantize_sum([acc_x[:, t], acc_h], list(p["gate_multipliers"]), p["gate_shift"],
                                         n.rounding, n.act_range)
                    i, f, g, o = luts[pre + offsets].chunk(4, dim=-1)
                    c_q = requantize_sum([f * c_q, i * g], list(p["cell_multipliers"]), p["cell_shift"],
                                         n.rounding, n.cell_range)
                    c8 = requantize(c_q, p["cell_tanh_multiplier"], p["cell_tanh_shift"], n.rounding,
                                    n.act_range)
                    h_q = requantize(o * p["cell_lut"][c8 - lo], p["hidden_multiplier"], p["hidden_shift"],
                                     n.rounding, n.act_range)
                outputs.append(h_q)
                if grad:
                    # The float cell evaluated at the chip's states carries the gradient.
                    h_f, c_f = _float_cell(projected[:, t] + h @ w_hh_t, c, hidden)
                    h, c = self.emit(h_q, s_h, h_f), self.emit(c_q, s_c, c_f)
                    floats.append(h)
            codes = torch.stack(outputs, dim=1)
            x = torch.stack(floats, dim=1) if grad else self.emit(codes, s_h, None)
            if not grad:
                h, c = self.emit(h_q, s_h, None), self.emit(c_q, s_c, None)
            h_n.append(h)
            c_n.append(c)
        return x, torch.stack(h_n), torch.stack(c_n)

    # --- shared ------------------------------------------------------------------------------
    def _float_bias(self, layer: int) -> Tensor | None:
        if not self.bias:
            return None
        return getattr(self, f"bias_ih_l{layer}") + getattr(self, f"bias_hh_l{layer}")

    def _initial_float(self, hx, layer: int, batch: int, like: Tensor) -> tuple[Tensor, Tensor]:
        if hx is None:
            zeros = torch.zeros(batch, self.hidden_size, dtype=like.dtype, device=like.device)
            return zeros, zeros
        return hx[0][layer], hx[1][layer]

    def forward(self, input, hx=None):
        if isinstance(input, PackedSequence):
            raise NNAError("NNA emulation runs an LSTM on padded tensors, not a PackedSequence; pass the "
                           "padded batch (a unidirectional LSTM never lets padding reach valid frames).")
        if input.dim() not in (2, 3):
            raise ValueError(f"LSTM: Expected input to be 2D or 3D, got {input.dim()}D instead")
        batched = input.dim() == 3
        if not batched:
            input = input.unsqueeze(0 if self.batch_first else 1)
            if hx is not None:
                hx = (hx[0].unsqueeze(1), hx[1].unsqueeze(1))
        x = input if self.batch_first else input.transpose(0, 1)
        if hx is not None:
            self.check_forward_args(input, hx, None)
        if self.check_ready():
            y, h_n, c_n = self._calibrate(x, hx)
        else:
            y, h_n, c_n = self._integer(x, hx)
        output = y if self.batch_first else y.transpose(0, 1)
        if not batched:
            return output.squeeze(0 if self.batch_first else 1), (h_n.squeeze(1), c_n.squeeze(1))
        return output, (h_n, c_n)


def _float_cell(gates: Tensor, c: Tensor, hidden: int) -> tuple[Tensor, Tensor]:
    # One sigmoid over all four gates is fewer kernel launches than three slices.
    sig = torch.sigmoid(gates)
    g = torch.tanh(gates[:, 2 * hidden:3 * hidden])
    c = sig[:, hidden:2 * hidden] * c + sig[:, :hidden] * g
    return sig[:, 3 * hidden:] * torch.tanh(c), c
