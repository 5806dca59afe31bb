"""The NNA-emulated GRU: the chip's integer GRU cell, unrolled over time, one or both directions.

Per layer, direction and step, with H hidden units (torch's gate order r, z, n) and every code an integer:
  acc_x = W_ih x + b_ih      int32 at s_x * s_ih[row], for all steps at once
  acc_h = W_hh h + b_hh      int32 at s_h * s_hh[row]
  r, z  = sigmoid LUTs(sat8(round((acc_x * M_x + acc_h * M_h) / 2^shift)))     scale 1/127
  n     = tanh LUT(sat8(round((acc_x * M_x + r * acc_h * M_h) / 2^shift)))     r * acc_h in the wide register
  h     = sat8(round(((127 - z) * n * M_n + z * h * M_z) / 2^shift_h))          1 - z is 127 - z codes
The hidden state is one int8 tensor per layer, read by the recurrence and by the next layer alike. A
bidirectional layer runs its reverse direction on the time-reversed input; both directions' hidden states
share the layer's scale, so their concatenation is one int8 tensor. Gate input ranges are capped where
the tables saturate (8 for sigmoid, 4 for tanh), as the LSTM's are.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils.rnn import PackedSequence

from mpsearch.quant.config import QuantConfig
from mpsearch.quant.nna.directions import LayerDirections
from mpsearch.quant.nna.errors import NNAError
from mpsearch.quant.nna.gradients import straight_through
from mpsearch.quant.nna.kernels import act_scale, integer_matmul, multipliers
from mpsearch.quant.nna.layers import NNAWeighted
from mpsearch.quant.nna.numerics import (
    LUT_FUNCTIONS,
    LUT_INPUT_CAPS,
    NNANumerics,
    build_lut,
    requantize_sum,
    saturate,
)
from mpsearch.quant.recurrent import QuantGRU

# torch's gate order along the 3H rows: reset, update, new (candidate).
GRU_GATES = ("sigmoid", "sigmoid", "tanh")


def bias_codes(bias: Tensor | None, acc_scale: Tensor, rows: int, n: NNANumerics) -> Tensor:
    """A float bias as int32 codes at the accumulator scale (zeros where there is no bias)."""
    if bias is None:
        return torch.zeros(rows, dtype=torch.int64, device=acc_scale.device)
    return saturate(torch.round(bias.detach().double() / acc_scale).to(torch.int64), n.acc_range)


def gru_cell(projected: Tensor, recurrent: Tensor, h: Tensor) -> tuple[Tensor, Tensor]:
    """torch's GRU cell from x W_ih^T + b_ih and h W_hh^T + b_hh: (next h, gate pre-activations (B, 3H))."""
    hidden = h.shape[-1]
    rz_pre = projected[:, :2 * hidden] + recurrent[:, :2 * hidden]
    rz = torch.sigmoid(rz_pre)
    reset, update = rz[:, :hidden], rz[:, hidden:]
    n_pre = projected[:, 2 * hidden:] + reset * recurrent[:, 2 * hidden:]
    return (1 - update) * torch.tanh(n_pre) + update * h, torch.cat([rz_pre, n_pre], dim=1)


def gru_recurrence(acc_x: Tensor, h: Tensor, p: Mapping[str, Tensor], n: NNANumerics) -> Tensor:
    """The chip's GRU cell over all steps of one direction (see the module docstring): input accumulators
    acc_x (T, B, 3H, time first, bias added), initial hidden codes h (B, H) and the direction's
    `NNAGRU.direction_params` -> hidden codes (T, B, H), int64."""
    hidden = h.shape[-1]
    lo, top = n.act_range[0], n.lut_range[1]
    m_x, m_h, shift = p["gate_multipliers"][0], p["gate_multipliers"][1], p["gate_shift"]
    (m_n, m_z), h_shift = p["hidden_multipliers"], p["hidden_shift"]
    luts = p["gate_luts"]
    rz, cand = slice(0, 2 * hidden), slice(2 * hidden, 3 * hidden)
    out = torch.empty(acc_x.shape[0], *h.shape, dtype=torch.int64, device=h.device)
    for t in range(acc_x.shape[0]):
        acc_h = saturate(integer_matmul(h, p["weight_hh"]) + p["bias_hh"], n.acc_range)
        gates = requantize_sum([acc_x[t, :, rz], acc_h[:, rz]], [m_x[rz], m_h[rz]], shift[rz], n.rounding,
                               n.act_range)
        reset = luts[0][gates[:, :hidden] - lo]
        update = luts[1][gates[:, hidden:] - lo]
        n_pre = requantize_sum([acc_x[t, :, cand], reset * acc_h[:, cand]], [m_x[cand], m_h[cand]], shift[cand],
                               n.rounding, n.act_range)
        candidate = luts[2][n_pre - lo]
        h = requantize_sum([(top - update) * candidate, update * h], [m_n, m_z], h_shift, n.rounding, n.act_range)
        out[t] = h
    return out


