"""GraphBuilder: ONNX nodes for the accelerator's integer arithmetic, built with `onnx.helper`.

Each method mirrors one primitive of `mpsearch.quant.nna.numerics` on int64 tensors, with standard
operators only, so that onnxruntime computes the integers the reference executor computes:

  saturate         Clip to the signed range
  rounding_shift   x / 2^s rounded as the numerics say. ONNX's BitShift takes unsigned types only, so
                   the arithmetic (floor) shift is floor_div(x, 2^s) = (x - Mod(x, 2^s)) / 2^s: Mod with
                   fmod=0 takes the divisor's (positive) sign, so the difference divides exactly and
                   Div's truncation never rounds. 2^s, 2^(s-1) and the tie constant are computed once,
                   here, from the exported shifts; a shift known only at run time (the LayerNorm's,
                   per row) gets them in the graph, 2^s as BitShift of an unsigned 1.
  requantize       saturate(rounding_shift(acc * M, s))
  requantize_sum   one rounding for sum_i term_i * M_i
  lookup           Gather from the int8 table at code - lo

Products stay below 2^62 (MAX_MULTIPLIER_BITS in numerics), so int64 Mul/Add never wrap.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from mpsearch.onnx.deps import require_onnx
from mpsearch.quant.nna.numerics import NNANumerics

OPSET = 17


@dataclass(frozen=True)
class Shift:
    """The constants of one rounding right shift, as graph value names: 2^s, 2^(s-1) (0 for s = 0), and
    the tie value half_even compares the remainder with (2^(s-1), or -1 where s = 0: no tie to break)."""

    divisor: str
    half: str
    tie: str


def shift_constants(shift: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(2^s, 2^(s-1) or 0, tie) of an integer shift array: the once-for-all part of every rounding."""
    shift = np.asarray(shift, dtype=np.int64)
    divisor = np.left_shift(np.ones_like(shift), shift)
    half = divisor >> 1
    return divisor, half, np.where(half > 0, half, -1)


