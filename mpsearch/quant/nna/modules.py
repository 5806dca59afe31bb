"""NNA-emulated modules: every forward computes the accelerator's exact integer result.

Tensors between modules are dequantized floats, code * scale, where the scale is the producer's
frozen output scale; `calibrate_nna` links each consumer's input scale to its producer's (the same
float32 value), so the consumer recovers the exact code as round(x / scale): x is code * scale
rounded once to float32, so x / scale is off the code by at most |code| * 2^-24 < 2^-8 (codes are at
most 16 bits). A module returns

    code * out_scale + (surrogate - surrogate.detach())

whose value is the integer result and whose gradient is the float surrogate's (straight-through):
the loss sees the chip's errors, the weights get the usual QAT gradients. Matmuls run as int8 GEMMs
with int32 accumulators on CPU, elsewhere as float matmuls of integer-valued tensors (float32 while
|int8 * int8 * K| <= 2^24, else float64, exact below 2^53); requantisation and lookup tables run on
int64 tensors with the primitives of `numerics`, shared with the reference executor. An add's result
is a function of its two input codes alone, so it is a lookup in a table of every code pair, built by
those primitives (see `TableCodes`). Output codes ride along on the emitted tensor, so a consumer
reads them back without dividing by the scale.

Phases: "new" (apply() made it; using it raises), "calibrating" (float forward that observes ranges
and traces which module produced each input), "frozen" (integer forward).
"""

from __future__ import annotations

import contextlib
import functools
import time
from collections.abc import Iterator, Mapping
from typing import Any, ClassVar, NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mpsearch.quant.config import QuantConfig
from mpsearch.quant.modules import QuantModule
from mpsearch.quant.nna.errors import NNAError
from mpsearch.quant.nna.numerics import (
    LUT_FUNCTIONS,
    LUT_INPUT_CAPS,
    NNANumerics,
    build_lut,
    lut_inputs,
    quantize_multipliers,
    requantize,
    requantize_sum,
    saturate,
)
from mpsearch.quant.parts import MIN_SCALE

PHASES = ("new", "calibrating", "frozen")
# Inputs recovered from a producer must sit this close to its grid when grid checks are on.
GRID_TOLERANCE = 1e-3
_checks = {"grid": False}


def act_scale(absmax: float, numerics: NNANumerics, cap: float | None = None) -> float:
    """Per-tensor scale of a signed activation observed up to |x| <= absmax (capped at `cap`)."""
    peak = min(absmax, cap) if cap is not None else absmax
    return max(peak / numerics.act_range[1], MIN_SCALE)


def to_numpy64(x: Tensor | float) -> np.ndarray:
    if isinstance(x, Tensor):
        return x.detach().to("cpu", torch.float64).numpy()
    return np.asarray(x, dtype=np.float64)


def multipliers(reals: list[Tensor | float], numerics: NNANumerics,
                device: torch.device) -> tuple[list[Tensor], Tensor]:
    """`quantize_multipliers` on torch scales: int64 multipliers and shifts on `device`."""
    ms, shift = quantize_multipliers([to_numpy64(r) for r in reals], numerics.multiplier_bits)
    return [torch.from_numpy(m).to(device) for m in ms], torch.from_numpy(shift).to(device)


# Operands of the integer matmuls are int8 codes (activations and weights are at most 8 bits), so
# every product is at most 2^14 in magnitude.
MAX_PRODUCT = 1 << 14
# float32 holds every integer up to 2^24: a matmul whose partial sums stay below that is exact in
# float32 whatever order the GEMM sums in (each product is exact, each partial sum an integer).
FLOAT32_EXACT = 1 << 24
INT32_MAX = (1 << 31) - 1


