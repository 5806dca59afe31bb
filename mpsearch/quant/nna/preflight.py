"""NNA preflight: every reason a model cannot run on the chip, found in one pass and reported at once.

Three kinds of blocker, each named by module and class with what to do about it:
- a site whose config the chip cannot run (kept float, asymmetric, other activation width);
- a module with no NNA version (checked on every module, not up to the first);
- float arithmetic between modules (an inline `a + b`, a functional norm), found by tracing one example
  batch the way calibration does, with modules that have no NNA version standing in as producers so
  each problem is reported once, where it is.
`apply(..., emulation="nna")` raises one NNABlockedError listing them all; `mpsearch.quant.apply.nna_preflight`
returns them.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from torch import Tensor, nn

from mpsearch.quant.config import QuantConfig
from mpsearch.quant.nna import convert
from mpsearch.quant.nna.base import NNAModule
from mpsearch.quant.nna.calibrate import _calibration_mode, _default_forward, _Tracer, nna_modules
from mpsearch.quant.nna.errors import NNAError
from mpsearch.quant.nna.numerics import NNANumerics


@dataclass(frozen=True)
class Blocker:
    """One reason the chip cannot run a model: where (module, class), why (a sentence naming the module),
    and what to do."""

    module: str
    kind: str
    why: str
    fix: str

    def line(self) -> str:
        return self.why + (f"; {self.fix}" if self.fix else "")


def _blocker(module: str, kind: str, message: str) -> Blocker:
    why, _, fix = str(message).partition("; ")
    return Blocker(module or "<root>", kind, why.rstrip("."), fix.rstrip("."))


class _CollectingTracer(_Tracer):
    """A calibration tracer that records float arithmetic between modules instead of stopping at it."""

    def __init__(self) -> None:
        super().__init__()
        self.blockers: list[Blocker] = []

    def source(self, x: Tensor, consumer: NNAModule) -> tuple[str | None, bool]:
        try:
            return super().source(x, consumer)
        except NNAError as exc:
            self.blockers.append(_blocker(consumer.nna_name, type(consumer).__name__, str(exc)))
            return None, False


def nna_blockers(model: nn.Module, per_module: Mapping[str, Mapping[str, QuantConfig | None]],
                 site_configs: Mapping[str, QuantConfig | None], numerics: NNANumerics,
                 example: Any = None, forward: Callable[[nn.Module, Any], Any] | None = None,
                 ) -> tuple[nn.Module, list[Blocker]]:
    """Convert a prepared model to NNA modules in place, collecting every blocker instead of raising.

    `per_module` and `site_configs` are what `apply` computed; with an `example` batch the converted
    model is also traced once (`forward(model, example)`, default `model(*example)`).
    """
    blockers = []
    for site_name, cfg in site_configs.items():
        try:
            convert.check_site(site_name, cfg, numerics)
        except NNAError as exc:
            blockers.append(_blocker(site_name, "site", str(exc)))
    errors: list[tuple[str, nn.Module, NNAError]] = []
    model = convert.to_nna(model, per_module, numerics, errors)
    blockers += [_blocker(name, type(module).__name__, str(exc)) for name, module, exc in errors]
    if example is not None:
        blockers += _trace(model, [name for name, _, _ in errors], example, forward or _default_forward)
    return model, list(dict.fromkeys(blockers))


def _trace(model: nn.Module, unconverted: list[str], example: Any,
           forward: Callable[[nn.Module, Any], Any]) -> list[Blocker]:
    modules = nna_modules(model)
    tracer = _CollectingTracer()
    handles = []
    for name in unconverted:
        # Stand-ins: consumers link to the module already reported instead of reporting its float op again.
        def register(module: nn.Module, args: Any, out: Any, name: str = name) -> None:
            for value in out if isinstance(out, (tuple, list)) else (out,):
                if isinstance(value, Tensor) and value.grad_fn is not None:
                    tracer.producers[value.grad_fn] = name
        handles.append(model.get_submodule(name).register_forward_hook(register))
    try:
        with _calibration_mode(model, modules, tracer):
            forward(model, example)
    except NNAError as exc:
        # Stops the forward itself (a module called from two places, a mask that is not 0/1, ...).
        tracer.blockers.append(_blocker("<forward>", type(model).__name__, str(exc)))
    finally:
        for handle in handles:
            handle.remove()
        for module in modules.values():
            module.phase = "new"  # calibrate_nna starts from scratch
    return tracer.blockers


class NNABlockedError(NNAError):
    """The chip cannot run a model; `blockers` lists every reason, the message one per line."""

    def __init__(self, model_name: str, blockers: list[Blocker]) -> None:
        lines = "\n".join(f"  - {b.line()}" for b in blockers)
        super().__init__(f"{model_name} cannot run on the NNA; {len(blockers)} blocker(s), all listed (fix each, "
                         f"or keep the model on emulation='none'):\n{lines}")
        self.blockers = blockers
