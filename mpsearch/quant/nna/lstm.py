"""The NNA-emulated LSTM: the chip's integer cell, unrolled over time.

Per layer and step, with H hidden units and every code an integer:
  acc_x = W_ih x + bias   (int32; bias at the accumulator scale s_x * s_wih[r], precomputed for all steps)
  acc_h = W_hh h          (int32)
  pre   = sat8(round((acc_x * M_ih[r] + acc_h * M_hh[r]) / 2^shift[r]))     one scale per gate
  i, f, o = sigmoid LUTs(pre), g = tanh LUT(pre)                             scale 1/127
  c     = sat16(round((f * c * M_fc + i * g * M_ig) / 2^shift_c))            cell state, int16
  h     = sat8(round(o * tanhLUT(sat8(round(c * M_ct / 2^shift_ct))) * M_h / 2^shift_h))
The hidden state h is one int8 tensor, read by the recurrence and by the next layer alike. A
bidirectional layer runs the same cell on the time-reversed input with its own weights and scales; both
directions' hidden states share the layer's scale, so their concatenation is one int8 tensor. Gate and
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
from mpsearch.quant.nna.codes import attach_codes
from mpsearch.quant.nna.directions import LayerDirections
from mpsearch.quant.nna.errors import NNAError
from mpsearch.quant.nna.kernels import (
    MAX_PRODUCT,
    act_scale,
    exact_matmul_dtype,
    integer_matmul,
    lookup,
    matmul_operands,
    multipliers,
)
from mpsearch.quant.nna.layers import NNAWeighted
from mpsearch.quant.nna.numerics import (
    LUT_FUNCTIONS,
    LUT_INPUT_CAPS,
    NNANumerics,
    build_lut,
    lut_inputs,
    requantize,
    rounding_shift,
    saturate,
)
from mpsearch.quant.parts import MIN_SCALE
from mpsearch.quant.rounding import rounding_half

# PyTorch's gate order along the 4H rows: input, forget, cell candidate, output.
GATE_FUNCTIONS = ("sigmoid", "sigmoid", "tanh", "sigmoid")


class NNALSTM(LayerDirections, NNAWeighted, QuantLSTM):
    """nn.LSTM (no proj_size; one or both directions) computed as the chip computes it; see the module
    docstring. Per-direction buffers are indexed by slot = layer * directions + direction.

    Accepts what the model code passes nn.LSTM: batch_first or not, batched or unbatched, an
    optional (h_0, c_0) that an NNA LSTM returned before (its codes are recovered exactly). The
    `dropout` between layers is not applied: the chip has none. The reverse direction of a padded
    utterance starts on its padding (the chip runs one utterance unpadded).
    """

    float_class = nn.LSTM

    @classmethod
    def from_float(cls, module: nn.Module, configs: Mapping[str, QuantConfig | None],
                   numerics: NNANumerics | None = None):
        if isinstance(module, nn.LSTM) and module.proj_size:
            raise NNAError("NNA emulation runs LSTMs without proj_size; use proj_size 0 (a Linear after the "
                           "LSTM projects the same way).")
        new = super().from_float(module, configs, numerics)
        layers, slots, device = new.num_layers, new.slots, new.weight_ih_l0.device
        for name, shape, dtype in (
            ("gate_scales", (slots, 4), torch.float32), ("cell_scales", (slots,), torch.float32),
            ("cell_tanh_scales", (slots,), torch.float32), ("hidden_scales", (layers,), torch.float32),
            ("gate_luts", (slots, 4, 1 << new.numerics.activation_bits), torch.int64),
            ("cell_luts", (slots, 1 << new.numerics.activation_bits), torch.int64),
            ("cell_multipliers", (slots, 2), torch.int64), ("cell_shift", (slots,), torch.int64),
            ("cell_tanh_multiplier", (slots,), torch.int64), ("cell_tanh_shift", (slots,), torch.int64),
            ("hidden_multiplier", (slots,), torch.int64), ("hidden_shift", (slots,), torch.int64),
        ):
            new.register_buffer(name, torch.ones(shape, dtype=dtype, device=device))
        # Derived from those by prepare(), so not saved: per slot, the two tables of `step_tables`.
        n = new.numerics
        for name, size in (("cell_tanh_columns", 1 << n.cell_state_bits),
                           ("hidden_luts", 1 << (2 * n.lut_bits))):
            new.register_buffer(name, torch.zeros(slots, size, dtype=torch.int64, device=device),
                                persistent=False)
        return new

    # --- calibration -------------------------------------------------------------------------
    def reset_observations(self) -> None:
        super().reset_observations()
        self._observed_gates = torch.zeros(self.slots, 4, dtype=torch.float64)
        self._observed_cell = torch.zeros(self.slots, dtype=torch.float64)
        self._observed_hidden = torch.zeros(self.num_layers, dtype=torch.float64)

    def freeze_output(self, uses: list) -> None:
        # The output is the last layer's hidden state, whose scale the recurrence shares: no use-based range.
        if not self._calls:
            raise NNAError(f"'{self.nna_name}' saw no data during calibration; calibrate with batches that "
                           "run every part of the model (a forward that computes the loss does).")
        n = self.numerics
        for layer in range(self.slots):  # a slot is a layer-direction
            for gate, fn in enumerate(GATE_FUNCTIONS):
                self.gate_scales[layer, gate] = act_scale(float(self._observed_gates[layer, gate]), n,
                                                          LUT_INPUT_CAPS[fn])
            cell = float(self._observed_cell[layer])
            self.cell_scales[layer] = max(cell / n.cell_range[1], MIN_SCALE)
            self.cell_tanh_scales[layer] = act_scale(cell, n, LUT_INPUT_CAPS["tanh"])
        for layer in range(self.num_layers):
            self.hidden_scales[layer] = act_scale(float(self._observed_hidden[layer]), n)
        self.out_scale.copy_(self.hidden_scales[-1])

    def prepare(self) -> None:
        n, unit, device = self.numerics, self.numerics.unit_scale, self.gate_scales.device
        for layer in range(self.slots):  # a slot is a layer-direction
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
            hidden_scale = self.hidden_scales[layer // self.directions].double()
            (m_h,), shift = multipliers([unit * unit / hidden_scale], n, device)
            self.hidden_multiplier[layer], self.hidden_shift[layer] = m_h, shift
            self.cell_tanh_columns[layer], self.hidden_luts[layer] = step_tables(
                self.cell_luts[layer], m_ct, self.cell_tanh_shift[layer], m_h, shift, n)

    def _calibrate(self, x: Tensor, hx: tuple[Tensor, Tensor] | None):
        self.see_input(0, x)
        h_n, c_n = [], []
        for layer in range(self.num_layers):
            outputs = []
            for direction in range(self.directions):
                y, h, c = self._calibrate_direction(x.flip(1) if direction else x, layer * self.directions + direction,
                                                    hx)
                outputs.append(y.flip(1) if direction else y)
                h_n.append(h)
                c_n.append(c)
            x = outputs[0] if self.directions == 1 else torch.cat(outputs, dim=2)
            hidden_peak = float(x.detach().abs().max())
            self._observed_hidden[layer] = max(float(self._observed_hidden[layer]), hidden_peak)
        self.see_output(x, observe=False)
        return x, torch.stack(h_n), torch.stack(c_n)

    def _calibrate_direction(self, x: Tensor, slot: int, hx: tuple[Tensor, Tensor] | None):
        """The float layer-direction `slot` on time-ordered input, observing its gate and cell ranges."""
        batch, hidden, tag = x.shape[0], self.hidden_size, self._tag(slot)
        h, c = self._initial_float(hx, slot, batch, x)
        projected = F.linear(x, self.quantized(f"weight_ih_{tag}"), self._float_bias(slot))
        w_hh_t = self.quantized(f"weight_hh_{tag}").t()
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
        self._observed_gates[slot] = torch.maximum(self._observed_gates[slot], gate_peak.cpu().double())
        self._observed_cell[slot] = max(float(self._observed_cell[slot]), float(cell_peak))
        return torch.stack(outputs, dim=1), h, c

    # --- integer forward ---------------------------------------------------------------------
    def layer_params(self, layer: int, direction: int = 0) -> dict[str, Tensor]:
        """Everything the chip holds for one layer-direction (int tensors; scales for reference)."""
        n, hidden = self.numerics, self.hidden_size
        slot = layer * self.directions + direction
        w_ih, s_ih, bits_ih = self.weight_codes(f"weight_ih_{self._tag(slot)}")
        w_hh, s_hh, bits_hh = self.weight_codes(f"weight_hh_{self._tag(slot)}")
        s_x = self.in_scales[0] if layer == 0 else self.hidden_scales[layer - 1]
        gate = self.gate_scales[slot].double().repeat_interleave(hidden)
        acc_scale = s_x.double() * s_ih.double()
        bias = self._float_bias(slot)
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
            "gate_luts": self.gate_luts[slot], "cell_lut": self.cell_luts[slot],
            "cell_multipliers": self.cell_multipliers[slot], "cell_shift": self.cell_shift[slot],
            "cell_tanh_multiplier": self.cell_tanh_multiplier[slot],
            "cell_tanh_shift": self.cell_tanh_shift[slot],
            "hidden_multiplier": self.hidden_multiplier[slot], "hidden_shift": self.hidden_shift[slot],
        }

    def _integer(self, x: Tensor, hx: tuple[Tensor, Tensor] | None):
        grad = torch.is_grad_enabled()
        codes = self.input_codes(x)
        h_n, c_n = [], []
        for layer in range(self.num_layers):
            last = layer == self.num_layers - 1
            # The last layer's output is on out_scale (equal to its hidden scale), so consumers reuse its codes.
            s_h = self.out_scale if last else self.hidden_scales[layer]
            outputs, layer_codes = [], []
            for direction in range(self.directions):
                flip = (lambda t: t.flip(1)) if direction else (lambda t: t)
                y, hidden_codes, c_last = self._integer_direction(flip(x), flip(codes), layer, direction, hx, s_h,
                                                                  grad)
                outputs.append(flip(y))
                layer_codes.append(flip(hidden_codes))
                h_n.append(y[:, -1])
                c_n.append(c_last)
            x = outputs[0] if self.directions == 1 else torch.cat(outputs, dim=2)
            codes = layer_codes[0] if self.directions == 1 else torch.cat(layer_codes, dim=2)
            if last:
                attach_codes(x, codes, s_h, self.numerics.act_range)
        return x, torch.stack(h_n), torch.stack(c_n)

    def _integer_direction(self, x: Tensor, codes: Tensor, layer: int, direction: int,
                           hx: tuple[Tensor, Tensor] | None, s_h: Tensor, grad: bool):
        """One layer-direction on time-ordered input and its codes: (hidden values, hidden codes, last cell
        value); with `grad` the values carry the float cell's gradient at the chip's states."""
        n = self.numerics
        slot = layer * self.directions + direction
        p = self.layer_params(layer, direction)
        s_c = self.cell_scales[slot]
        h, c = self._initial_float(hx, slot, x.shape[0], x)
        with torch.no_grad():
            h_q = saturate(torch.round(h.detach() / s_h).to(torch.int64), n.act_range)
            c_q = saturate(torch.round(c.detach() / s_c).to(torch.int64), n.cell_range)
            # Time first, so each step's input terms are one contiguous block.
            acc_x = integer_matmul(codes.transpose(0, 1), p["weight_ih"])
            acc_x = acc_x.add_(p["bias"]).clamp_(*n.acc_range)
            tables = self.cell_tanh_columns[slot], self.hidden_luts[slot]
            codes, cells = integer_recurrence(acc_x, h_q, c_q, p, tables, n, all_cells=grad)
            y = self.emit(codes, s_h, None)
            c_values = self.emit(cells, s_c, None)
        if not grad:
            return y, codes, c_values
        projected = F.linear(x, self.quantized(f"weight_ih_{self._tag(slot)}"), self._float_bias(slot))
        w_hh = self.quantized(f"weight_hh_{self._tag(slot)}")
        # The float cell evaluated at the chip's states carries the gradient (straight-through).
        y, c_last = SurrogateLSTMLayer.apply(projected, w_hh, h, c, y, c_values)
        return y, codes, c_last

    # --- shared ------------------------------------------------------------------------------
    def _float_bias(self, slot: int) -> Tensor | None:
        if not self.bias:
            return None
        return getattr(self, f"bias_ih_{self._tag(slot)}") + getattr(self, f"bias_hh_{self._tag(slot)}")

    def _initial_float(self, hx, slot: int, batch: int, like: Tensor) -> tuple[Tensor, Tensor]:
        if hx is None:
            zeros = torch.zeros(batch, self.hidden_size, dtype=like.dtype, device=like.device)
            return zeros, zeros
        return hx[0][slot], hx[1][slot]

    def forward(self, input, hx=None):
        if isinstance(input, PackedSequence):
            raise NNAError("NNA emulation runs an LSTM on padded tensors, not a PackedSequence; pass the "
                           "padded batch.")
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


def step_tables(cell_lut: Tensor, m_ct: Tensor, ct_shift: Tensor, m_h: Tensor, h_shift: Tensor,
                n: NNANumerics) -> tuple[Tensor, Tensor]:
    """The two tables that take a step from the new cell state to the hidden state, built by the
    primitives the executor computes it with. Entry c - cell_lo of the first is tanh(c)'s code minus
    lut_lo: cell_lut[c8 - lo] - lut_lo with c8 = sat8(round(c * M_ct / 2^shift_ct)). Entry
    (o - lut_lo) * 2^lut_bits + (t - lut_lo) of the second is h = sat8(round(o * t * M_h / 2^shift_h))."""
    device = cell_lut.device
    cells = torch.from_numpy(lut_inputs(n.cell_state_bits)).to(device)
    tanh_codes = lookup(cell_lut, requantize(cells, m_ct, ct_shift, n.rounding, n.act_range) - n.act_range[0])
    lut_codes = torch.from_numpy(lut_inputs(n.lut_bits)).to(device)
    hidden = requantize(lut_codes[:, None] * lut_codes[None, :], m_h, h_shift, n.rounding, n.act_range)
    return tanh_codes - n.lut_range[0], hidden.reshape(-1)


class IntegerCell:
    """One layer's integer LSTM cell prepared for stepping (see the module docstring): everything that
    is the same at every step (multipliers, rounding constants, the gate tables laid out for one
    lookup, the recurrent weights in the matmul's operand dtype) is built once, so a step is only the
    per-step arithmetic, on int64 in place, and the new cell state reaches the hidden state by two
    lookups: the cell table gives tanh(c)'s column in the hidden table, o's gate table (shifted here)
    its row. The same integers as the primitives of `numerics` compose.

    `p` is the layer's `NNALSTM.layer_params`, `tables` its `step_tables`.
    """

    def __init__(self, p: Mapping[str, Tensor], tables: tuple[Tensor, Tensor], n: NNANumerics) -> None:
        rows, hidden = p["weight_hh"].shape
        device = p["weight_hh"].device
        self.n, self.hidden = n, hidden
        (self.m_ih, self.m_hh), self.gate_shift = p["gate_multipliers"], p["gate_shift"]
        self.gate_half = rounding_half(self.gate_shift)
        self.m_fc, self.m_ig = (int(v) for v in p["cell_multipliers"])
        self.cell_shift = int(p["cell_shift"])
        table = 1 << n.activation_bits
        # Gate k's table starts at k * table in the flattened (4, table) LUT; the offset also removes lo.
        self.offsets = torch.arange(rows, device=device) // hidden * table - n.act_range[0]
        luts = p["gate_luts"].clone()
        luts[3] = (luts[3] - n.lut_range[0]) << n.lut_bits  # o as its row offset in the hidden table
        self.luts = luts.reshape(-1)
        self.tanh_columns, hidden_lut = tables
        self.dtype = exact_matmul_dtype(hidden, device)
        self.w_hh_t = p["weight_hh"].to(self.dtype).t().contiguous()
        self.hidden_codes = hidden_lut.to(self.dtype)
        # W_hh h can exceed the accumulator only for narrow accumulators.
        self.acc_saturates = hidden * MAX_PRODUCT > n.acc_range[1]

    def input_terms(self, acc_x: Tensor) -> Tensor:
        """The input accumulators (a fresh int64 tensor, scaled in place) as a step adds them:
        times their multiplier, with half_up's rounding constant riding on them."""
        terms = acc_x.mul_(self.m_ih)
        if self.n.rounding == "half_up":
            terms += self.gate_half
        return terms

    def step(self, x_terms: Tensor, h: Tensor, c_q: Tensor, out: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """One step: input terms (B, 4H), hidden codes h (B, H) in `dtype`, cell codes c_q (B, H, int64)
        -> the new (h, c_q); h is written into `out` when given."""
        n, hidden = self.n, self.hidden
        lo, hi = n.act_range
        pre = matmul_operands(h, self.w_hh_t).to(torch.int64)
        if self.acc_saturates:
            pre.clamp_(*n.acc_range)
        pre = pre.mul_(self.m_hh).add_(x_terms)
        # half_up's constant rides on the input terms already (`input_terms`).
        pre = rounding_shift(pre, self.gate_shift, n.rounding, in_place=True,
                             half=0 if n.rounding == "half_up" else self.gate_half)
        gates = lookup(self.luts, pre.clamp_(lo, hi).add_(self.offsets))
        i, f, g, o = gates.split(hidden, dim=1)
        total = torch.addcmul((i * g).mul_(self.m_ig), f, c_q, value=self.m_fc)
        c_q = rounding_shift(total, self.cell_shift, n.rounding, in_place=True).clamp_(*n.cell_range)
        index = lookup(self.tanh_columns, c_q - n.cell_range[0]).add_(o).view(-1)
        h = torch.index_select(self.hidden_codes, 0, index, out=None if out is None else out.view(-1))
        return h.view(c_q.shape), c_q


def integer_recurrence(acc_x: Tensor, h_q: Tensor, c_q: Tensor, p: Mapping[str, Tensor],
                       tables: tuple[Tensor, Tensor], n: NNANumerics, all_cells: bool) -> tuple[Tensor, Tensor]:
    """The chip's LSTM cell over all steps of one layer, from the input accumulators acc_x (T, B, 4H,
    time first; a fresh int64 tensor, scaled in place), the initial codes h_q, c_q (B, H) and the
    layer's `step_tables`: an `IntegerCell` stepped T times, the input terms of every step scaled at once.

    Returns the hidden codes (B, T, H), in the recurrent matmul's operand dtype (`exact_matmul_dtype`),
    and the int64 cell codes (B, T, H) if `all_cells`, else the last (B, H).
    """
    steps, batch = acc_x.shape[:2]
    cell = IntegerCell(p, tables, n)
    x_terms = cell.input_terms(acc_x)
    hs = torch.empty(steps, batch, cell.hidden, dtype=cell.dtype, device=acc_x.device)
    cs = torch.empty(steps, batch, cell.hidden, dtype=torch.int64, device=acc_x.device) if all_cells else None
    h = h_q.to(cell.dtype)
    for t in range(steps):
        h, c_q = cell.step(x_terms[t], h, c_q, out=hs[t])
        if all_cells:
            cs[t] = c_q
    return hs.transpose(0, 1).contiguous(), (cs.transpose(0, 1).contiguous() if all_cells else c_q)


class SurrogateLSTMLayer(torch.autograd.Function):
    """The chip's hidden and cell states forward, the float LSTM cell's gradients backward.

    apply(projected (B, T, 4H) = x W_ih^T + b, w_hh (4H, H), h0, c0 (B, H), hidden values (B, T, H),
    cell values (B, T, H)) -> (hidden values, last cell value). Step t's float cell is evaluated at the
    chip's states h_{t-1}, c_{t-1}, and each chip state takes the gradient of the float state it
    stands for (straight-through), as an unrolled `h = chip + (h_f - h_f.detach())` would: all
    float cells at once forward, and one small matmul per step backward instead of an autograd
    graph of a dozen nodes per step.
    """

    @staticmethod
    def forward(ctx, projected: Tensor, w_hh: Tensor, h0: Tensor, c0: Tensor, hidden_values: Tensor,
                cell_values: Tensor) -> tuple[Tensor, Tensor]:
        hidden = w_hh.shape[1]
        h_prev = torch.cat([h0[:, None].to(hidden_values.dtype), hidden_values[:, :-1]], dim=1)
        c_prev = torch.cat([c0[:, None].to(cell_values.dtype), cell_values[:, :-1]], dim=1)
        gates = torch.matmul(h_prev, w_hh.t()).add_(projected)
        sig = torch.sigmoid(gates)
        i, f, o = sig[..., :hidden], sig[..., hidden:2 * hidden], sig[..., 3 * hidden:]
        g = torch.tanh(gates[..., 2 * hidden:3 * hidden])
        tanh_c = torch.tanh(f * c_prev + i * g)
        # d h_f / d c_f, d h_f / d o_pre, and d c_f / d (i, f, g)_pre: the per-step backward multiplies.
        dh_dc = o * (1 - tanh_c * tanh_c)
        dh_do = tanh_c * o * (1 - o)
        dc_dgates = torch.cat([g * i * (1 - i), c_prev * f * (1 - f), i * (1 - g * g)], dim=-1)
        ctx.save_for_backward(w_hh, h_prev, f, dh_dc, dh_do, dc_dgates)
        ctx.h0_shape, ctx.c0_shape = h0.shape, c0.shape
        return hidden_values.view_as(hidden_values), cell_values[:, -1].clone()

    @staticmethod
    def backward(ctx, grad_hidden: Tensor | None, grad_cell: Tensor | None):
        w_hh, h_prev, f, dh_dc, dh_do, dc_dgates = ctx.saved_tensors
        batch, steps, hidden = h_prev.shape
        if grad_hidden is None:
            grad_hidden = torch.zeros_like(h_prev)
        d_gates = torch.empty(batch, steps, 4 * hidden, dtype=h_prev.dtype, device=h_prev.device)
        dh_rec = torch.zeros(batch, hidden, dtype=h_prev.dtype, device=h_prev.device)
        dc_rec = grad_cell.clone() if grad_cell is not None else torch.zeros_like(dh_rec)
        for t in range(steps - 1, -1, -1):
            dh = grad_hidden[:, t] + dh_rec
            dc = torch.addcmul(dc_rec, dh, dh_dc[:, t])
            step_grads = d_gates[:, t]
            torch.mul(dc.repeat(1, 3), dc_dgates[:, t], out=step_grads[:, :3 * hidden])
            torch.mul(dh, dh_do[:, t], out=step_grads[:, 3 * hidden:])
            dc_rec = dc * f[:, t]
            dh_rec = step_grads @ w_hh
        flat = d_gates.reshape(-1, 4 * hidden)
        grad_w_hh = flat.t() @ h_prev.reshape(-1, hidden) if ctx.needs_input_grad[1] else None
        grad_h0 = dh_rec.reshape(ctx.h0_shape) if ctx.needs_input_grad[2] else None
        grad_c0 = dc_rec.reshape(ctx.c0_shape) if ctx.needs_input_grad[3] else None
        return d_gates, grad_w_hh, grad_h0, grad_c0, None, None


def _float_cell(gates: Tensor, c: Tensor, hidden: int) -> tuple[Tensor, Tensor]:
    # One sigmoid over all four gates is fewer kernel launches than three slices.
    sig = torch.sigmoid(gates)
    g = torch.tanh(gates[:, 2 * hidden:3 * hidden])
    c = sig[:, hidden:2 * hidden] * c + sig[:, :hidden] * g
    return sig[:, 3 * hidden:] * torch.tanh(c), c