@functools.cache
def int8_gemm_is_faster() -> bool:
    """Whether this CPU's int8 GEMM (torch._int_mm) beats float32 on a matmul of the emulation's size.

    With VNNI-class instructions it is several times faster; without them torch falls back to a
    reference kernel tens of times slower than float32. Measured once per process (milliseconds), since
    no torch flag tells the two apart; both are exact, so the choice changes speed only.
    """
    g = torch.Generator().manual_seed(0)
    a = torch.randint(-128, 128, (32, 128), generator=g, dtype=torch.int8)
    b = torch.randint(-128, 128, (128, 128), generator=g, dtype=torch.int8)
    a32, b32 = a.to(torch.float32), b.to(torch.float32)

    def best_of(fn) -> float:
        fn()
        times = []
        for _ in range(3):
            start = time.perf_counter()
            fn()
            times.append(time.perf_counter() - start)
        return min(times)

    return best_of(lambda: torch._int_mm(a, b)) < best_of(lambda: torch.matmul(a32, b32))


def exact_matmul_dtype(inner: int, device: torch.device) -> torch.dtype:
    """The cheapest operand dtype in which an int8 x int8 matmul over `inner` terms is exact: on a CPU
    whose int8 GEMM is fast, int8 itself (int32 accumulators, exact while no sum can reach 2^31), else
    float32 while every partial sum stays below 2^24, else float64 (exact below 2^53)."""
    if device.type == "cpu" and inner * MAX_PRODUCT <= INT32_MAX and int8_gemm_is_faster():
        return torch.int8
    if inner * MAX_PRODUCT > FLOAT32_EXACT or torch.is_autocast_enabled(device.type):
        return torch.float64
    # Reduced-precision float32 GEMMs (TF32, bf16 passes) round the operands; only full fp32 is exact.
    if torch.get_float32_matmul_precision() != "highest":
        return torch.float64
    if device.type == "cuda" and torch.backends.cuda.matmul.allow_tf32:
        return torch.float64
    return torch.float32


def matmul_operands(a: Tensor, b: Tensor, out: Tensor | None = None) -> Tensor:
    """a (..., K) @ b (K, N) for operands in an `exact_matmul_dtype`: int8 ones by the int8 GEMM
    (torch._int_mm, int32 results), others by torch.matmul (results in their dtype)."""
    if a.dtype != torch.int8:
        return torch.matmul(a, b, out=out)
    flat = torch._int_mm(a.reshape(-1, a.shape[-1]), b, out=None if out is None else out.view(-1, b.shape[1]))
    return flat.view(*a.shape[:-1], b.shape[1])


def integer_matmul(codes: Tensor, weight_codes: Tensor) -> Tensor:
    """codes (..., K) @ weight_codes (N, K)^T exactly, as a fresh int64 tensor."""
    dtype = exact_matmul_dtype(codes.shape[-1], codes.device)
    return matmul_operands(codes.to(dtype), weight_codes.to(dtype).t()).to(torch.int64)


def lookup(table: Tensor, index: Tensor) -> Tensor:
    """table[index] for a 1-D table (index_select on the flattened index: several times faster on CPU
    than advanced indexing), in the table's dtype."""
    return torch.index_select(table, 0, index.reshape(-1)).view(index.shape)


def requantize_(acc: Tensor, multiplier: Tensor, shift: Tensor, rounding: str,
                bounds: tuple[int, int]) -> Tensor:
    """`requantize` of a fresh int64 tensor: in place (no new tensor per pass) for half_up."""
    if rounding != "half_up":
        return requantize(acc, multiplier, shift, rounding, bounds)
    half = (torch.ones_like(shift) << shift) >> 1
    return acc.mul_(multiplier).add_(half).bitwise_right_shift_(shift).clamp_(bounds[0], bounds[1])


# Elements per chunk of a `TableCodes` gather: a chunk's index (int32) and codes stay within L2.
GATHER_CHUNK = 1 << 18