class GraphBuilder:
    """Nodes and initialisers of one ONNX graph (or Scan body); every method returns its output's name."""

    def __init__(self, numerics: NNANumerics, prefix: str = "") -> None:
        self.onnx = require_onnx()
        self.numerics = numerics
        self.prefix = prefix  # a Scan body's names must not repeat its outer graph's
        self.nodes: list[Any] = []
        self.initializers: list[Any] = []
        self._constants: dict[tuple, str] = {}
        self._used: set[str] = set()

    # --- plumbing ---------------------------------------------------------------------------------
    def fresh(self, hint: str) -> str:
        hint = self.prefix + hint
        name, k = hint, 1
        while name in self._used:
            k += 1
            name = f"{hint}_{k}"
        self._used.add(name)
        return name

    def reserve(self, *names: str) -> None:
        """Names given from outside (graph inputs, Scan body inputs) that no node may take."""
        self._used.update(self.prefix + name for name in names)

    def const(self, value: Any, hint: str = "const", dtype: Any = np.int64) -> str:
        """An initialiser holding `value`, shared by every use of the same array."""
        array = np.asarray(value, dtype=dtype)
        key = (array.dtype.str, array.shape, array.tobytes())
        if key not in self._constants:
            name = self.fresh(hint)
            self.initializers.append(self.onnx.numpy_helper.from_array(array, name))
            self._constants[key] = name
        return self._constants[key]

    def op(self, op_type: str, inputs: Sequence[str], hint: str, outputs: int = 1, **attrs: Any) -> Any:
        names = [self.fresh(hint if outputs == 1 else f"{hint}_{k}") for k in range(outputs)]
        self.nodes.append(self.onnx.helper.make_node(op_type, list(inputs), names, **attrs))
        return names[0] if outputs == 1 else names

    def cast(self, x: str, dtype: int, hint: str) -> str:
        return self.op("Cast", [x], hint, to=dtype)

    def int64(self, x: str, hint: str) -> str:
        return self.cast(x, self.onnx.TensorProto.INT64, hint)

    def named(self, x: str, name: str) -> str:
        """Give value `x` the name `name` too (an Identity), so a module's output can be read by name."""
        return self.op("Identity", [x], name)

    # --- the integer primitives -------------------------------------------------------------------
    def saturate(self, x: str, bounds: tuple[int, int], hint: str) -> str:
        return self.op("Clip", [x, self.const(bounds[0], "lo"), self.const(bounds[1], "hi")], hint)

    def shift(self, shift: Any, hint: str) -> Shift:
        divisor, half, tie = shift_constants(shift)
        return Shift(self.const(divisor, f"{hint}.divisor"), self.const(half, f"{hint}.half"),
                     self.const(tie, f"{hint}.tie"))

    def runtime_shift(self, shift: str, hint: str) -> Shift:
        """The constants of a rounding shift by an int64 tensor `shift` (0 <= s < 63) that the graph computes."""
        uint64 = self.onnx.TensorProto.UINT64
        divisor = self.int64(self.op("BitShift", [self.const(1, f"{hint}.one", np.uint64),
                                                  self.cast(shift, uint64, f"{hint}.unsigned")],
                                     f"{hint}.power", direction="LEFT"), f"{hint}.divisor")
        half = self.op("Div", [divisor, self.const(2)], f"{hint}.half")  # 1 // 2 = 0: nothing to round at s = 0
        tie = self.op("Where", [self.op("Greater", [half, self.const(0)], f"{hint}.rounds"), half, self.const(-1)],
                      f"{hint}.tie")
        return Shift(divisor, half, tie)

    def floor_div(self, x: str, divisor: str, hint: str) -> str:
        exact = self.op("Sub", [x, self.op("Mod", [x, divisor], f"{hint}.rest", fmod=0)], f"{hint}.exact")
        return self.op("Div", [exact, divisor], hint)

    def rounding_shift(self, x: str, s: Shift, hint: str) -> str:
        """x / 2^s rounded as `numerics.rounding_shift` rounds (half_up, half_even, half_away)."""
        rounding = self.numerics.rounding
        if rounding == "half_up":
            return self.floor_div(self.op("Add", [x, s.half], f"{hint}.biased"), s.divisor, hint)
        if rounding == "half_even":
            floor = self.floor_div(x, s.divisor, f"{hint}.floor")
            rest = self.op("Mod", [x, s.divisor], f"{hint}.rest", fmod=0)
            odd = self.op("Equal", [self.op("Mod", [floor, self.const(2)], f"{hint}.parity", fmod=0),
                                    self.const(1)], f"{hint}.odd")
            tie = self.op("And", [self.op("Equal", [rest, s.tie], f"{hint}.at_tie"), odd], f"{hint}.tie_up")
            up = self.op("Or", [self.op("Greater", [rest, s.half], f"{hint}.above"), tie], f"{hint}.up")
            return self.op("Add", [floor, self.int64(up, f"{hint}.carry")], hint)
        # half_away: |x| + half is never negative, so Div's truncation is the floor.
        magnitude = self.op("Div", [self.op("Add", [self.op("Abs", [x], f"{hint}.abs"), s.half], f"{hint}.biased"),
                                    s.divisor], f"{hint}.magnitude")
        negative = self.op("Less", [x, self.const(0)], f"{hint}.negative")
        return self.op("Where", [negative, self.op("Neg", [magnitude], f"{hint}.negated"), magnitude], hint)

    def requantize(self, acc: str, multiplier: Any, shift: Any, bounds: tuple[int, int], hint: str) -> str:
        """saturate(round(acc * M / 2^shift)) with M and shift exported arrays (broadcasting against acc)."""
        product = self.op("Mul", [acc, self.const(multiplier, f"{hint}.multiplier")], f"{hint}.product")
        return self.saturate(self.rounding_shift(product, self.shift(shift, hint), f"{hint}.rounded"), bounds, hint)

    def requantize_sum(self, terms: Sequence[str], multipliers: Sequence[Any], shift: Any,
                       bounds: tuple[int, int], hint: str) -> str:
        """saturate(round(sum_i terms_i * M_i / 2^shift)): one rounding for the whole sum."""
        total = None
        for k, (term, multiplier) in enumerate(zip(terms, multipliers)):
            product = self.op("Mul", [term, self.const(multiplier, f"{hint}.multiplier")], f"{hint}.term{k}")
            total = product if total is None else self.op("Add", [total, product], f"{hint}.sum")
        return self.saturate(self.rounding_shift(total, self.shift(shift, hint), f"{hint}.rounded"), bounds, hint)

    def lookup(self, table: Any, codes: str, hint: str, offset: Any = None) -> str:
        """int64 entries of an exported table at index codes - lo (+ `offset`, per element, for stacked tables)."""
        lo = self.numerics.act_range[0]
        shifted = -lo if offset is None else np.asarray(offset, dtype=np.int64) - lo
        index = self.op("Add", [codes, self.const(shifted, f"{hint}.offset")], f"{hint}.index")
        flat = np.asarray(table).reshape(-1)
        return self.int64(self.op("Gather", [self.const(flat, f"{hint}.table", np.int8), index], f"{hint}.entry"),
                          hint)

    def matmul_integer(self, x8: str, weight: np.ndarray, hint: str) -> str:
        """int8 codes (..., K) times an exported int8 weight (N, K), transposed: the exact int64 sum."""
        weight_t = self.const(np.ascontiguousarray(np.asarray(weight).T), f"{hint}.weight_t", np.int8)
        return self.int64(self.op("MatMulInteger", [x8, weight_t], f"{hint}.acc32"), f"{hint}.acc")

    def to_int8(self, x: str, name: str) -> str:
        """int64 codes already saturated to the activation range -> int8, named `name`."""
        return self.cast(x, self.onnx.TensorProto.INT8, name)

    # --- the finished model -----------------------------------------------------------------------
    def model(self, name: str, inputs: list, outputs: list, metadata: dict[str, str]) -> Any:
        """The checked ONNX model of these nodes, with `metadata` as its properties."""
        helper = self.onnx.helper
        graph = helper.make_graph(self.nodes, name, inputs, outputs, initializer=self.initializers)
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="mpsearch")
        helper.set_model_props(model, metadata)
        self.onnx.checker.check_model(model)
        return model


def export_metadata(model: Any, part: str) -> dict[str, str]:
    """The properties every graph carries: which export it came from, its part, the numerics, the blank."""
    return {"mpsearch.architecture": model.header["architecture"], "mpsearch.part": part,
            "mpsearch.numerics": json.dumps(model.numerics.to_dict()), "mpsearch.blank": "0"}
