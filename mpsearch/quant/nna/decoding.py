"""Greedy transducer decoding on the chip's integers, with everything fixed across frames prepared once.

Decoding calls the prediction network and the joiner once per label on a few rows, so run module by
module the emulation spends its time re-deriving what never changes between calls: weight codes,
multipliers, the add's table composed with the tanh table. `IntegerGreedySteps` builds all of it once
per batch from the calibrated modules and then runs each step as a handful of integer tensor ops:

  embedding   each token's int8 codes, and the first LSTM layer's input terms W_ih x + b (scaled
              by their multiplier): one (vocab, 4H) table, so a label's input is one row lookup
  LSTM        `IntegerCell.step`, the very step the emulated LSTM runs over time
  joiner      the encoder's share of the add's table index for every frame at once; the add's table
              composed with the tanh table (saturated to the activation range, as the output layer
              reads it); per step one gather of the joint codes, one matmul, one requantisation

The integers are those of the module-by-module forward (and so of the reference executor): the same
primitives, the same order of saturations. It applies to the RNN-T's parts (mpsearch.models.rnnt:
Predictor = Embedding -> LSTM -> Linear, Joiner = Add -> tanh -> Linear), which the Conformer's
transducer head shares; for anything else `integer_greedy_steps` returns None and the search runs the
modules' own calls.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from mpsearch.quant.nna.base import NNAModule, grid_checks_on
from mpsearch.quant.nna.kernels import (
    MAX_PRODUCT,
    exact_matmul_dtype,
    integer_matmul,
    lookup,
    matmul_operands,
    requantize_,
)
from mpsearch.quant.nna.layers import NNAEmbedding, NNALinear
from mpsearch.quant.nna.lstm import NNALSTM, IntegerCell
from mpsearch.quant.nna.numerics import requantize, saturate
from mpsearch.quant.nna.ops import NNAAdd, NNALookup

Rows = slice | Tensor


class IntegerAffine:
    """A Linear's integer forward prepared once: input codes (R, K) in `dtype` -> int8 codes (R, N) as int64."""

    def __init__(self, module: NNALinear) -> None:
        p, n = module.integer_params(), module.numerics
        inner = p["weight"].shape[1]
        self.n = n
        self.dtype = exact_matmul_dtype(inner, p["weight"].device)
        self.weight_t = p["weight"].to(self.dtype).t().contiguous()
        self.bias, self.multiplier, self.shift = p["bias"], p["multiplier"], p["shift"]
        # Where no accumulator can reach the saturation bound, (acc + b) * M + half = acc * M + (b * M + half):
        # the bias and the rounding constant fold into one term (int64 holds both products).
        peak = inner * MAX_PRODUCT + int(self.bias.abs().max()) if self.bias.numel() else 0
        self.folded = n.rounding == "half_up" and peak <= n.acc_range[1]
        if self.folded:
            half = (torch.ones_like(self.shift) << self.shift) >> 1
            self.offset = self.bias * self.multiplier + half

    def __call__(self, codes: Tensor) -> Tensor:
        n = self.n
        acc = matmul_operands(codes.to(self.dtype), self.weight_t).to(torch.int64)
        if self.folded:
            return acc.mul_(self.multiplier).add_(self.offset).bitwise_right_shift_(self.shift).clamp_(*n.act_range)
        acc = acc.add_(self.bias).clamp_(*n.acc_range)
        return requantize_(acc, self.multiplier, self.shift, n.rounding, n.act_range)


class IntegerTransducer:
    """The prediction network and joiner of an emulated transducer as the integer tables and prepared
    layers a greedy decoder steps through (see the module docstring)."""

    def __init__(self, predictor: nn.Module, joiner: nn.Module) -> None:
        embed, lstm, proj = predictor.embed, predictor.lstm, predictor.proj
        add, activation, out = joiner.add, joiner.activation, joiner.out
        n = self.n = add.numerics
        lo = n.act_range[0]
        self.bits = n.activation_bits
        # Every token's embedding codes, as NNAEmbedding requantizes each row.
        e = embed.integer_params()
        tokens = requantize(e["weight"].to(torch.int64), e["multiplier"][:, None], e["shift"][:, None],
                            n.rounding, n.act_range)
        self.cells: list[IntegerCell] = []
        self.inputs: list[tuple[Tensor, Tensor]] = []  # layers >= 1: W_ih^T in the cell's dtype, bias
        for layer in range(lstm.num_layers):
            p = lstm.layer_params(layer)
            cell = IntegerCell(p, (lstm.cell_tanh_columns[layer], lstm.hidden_luts[layer]), n)
            self.cells.append(cell)
            if layer == 0:
                acc = integer_matmul(tokens, p["weight_ih"]).add_(p["bias"]).clamp_(*n.acc_range)
                self.token_terms = cell.input_terms(acc)  # (vocab, 4H)
            else:
                self.inputs.append((p["weight_ih"].to(cell.dtype).t().contiguous(), p["bias"]))
        self.hidden = lstm.hidden_size
        self.proj = IntegerAffine(proj)
        # The add's table read through the tanh table, saturated as the output layer takes its input.
        composed = saturate(lookup(activation.lut, add.table - lo), n.act_range)
        self.out = IntegerAffine(out)
        self.joint_values = composed.to(self.out.dtype)

    def encoder_index(self, enc_codes: Tensor) -> Tensor:
        """(B, T, J) encoder codes -> (T, B, J) int32: their part (a - lo) * 2^bits of the add's table index."""
        lo = self.n.act_range[0]
        index = (enc_codes.to(torch.int32) - lo).bitwise_left_shift_(self.bits)
        return index.transpose(0, 1).contiguous()

    def predict(self, terms: Tensor, hs: list[Tensor], cs: list[Tensor]) -> tuple[Tensor, list[Tensor], list[Tensor]]:
        """One predictor step from the first layer's input terms (R, 4H) and each layer's hidden and
        cell codes (R, H) -> the predictor output's part (b - lo) of the add's table index (R, J, int32)
        and the new codes."""
        new_h, new_c = [], []
        h = None
        for layer, cell in enumerate(self.cells):
            if layer:
                weight_t, bias = self.inputs[layer - 1]
                acc = matmul_operands(h.to(cell.dtype), weight_t).to(torch.int64)
                terms = cell.input_terms(acc.add_(bias).clamp_(*self.n.acc_range))
            h, c = cell.step(terms, hs[layer], cs[layer])
            new_h.append(h)
            new_c.append(c)
        codes = self.proj(h)
        return (codes - self.n.act_range[0]).to(torch.int32), new_h, new_c

    def best_labels(self, enc_index: Tensor, pred_index: Tensor) -> Tensor:
        """Argmax of the joiner's int8 logits (first of equals, as for their float values) for each row."""
        index = enc_index + pred_index
        values = torch.index_select(self.joint_values, 0, index.view(-1)).view(index.shape)
        return self.out(values).argmax(dim=-1)