class TableCodes(NamedTuple):
    """Codes held as table[index], the index being the broadcast sum of int32 `parts`, gathered chunk
    by chunk where needed.

    How an add and a lookup table hand over their output. The add of int8 codes a and b is a
    2^16-entry table of every result, indexed by (a - lo) * 2^8 + (b - lo): a broadcast add (the RNN-T
    joiner's (B, T, U, J) lattice from (B, T, 1, J) and (B, 1, U, J)) never materialises a full-size
    index, and a lookup table behind it composes its table with the add's instead of indexing the
    lattice again. Dequantized values are gathered from the table's values (the same float32 product
    code * scale as an elementwise one); a linear consumer gathers each chunk of its input codes
    right before that chunk's matmul, so full-size codes never exist either.
    """

    table: Tensor  # 1-D int64
    parts: tuple[Tensor, ...]  # int32, all with the same number of dims

    @classmethod
    def of(cls, table: Tensor, parts: list[Tensor]) -> TableCodes:
        dims = max(p.dim() for p in parts)
        return cls(table, tuple(p.reshape((1,) * (dims - p.dim()) + p.shape) for p in parts))

    @property
    def shape(self) -> torch.Size:
        return torch.broadcast_shapes(*(p.shape for p in self.parts))

    def then(self, outer: Tensor, offset: int) -> TableCodes:
        """The codes outer[code + offset] (a lookup table applied to these codes), on the table alone."""
        return TableCodes(lookup(outer, self.table + offset), self.parts)

    def chunks(self) -> Iterator[tuple[tuple[slice, ...], Tensor]]:
        """(region, index there) over blocks of the first dim longer than 1, of about GATHER_CHUNK
        elements each; the dims before it have length 1, so a region of a contiguous tensor is
        contiguous."""
        shape = self.shape
        if not shape.numel():
            return
        if not shape:
            yield (), sum(self.parts[1:], self.parts[0])
            return
        dim = next((d for d, size in enumerate(shape) if size > 1), len(shape) - 1)
        step = max(1, GATHER_CHUNK // max(1, shape[dim + 1:].numel()))
        for start in range(0, shape[dim], step):
            region = (slice(None),) * dim + (slice(start, start + step),)
            pieces = [p[region] if p.shape[dim] > 1 else p for p in self.parts]
            yield region, sum(pieces[1:], pieces[0])

    def take(self, values: Tensor) -> Tensor:
        """values[index] for a 1-D `values` indexed like `table` (the codes in some dtype, or their
        dequantized values)."""
        out = torch.empty(self.shape, dtype=values.dtype, device=values.device)
        for region, index in self.chunks():
            torch.index_select(values, 0, index.reshape(-1), out=out[region].view(-1))
        return out

    def matmul(self, weight_codes: Tensor) -> Tensor:
        """`integer_matmul(codes, weight_codes)`, each chunk of codes gathered in the matmul's dtype."""
        shape = self.shape
        dtype = exact_matmul_dtype(shape[-1], self.table.device)
        values, weight_t = self.table.to(dtype), weight_codes.to(dtype).t()
        out = torch.empty(*shape[:-1], weight_t.shape[1], dtype=torch.int32 if dtype == torch.int8 else dtype,
                          device=values.device)
        for region, index in self.chunks():
            matmul_operands(lookup(values, index), weight_t, out=out[region])
        return out.to(torch.int64)


class NNAModule:
    """Mixin of every NNA module: phase, input links, observed ranges and frozen scales.

    `in_scales[p]` is the scale of activation input p (a producer's `out_scale`, or for a model
    input its own calibrated scale), `out_scale` the scale of the output codes.
    """

    input_ports: ClassVar[int] = 1
    # A lookup table's input range beyond which its output is saturated anyway (None: no such range).
    input_cap: ClassVar[float | None] = None
    numerics: NNANumerics
    nna_name: str
    phase: str

    def init_nna(self, numerics: NNANumerics, device: torch.device | None = None) -> None:
        self.numerics = numerics
        self.nna_name = ""
        self.phase = "new"
        # Per input port: the producing module's name, or None for a model input (features).
        self.input_sources: list[str | None] = [None] * self.input_ports
        self._tracer: Any = None
        self.register_buffer("in_scales", torch.ones(self.input_ports, device=device))
        self.register_buffer("out_scale", torch.ones((), device=device))
        self.reset_observations()

    # --- calibration -------------------------------------------------------------------------
    def start_calibration(self, tracer: Any) -> None:
        """Run float from now on, observing ranges afresh, with `tracer` linking inputs to producers."""
        self.phase = "calibrating"
        self._tracer = tracer
        self.reset_observations()

    def reset_observations(self) -> None:
        self._linked = [False] * self.input_ports
        self._observed_in = [0.0] * self.input_ports
        self._observed_out = 0.0
        self._observed_positive = 0.0
        self._calls = 0

    def see_input(self, port: int, x: Tensor) -> None:
        source, via_relu = self._tracer.source(x, self)
        if source is not None:
            self._tracer.note_use(source, via_relu, self.input_cap)
        if self._linked[port] and source != self.input_sources[port]:
            raise NNAError(f"Input {port} of '{self.nna_name}' comes from '{self.input_sources[port]}' in "
                           f"one call and '{source}' in another; the chip needs one scale per input: use one "
                           "module instance per call site.")
        self.input_sources[port] = source
        self._linked[port] = True
        if source is None:
            self._observed_in[port] = max(self._observed_in[port], float(x.detach().abs().max()))

    def see_output(self, y: Tensor, observe: bool = True) -> None:
        self._calls += 1
        if observe:
            seen = y.detach()
            self._observed_out = max(self._observed_out, float(seen.abs().max()))
            self._observed_positive = max(self._observed_positive, float(seen.max()))
        self._tracer.register(y, self)

    def output_scale(self, uses: list[Any]) -> float:
        """The frozen output scale, from what calibration observed and how consumers read the output.

        When every consumer reads it through a ReLU, only the positive range matters: negative codes
        saturate and the ReLU zeroes them either way (the chip's fused ReLU). When every consumer is
        a lookup table, the range stops where the table saturates.
        """
        relu_only = bool(uses) and all(use.via_relu for use in uses)
        caps = [use.cap for use in uses]
        cap = max(caps) if caps and None not in caps else None
        peak = self._observed_positive if relu_only else self._observed_out
        return act_scale(peak, self.numerics, cap)

    def freeze_output(self, uses: list[Any]) -> None:
        if not self._calls:
            raise NNAError(f"'{self.nna_name}' saw no data during calibration; calibrate with batches that "
                           "run every part of the model (a forward that computes the loss does).")
        self.out_scale.fill_(self.output_scale(uses))

    def freeze_inputs(self, modules: Mapping[str, NNAModule]) -> None:
        for port, source in enumerate(self.input_sources):
            if source is None:
                self.in_scales[port] = act_scale(self._observed_in[port], self.numerics)
            else:
                self.in_scales[port] = modules[source].out_scale
        self.phase = "frozen"
        self.prepare()

    def prepare(self) -> None:
        """Build what depends only on the frozen scales (lookup tables, fixed multipliers)."""

    # --- integer forward ---------------------------------------------------------------------
    def calibration_forward(self, inputs: tuple[Tensor, ...], float_fn, observe: bool = True) -> Tensor:
        """The float forward while calibrating, recording where each input comes from and the output range."""
        for port, x in enumerate(inputs):
            self.see_input(port, x)
        out = float_fn(*inputs)
        self.see_output(out, observe=observe)
        return out

    def check_ready(self) -> bool:
        """True while calibrating (run float); raises before calibration."""
        if self.phase == "frozen":
            return False
        if self.phase == "calibrating":
            return True
        raise NNAError(f"'{self.nna_name or type(self).__name__}' has no calibrated scales; run "
                       "mpsearch.quant.nna.calibrate_nna(model, batches) on real data before using the "
                       "model.")

    def input_codes(self, x: Tensor, port: int = 0, int64: bool = True) -> Tensor:
        """The int64 codes of input `port`: exact for a producer's output, quantized for a model input.

        With int64=False they may come in any dtype that holds them exactly (a producer's own int8,
        int32 or float codes, reused without a conversion pass), for consumers that convert them first
        or cannot overflow either way (tables, matmuls).
        """
        lo, hi = self.numerics.act_range
        attached = _attached_codes(x, self.in_scales[port])
        if attached is not None and not _checks["grid"]:
            codes = attached.within((lo, hi))
            if isinstance(codes, TableCodes):
                return codes.take(codes.table.to(torch.int64 if int64 else torch.int32))
            return codes.to(torch.int64) if int64 else codes
        scale = self.in_scales[port].to(torch.float64)
        v = x.detach().to(torch.float64) / scale
        codes = torch.round(v)
        if _checks["grid"] and self.input_sources[port] is not None and v.numel():
            off = float((v - codes).abs().max())
            if off > GRID_TOLERANCE:
                raise NNAError(f"Input {port} of '{self.nna_name}' is {off:.3g} codes off the grid of "
                               f"'{self.input_sources[port]}'; something between them changed it in float.")
        codes = saturate(codes.to(torch.int64), (lo, hi))
        if attached is not None and not torch.equal(codes, attached.dense((lo, hi))):
            raise NNAError(f"The codes '{self.nna_name}' reused for input {port} differ from its float value; "
                           "the code cache is stale.")
        return codes

    def input_table(self, x: Tensor, port: int = 0) -> TableCodes | None:
        """The codes of input `port` as its producer handed them over in a table (saturated to the
        activation range), or None (codes handed over as a tensor, a model input, grid checks on)."""
        attached = _attached_codes(x, self.in_scales[port])
        if attached is None or _checks["grid"] or not isinstance(attached.codes, TableCodes):
            return None
        return attached.within(self.numerics.act_range)

    def emit(self, codes: Tensor | TableCodes, scale: Tensor, surrogate: Tensor | None,
             bounds: tuple[int, int] | None = None) -> Tensor:
        """code * scale in float32, carrying the float surrogate's gradient when there is one.

        Output codes (scale is `out_scale`, all in `bounds`, default the activation range) ride along
        on the returned tensor, so a consumer on the same scale takes them instead of dividing again.
        """
        if isinstance(codes, TableCodes) and surrogate is None and scale is self.out_scale and not _checks["grid"]:
            value = DeferredValue(codes, scale)
        elif isinstance(codes, TableCodes):
            value = codes.take(codes.table.to(torch.float32).mul_(scale))
        else:
            value = codes.to(torch.float32, copy=True).mul_(scale)
        if surrogate is not None:
            if surrogate.shape == value.shape and surrogate.dtype == value.dtype:
                value = _StraightThrough.apply(surrogate, value)
            else:
                value = value + (surrogate - surrogate.detach())
        if scale is self.out_scale:
            attach_codes(value, codes, scale, bounds or self.numerics.act_range)
        return value

    def greedy_steps(self, predictor: nn.Module, joiner: nn.Module, enc_out: Tensor, blank: int) -> Any:
        """Greedy transducer search steps on the chip's integers, prepared once per batch, for the
        search of a joiner this module belongs to (see mpsearch.models.rnnt.greedy_steps); None where
        the predictor and joiner are not parts the integer decoder knows."""
        from mpsearch.quant.nna.decoding import integer_greedy_steps

        return integer_greedy_steps(predictor, joiner, enc_out, blank)

    def get_extra_state(self) -> dict[str, Any]:
        return {"phase": self.phase, "input_sources": list(self.input_sources),
                "numerics": self.numerics.to_dict(), "nna_name": self.nna_name}

    def set_extra_state(self, state: dict[str, Any]) -> None:
        self.phase = state["phase"]
        self.input_sources = list(state["input_sources"])
        self.numerics = NNANumerics.from_dict(state["numerics"])
        self.nna_name = state["nna_name"]
        if self.phase == "frozen":
            self.prepare()


class _AttachedCodes(NamedTuple):
    codes: Tensor | TableCodes
    scale: float
    version: int
    bounds: tuple[int, int]

    def within(self, bounds: tuple[int, int]) -> Tensor | TableCodes:
        """The codes saturated to `bounds` (a table's on the table alone)."""
        if bounds[0] <= self.bounds[0] and self.bounds[1] <= bounds[1]:
            return self.codes
        if isinstance(self.codes, TableCodes):
            return self.codes._replace(table=saturate(self.codes.table, bounds))
        return saturate(self.codes, bounds)

    def dense(self, bounds: tuple[int, int]) -> Tensor:
        """`within(bounds)` as an int64 tensor."""
        codes = self.within(bounds)
        return codes.take(codes.table) if isinstance(codes, TableCodes) else codes.to(torch.int64)


def attach_codes(value: Tensor, codes: Tensor | TableCodes, scale: Tensor, bounds: tuple[int, int]) -> None:
    """Let consumers of `value` (= codes * scale) take `codes` (all within `bounds`) instead of
    recovering them by a division; they are dropped when value changes in place or scales differ."""
    value._nna_codes = _AttachedCodes(codes, float(scale), value._version, bounds)


def _attached_codes(x: Tensor, scale: Tensor) -> _AttachedCodes | None:
    """The codes `x` was emitted from, if x is unchanged since and on the grid of `scale`; for a view
    of an emitted tensor (a slice, an unsqueeze), the same view of its codes."""
    attached = getattr(x, "_nna_codes", None)
    if attached is None and x._base is not None:
        attached = _viewed(getattr(x._base, "_nna_codes", None), x, x._base)
    if attached is None or attached.version != x._version or attached.scale != float(scale):
        return None
    return attached


def _viewed(attached: _AttachedCodes | None, view: Tensor, base: Tensor) -> _AttachedCodes | None:
    """`attached` (base's codes) cut as `view` cuts base, where both lie alike in memory (emit's codes
    and values do: the values are a same-layout copy of the codes)."""
    if attached is None or isinstance(attached.codes, TableCodes) or view.dtype != base.dtype:
        return None
    codes = attached.codes
    if codes.shape != base.shape or codes.stride() != base.stride():
        return None
    offset = codes.storage_offset() + view.storage_offset() - base.storage_offset()
    return attached._replace(codes=codes.as_strided(view.shape, view.stride(), offset))


class DeferredValue(Tensor):
    """The float value code * scale of table-held codes, computed only when something reads it.

    Without gradients, an add or a lookup table hands its codes to the next NNA module, which reads
    only them: the RNN-T joiner's add and tanh would otherwise each write a (B, T, U, J) float32
    lattice nobody reads. Any other use (a float op, printing, returning it) goes through
    __torch_dispatch__, which computes the dense value once and runs the op on it, so the result is
    the same as if it had been computed up front.
    """

    @staticmethod
    def __new__(cls, codes: TableCodes, scale: Tensor) -> DeferredValue:
        return Tensor._make_wrapper_subclass(cls, codes.shape, dtype=torch.float32, device=codes.table.device)

    def __init__(self, codes: TableCodes, scale: Tensor) -> None:
        self._table_codes, self._scale, self._dense = codes, scale, None

    def dense(self) -> Tensor:
        if self._dense is None:
            self._dense = self._table_codes.take(self._table_codes.table.to(torch.float32).mul_(self._scale))
        return self._dense

    @classmethod
    def __torch_dispatch__(cls, func, types, args=(), kwargs=None):
        from torch.utils._pytree import tree_map

        def unwrap(x):
            return x.dense() if isinstance(x, DeferredValue) else x

        return func(*tree_map(unwrap, args), **tree_map(unwrap, kwargs or {}))

    def __repr__(self) -> str:
        return repr(self.dense())


class _StraightThrough(torch.autograd.Function):
    """value forward, the surrogate's gradient backward: `value + (surrogate - surrogate.detach())` in
    one node and no elementwise pass."""

    @staticmethod
    def forward(ctx, surrogate: Tensor, value: Tensor) -> Tensor:
        return value

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor, None]:
        return grad, None


def _grad_wanted() -> bool:
    return torch.is_grad_enabled()


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
        surrogate = self.float_op(input, self.quantized("weight")) if _grad_wanted() else None
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
        surrogate = F.embedding(input, self.quantized("weight"), self.padding_idx) if _grad_wanted() else None
        return self.emit(codes, self.out_scale, surrogate)


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
        return self.emit(codes, self.out_scale, self.float_op(a, b) if _grad_wanted() else None)

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
        return self.emit(codes, self.out_scale, self.float_fn(x) if _grad_wanted() else None,
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


@contextlib.contextmanager
def checking_grid() -> Iterator[None]:
    """Within the block, NNA modules verify that every linked input lies on its producer's grid
    (one device sync per module call: for tests and debugging, not for training)."""
    previous = _checks["grid"]
    _checks["grid"] = True
    try:
        yield
    finally:
        _checks["grid"] = previous
