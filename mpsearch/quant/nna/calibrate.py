"""calibrate_nna: observe activation ranges on real data, link every input to its producer, freeze.

Linking is what makes the emulation exact. During calibration each NNA module registers the autograd
node of its output; a consumer walks back from its input's node through ops that keep values on the
producer's grid (views, slices, zero padding, ReLU, concatenation of same-scale tensors, ...) until
it reaches a registered node. Its input scale is then that producer's output scale, the very same
float32 value. An input with no autograd history is a model input (the features), quantized with its
own calibrated scale. Any other op on the way is float arithmetic the chip cannot run, and calibration
names it, so a model with an inline `a + b` between two layers is caught instead of silently
mis-emulated.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Iterator
from typing import Any, NamedTuple

import torch
from torch import Tensor, nn

from mpsearch.quant.nna.base import NNAModule
from mpsearch.quant.nna.errors import NNAError

# Autograd nodes whose output lies on the grid of their input(s): the codes are the input's codes,
# rearranged, or zero (padding), or max(code, 0).
GRID_PRESERVING = frozenset({
    "TransposeBackward0", "TransposeBackward1", "PermuteBackward0", "ViewBackward0", "UnsafeViewBackward0",
    "ReshapeAliasBackward0", "AsStridedBackward0", "SliceBackward0", "SelectBackward0", "UnsqueezeBackward0",
    "SqueezeBackward0", "SqueezeBackward1", "SqueezeBackward2", "SqueezeBackward3", "SqueezeBackward4",
    "ExpandBackward0", "CloneBackward0", "ConstantPadNdBackward0", "ReluBackward0", "CatBackward0",
    "StackBackward0", "UnbindBackward0", "SplitBackward0", "SplitBackward1", "SplitWithSizesBackward0",
    "IndexBackward0", "GatherBackward0", "FlipBackward0", "RepeatBackward0", "WhereBackward0",
    "TBackward0", "NarrowBackward0", "UnfoldBackward0", "AliasBackward0",
})


def nna_modules(model: nn.Module) -> dict[str, NNAModule]:
    """Module name -> NNA module, in module order."""
    return {name: module for name, module in model.named_modules() if isinstance(module, NNAModule)}


class Use(NamedTuple):
    """How one consumer reads a producer's output: through a ReLU or not, into a table capped at `cap`."""

    via_relu: bool
    cap: float | None


class _Tracer:
    def __init__(self) -> None:
        self.producers: dict[Any, str] = {}
        self.uses: dict[str, set[Use]] = {}

    def note_use(self, producer: str, via_relu: bool, cap: float | None) -> None:
        self.uses.setdefault(producer, set()).add(Use(via_relu, cap))

    def register(self, output: Tensor, module: NNAModule) -> None:
        if output.grad_fn is None:
            raise NNAError(f"'{module.nna_name}' produced an output without autograd history during "
                           "calibration; do not wrap calibrate_nna's forward in torch.no_grad().")
        self.producers[output.grad_fn] = module.nna_name

    def source(self, x: Tensor, consumer: NNAModule) -> tuple[str | None, bool]:
        """(name of the module that produced x or None for a model input, whether a ReLU is on the way)."""
        return self._walk(x.grad_fn, consumer, {})

    def _walk(self, node: Any, consumer: NNAModule, memo: dict) -> tuple[str | None, bool]:
        if node is None:
            return None, False
        if node in self.producers:
            return self.producers[node], False
        if node in memo:
            return memo[node]
        name = node.name()
        if name not in GRID_PRESERVING:
            raise NNAError(f"The input of '{consumer.nna_name}' is computed by {name} in float outside any "
                           "NNA module, which the chip cannot run; write that op as a module apply() "
                           "replaces (mpsearch.models.ops) or move it inside a supported layer.")
        found = [self._walk(parent, consumer, memo) for parent, _ in node.next_functions]
        sources = {source for source, _ in found}
        if len(sources) > 1:
            named = ", ".join(sorted(f"'{s}'" if s else "a model input or constant" for s in sources))
            raise NNAError(f"The input of '{consumer.nna_name}' joins tensors of different scales ({named}) "
                           f"by {name} in float; the chip needs one scale per tensor: combine them with an "
                           "op module such as mpsearch.models.ops.Add.")
        via_relu = name == "ReluBackward0" or (bool(found) and all(relu for _, relu in found))
        memo[node] = (sources.pop() if sources else None), via_relu
        return memo[node]


@contextlib.contextmanager
def _calibration_mode(model: nn.Module, modules: dict[str, NNAModule], tracer: _Tracer) -> Iterator[None]:
    params = list(model.parameters())
    wanted = [p.requires_grad for p in params]
    was_training = model.training
    for module in modules.values():
        module.start_calibration(tracer)
    try:
        # Outputs need autograd history for the producer links, whatever the caller froze.
        for p in params:
            p.requires_grad_(True)
        model.eval()
        with torch.enable_grad():
            yield
    finally:
        for p, flag in zip(params, wanted):
            p.requires_grad_(flag)
        model.train(was_training)
        for module in modules.values():
            module._tracer = None


def _default_forward(model: nn.Module, batch: Any) -> Any:
    if isinstance(batch, (tuple, list)):
        return model(*batch)
    if isinstance(batch, dict):
        return model(**batch)
    return model(batch)


def calibrate_nna(model: nn.Module, batches: Iterable[Any],
                  forward: Callable[[nn.Module, Any], Any] | None = None) -> nn.Module:
    """Calibrate a model returned by `apply(model, policy, emulation="nna")` in place and return it.

    Runs `forward(model, batch)` (default: `model(*batch)`) on every batch in float, recording the
    absolute maximum of every activation (and of the LSTM gates and cell states), tracing which
    module produced each module's input, then freezes all scales: from then on every forward is the
    chip's integer arithmetic. Use a few real batches that run every part of the model (the training
    loss does). To recalibrate, apply() the policy to the float model again.
    """
    modules = nna_modules(model)
    if not modules:
        raise NNAError("The model has no NNA modules; make it with apply(model, policy, emulation='nna') "
                       "first.")
    forward = forward or _default_forward
    frozen = [name for name, m in modules.items() if m.phase == "frozen"]
    if frozen:
        raise NNAError(f"'{frozen[0]}' is already calibrated; apply the policy to the float model again to "
                       "recalibrate.")
    count = 0
    tracer = _Tracer()
    try:
        with _calibration_mode(model, modules, tracer):
            for batch in batches:
                forward(model, batch)
                count += 1
        if not count:
            raise NNAError("calibrate_nna got no batches; pass at least one batch of real data.")
        for name, module in modules.items():
            module.freeze_output(sorted(tracer.uses.get(name, ()), key=str))
        for module in modules.values():
            module.freeze_inputs(modules)
    except BaseException:
        for module in modules.values():
            module.phase = "new"  # half-calibrated scales must not be used
        raise
    return model