class IntegerGreedySteps:
    """`mpsearch.models.rnnt.GreedySteps` on an `IntegerTransducer`: per-row integer state (hidden
    and cell codes per layer, the predictor output's table index), the encoder's table index for
    every frame prepared at the start."""

    def __init__(self, transducer: IntegerTransducer, enc_codes: Tensor, blank: int) -> None:
        self.t = transducer
        self.frames = transducer.encoder_index(enc_codes)
        batch, device = enc_codes.shape[0], enc_codes.device
        layers, hidden = len(transducer.cells), transducer.hidden
        self.h = torch.zeros(layers, batch, hidden, dtype=transducer.cells[0].dtype, device=device)
        self.c = torch.zeros(layers, batch, hidden, dtype=torch.int64, device=device)
        blanks = torch.full((batch,), blank, dtype=torch.long, device=device)
        self.pred = torch.empty(batch, enc_codes.shape[2], dtype=torch.int32, device=device)
        self.feed(slice(None), blanks)

    def labels(self, frame: int, rows: Rows) -> Tensor:
        return self.t.best_labels(self.frames[frame, rows], self.pred[rows])

    def feed(self, rows: Rows, labels: Tensor) -> None:
        terms = torch.index_select(self.t.token_terms, 0, labels)
        layers = range(len(self.t.cells))
        pred, hs, cs = self.t.predict(terms, [self.h[k, rows] for k in layers], [self.c[k, rows] for k in layers])
        self.pred[rows] = pred
        for k in layers:
            self.h[k, rows] = hs[k]
            self.c[k, rows] = cs[k]


def _linked(consumer: NNAModule, port: int, producer: NNAModule) -> bool:
    """Whether `consumer` reads input `port` on `producer`'s grid, so codes pass between them as they are."""
    return float(consumer.in_scales[port]) == float(producer.out_scale)


def integer_greedy_steps(predictor: nn.Module, joiner: nn.Module, enc_out: Tensor,
                         blank: int) -> IntegerGreedySteps | None:
    """Integer greedy steps for an emulated RNN-T predictor and joiner, or None where these are other
    parts, not all calibrated, not linked producer to consumer, or grid checks are on (those run the
    modules' own calls, which check every input)."""
    parts = {name: getattr(predictor, name, None) for name in ("embed", "lstm", "proj")}
    parts.update({name: getattr(joiner, name, None) for name in ("add", "activation", "out")})
    kinds = {"embed": NNAEmbedding, "lstm": NNALSTM, "proj": NNALinear, "add": NNAAdd, "activation": NNALookup,
             "out": NNALinear}
    if grid_checks_on() or any(not isinstance(parts[name], kind) for name, kind in kinds.items()):
        return None
    # Nothing else computes in them (dropout is an Identity under emulation).
    if any(not isinstance(m, nn.Identity) for name, m in predictor.named_children() if name not in parts):
        return None
    if {name for name, _ in joiner.named_children()} != {"add", "activation", "out"}:
        return None
    modules: list[NNAModule] = list(parts.values())
    if any(m.phase != "frozen" for m in modules) or len({m.numerics for m in modules}) != 1:
        return None
    links = [(parts["lstm"], 0, parts["embed"]), (parts["proj"], 0, parts["lstm"]), (parts["add"], 1, parts["proj"]),
             (parts["activation"], 0, parts["add"]), (parts["out"], 0, parts["activation"])]
    if not all(_linked(*link) for link in links):
        return None
    transducer = IntegerTransducer(predictor, joiner)
    return IntegerGreedySteps(transducer, parts["add"].input_codes(enc_out, 0), blank)