class NNAGRU(LayerDirections, NNAWeighted, QuantGRU):
    """nn.GRU (one or both directions, any number of layers) computed as the chip computes it; see the
    module docstring.

    Accepts what model code passes nn.GRU: batch_first or not, batched or unbatched, an optional h_0.
    Padded batches only: the reverse direction of a padded utterance starts on its padding (the chip runs
    one utterance unpadded). The `dropout` between layers is not applied: the chip has none.
    """

    float_class = nn.GRU

    @classmethod
    def from_float(cls, module: nn.Module, configs: Mapping[str, QuantConfig | None],
                   numerics: NNANumerics | None = None):
        new = super().from_float(module, configs, numerics)
        device, table = new.weight_ih_l0.device, 1 << new.numerics.activation_bits
        new.register_buffer("gate_scales", torch.ones(new.slots, 3, device=device))
        new.register_buffer("hidden_scales", torch.ones(new.num_layers, device=device))
        new.register_buffer("gate_luts", torch.zeros(new.slots, 3, table, dtype=torch.int64, device=device))
        return new

    def _biases(self, slot: int) -> tuple[Tensor | None, Tensor | None]:
        tag = self._tag(slot)
        return (getattr(self, f"bias_ih_{tag}"), getattr(self, f"bias_hh_{tag}")) if self.bias else (None, None)

    # --- calibration -------------------------------------------------------------------------
    def reset_observations(self) -> None:
        super().reset_observations()
        self._observed_gates = torch.zeros(self.slots, 3, dtype=torch.float64)
        self._observed_hidden = torch.zeros(self.num_layers, dtype=torch.float64)

    def freeze_output(self, uses: list) -> None:
        super().freeze_output(uses)  # raises where calibration saw no data
        n = self.numerics
        for slot in range(self.slots):
            for gate, fn in enumerate(GRU_GATES):
                self.gate_scales[slot, gate] = act_scale(float(self._observed_gates[slot, gate]), n,
                                                         LUT_INPUT_CAPS[fn])
        for layer in range(self.num_layers):
            self.hidden_scales[layer] = act_scale(float(self._observed_hidden[layer]), n)
        # The output is the last layer's hidden state, whose scale the recurrence shares: no use-based range.
        self.out_scale.copy_(self.hidden_scales[-1])

    def prepare(self) -> None:
        n = self.numerics
        for slot in range(self.slots):
            for gate, fn in enumerate(GRU_GATES):
                self.gate_luts[slot, gate] = torch.from_numpy(build_lut(
                    LUT_FUNCTIONS[fn], float(self.gate_scales[slot, gate]), n.unit_scale, n.activation_bits,
                    n.lut_bits))

    # --- integer forward ---------------------------------------------------------------------
    def direction_params(self, slot: int) -> dict[str, Tensor]:
        """Everything the chip holds for one layer-direction (int tensors; scales for reference)."""
        n, hidden, unit = self.numerics, self.hidden_size, self.numerics.unit_scale
        layer = slot // self.directions
        tag = self._tag(slot)
        w_ih, s_ih, bits_ih = self.weight_codes(f"weight_ih_{tag}")
        w_hh, s_hh, bits_hh = self.weight_codes(f"weight_hh_{tag}")
        s_x = (self.in_scales[0] if layer == 0 else self.hidden_scales[layer - 1]).double()
        s_h = self.hidden_scales[layer].double()
        gate = self.gate_scales[slot].double().repeat_interleave(hidden)
        b_ih, b_hh = self._biases(slot)
        # The candidate's recurrent term is r * acc_h: one more factor of the unit scale.
        reset_factor = torch.ones(3 * hidden, dtype=torch.float64, device=gate.device)
        reset_factor[2 * hidden:] = unit
        (m_x, m_h), shift = multipliers([s_x * s_ih.double() / gate, s_h * s_hh.double() * reset_factor / gate],
                                        n, w_ih.device)
        (m_n, m_z), h_shift = multipliers([unit * unit / s_h, unit], n, w_ih.device)
        return {
            "weight_ih": w_ih, "weight_hh": w_hh, "weight_ih_scale": s_ih, "weight_hh_scale": s_hh,
            "bits_ih": torch.tensor(bits_ih), "bits_hh": torch.tensor(bits_hh),
            "bias_ih": bias_codes(b_ih, s_x * s_ih.double(), 3 * hidden, n),
            "bias_hh": bias_codes(b_hh, s_h * s_hh.double(), 3 * hidden, n),
            "gate_multipliers": torch.stack([m_x, m_h]), "gate_shift": shift, "gate_luts": self.gate_luts[slot],
            "hidden_multipliers": torch.stack([m_n, m_z]), "hidden_shift": h_shift,
        }

    def _initial(self, hx: Tensor | None, slot: int, batch: int, like: Tensor) -> Tensor:
        if hx is None:
            return torch.zeros(batch, self.hidden_size, dtype=like.dtype, device=like.device)
        return hx[slot]

    def _calibrate(self, x: Tensor, hx: Tensor | None) -> tuple[Tensor, Tensor]:
        self.see_input(0, x)
        batch, hidden = x.shape[0], self.hidden_size
        h_n = []
        for layer in range(self.num_layers):
            outputs = []
            for direction in range(self.directions):
                slot = layer * self.directions + direction
                tag = self._tag(slot)
                b_ih, b_hh = self._biases(slot)
                projected = F.linear(x.flip(1) if direction else x, self.quantized(f"weight_ih_{tag}"), b_ih)
                w_hh = self.quantized(f"weight_hh_{tag}")
                h = self._initial(hx, slot, batch, x)
                peak = torch.zeros(3, dtype=torch.float64)
                steps = []
                for projected_t in projected.unbind(1):
                    h, pre = gru_cell(projected_t, F.linear(h, w_hh, b_hh), h)
                    per_gate = pre.detach().abs().reshape(batch, 3, hidden).amax(dim=(0, 2))
                    peak = torch.maximum(peak, per_gate.cpu().double())
                    steps.append(h)
                y = torch.stack(steps, dim=1)
                outputs.append(y.flip(1) if direction else y)
                h_n.append(h)
                self._observed_gates[slot] = torch.maximum(self._observed_gates[slot], peak)
            x = torch.cat(outputs, dim=2)
            self._observed_hidden[layer] = max(float(self._observed_hidden[layer]), float(x.detach().abs().max()))
        self.see_output(x, observe=False)
        return x, torch.stack(h_n)

    def _direction(self, x: Tensor, codes: Tensor, slot: int, h0: Tensor, s_h: Tensor) -> tuple[Tensor, Tensor | None]:
        """One layer-direction on time-ordered input (already reversed for a reverse direction): the chip's
        hidden codes (B, T, H) and, when a backward will run, the float cell evaluated at the chip's
        states (straight-through, as the LSTM's surrogate)."""
        n = self.numerics
        p = self.direction_params(slot)
        with torch.no_grad():
            h_q = saturate(torch.round(h0.detach() / s_h).to(torch.int64), n.act_range)
            acc_x = saturate(integer_matmul(codes.transpose(0, 1), p["weight_ih"]) + p["bias_ih"], n.acc_range)
            hs = gru_recurrence(acc_x, h_q, p, n).transpose(0, 1)
        if not torch.is_grad_enabled():
            return hs, None
        tag = self._tag(slot)
        b_ih, b_hh = self._biases(slot)
        projected = F.linear(x, self.quantized(f"weight_ih_{tag}"), b_ih)
        w_hh = self.quantized(f"weight_hh_{tag}")
        chip = hs.to(torch.float32) * s_h
        h, surrogate = h0, []
        for t, projected_t in enumerate(projected.unbind(1)):
            h_f, _ = gru_cell(projected_t, F.linear(h, w_hh, b_hh), h)
            surrogate.append(h_f)
            h = straight_through(chip[:, t], h_f)
        return hs, torch.stack(surrogate, dim=1)

    def _integer(self, x: Tensor, hx: Tensor | None) -> tuple[Tensor, Tensor]:
        batch, hidden = x.shape[0], self.hidden_size
        codes = self.input_codes(x)
        h_n = []
        for layer in range(self.num_layers):
            last = layer == self.num_layers - 1
            # The last layer's output is on out_scale (equal to its hidden scale), so consumers reuse its codes.
            s_h = self.out_scale if last else self.hidden_scales[layer]
            layer_codes, surrogates = [], []
            for direction in range(self.directions):
                slot = layer * self.directions + direction
                flip = (lambda t: t.flip(1)) if direction else (lambda t: t)
                h0 = self._initial(hx, slot, batch, x)
                hs, surrogate = self._direction(flip(x), flip(codes), slot, h0, s_h)
                layer_codes.append(flip(hs))
                surrogates.append(None if surrogate is None else flip(surrogate))
            codes = torch.cat(layer_codes, dim=2)
            x = self.emit(codes, s_h, None if surrogates[0] is None else torch.cat(surrogates, dim=2))
            h_n.append(x[:, -1, :hidden])
            if self.directions == 2:
                h_n.append(x[:, 0, hidden:])
        return x, torch.stack(h_n)

    def forward(self, input, hx=None):
        if isinstance(input, PackedSequence):
            raise NNAError("NNA emulation runs a GRU on padded tensors, not a PackedSequence; pass the padded "
                           "batch.")
        if input.dim() not in (2, 3):
            raise ValueError(f"GRU: Expected input to be 2D or 3D, got {input.dim()}D instead")
        batched = input.dim() == 3
        if not batched:
            input = input.unsqueeze(0 if self.batch_first else 1)
            hx = None if hx is None else hx.unsqueeze(1)
        x = input if self.batch_first else input.transpose(0, 1)
        if self.check_ready():
            y, h_n = self._calibrate(x, hx)
        else:
            y, h_n = self._integer(x, hx)
        output = y if self.batch_first else y.transpose(0, 1)
        if not batched:
            return output.squeeze(0 if self.batch_first else 1), h_n.squeeze(1)
        return output, h_n
