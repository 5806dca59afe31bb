"""The NNAModule phase machine: every forward computes the accelerator's exact integer result.

Tensors between modules are dequantized floats, code * scale, where the scale is the producer's
frozen output scale; `calibrate_nna` links each consumer's input scale to its producer's (the same
float32 value), so the consumer recovers the exact code as round(x / scale): x is code * scale
rounded once to float32, so x / scale is off the code by at most |code| * 2^-24 < 2^-8 (codes are at
most 16 bits). A module returns

    code * out_scale + (surrogate - surrogate.detach())

whose value is the integer result and whose gradient is the float surrogate's (straight-through, see
`gradients`). Output codes ride along on the emitted tensor (see `codes`), so a consumer reads them
back without dividing by the scale.

Phases: "new" (apply() made it; using it raises), "calibrating" (float forward that observes ranges
and traces which module produced each input), "frozen" (integer forward).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from mpsearch.quant.nna.codes import DeferredValue, TableCodes, attach_codes, attached_codes
from mpsearch.quant.nna.errors import NNAError
from mpsearch.quant.nna.gradients import straight_through
from mpsearch.quant.nna.kernels import act_scale
from mpsearch.quant.nna.numerics import NNANumerics, saturate

PHASES = ("new", "calibrating", "frozen")
# Inputs recovered from a producer must sit this close to its grid when grid checks are on.
GRID_TOLERANCE = 1e-3
_checks = {"grid": False}


def grid_checks_on() -> bool:
    """Whether NNA modules are inside `checking_grid` (and so take no shortcut past the division)."""
    return _checks["grid"]


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
        attached = attached_codes(x, self.in_scales[port])
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
        attached = attached_codes(x, self.in_scales[port])
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
            value = straight_through(value, surrogate)
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
