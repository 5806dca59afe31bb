"""apply(model, policy): a quantized copy of any model, module by module, as the policy says."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from torch import Tensor, nn

from mpsearch.errors import ConfigError, MpsearchError, PolicyError
from mpsearch.quant.config import QuantConfig
from mpsearch.quant.modules import QUANT_MODULES, QuantModule
from mpsearch.quant.nna.base import NNAModule
from mpsearch.quant.nna.errors import NNAError
from mpsearch.quant.nna.numerics import NNANumerics
from mpsearch.quant.nna.preflight import Blocker, NNABlockedError, nna_blockers
from mpsearch.quant.policy import Policy
from mpsearch.quant.prepare import prepared_configs, prepared_copy, swap_modules
from mpsearch.quant.quantizers import QUANTIZERS, ActivationQuantizer, WeightQuantizer
from mpsearch.quant.recurrent import RECURRENT_QUANT_MODULES
from mpsearch.quant.sites import Site, find_sites
from mpsearch.quant.sparsity import check_sparsity_shape
from mpsearch.registry import Registry

# Emulation name -> how apply quantizes the prepared copy: (model, per_module, site_configs, numerics,
# example, forward) -> the quantized model.
EMULATIONS: Registry[Callable[..., nn.Module]] = Registry("emulation")
QUANT_SWAPS = {**QUANT_MODULES, **RECURRENT_QUANT_MODULES}


def apply(model: nn.Module, policy: Policy, emulation: str = "none", numerics: NNANumerics | None = None,
          example: Any = None, forward: Callable[[nn.Module, Any], Any] | None = None) -> nn.Module:
    """A deep copy of `model` whose quantized sites run through fake quantizers; `model` is untouched.

    The copy is first rewritten by `mpsearch.quant.prepare.prepare` (weight norm folded, foreign
    activation classes and nn.MultiheadAttention replaced by their torch / split forms); the policy is
    written against `find_sites(model)` of the original, and a split attention's q/k/v projections
    take the config of its in_proj_weight site. Tied weights are quantized alike wherever they are used.

    emulation="none": every module with at least one site the policy quantizes is replaced by its
    Quant* counterpart holding the same float parameters; sites resolved to None stay float (an LSTM
    quantizes each of its matrices by its own site's config). A config with `sparsity` also masks its
    weight (mask * Q(W)); the masks start dense and follow their schedule under
    `mpsearch.quant.methods.hooks.training_hooks`.

    emulation="nna": the accelerator's integer arithmetic (`numerics`, default NNANumerics(); see
    NNANumerics.from_profile). Every site must be quantized (symmetric weights, act_bits equal to
    the chip's); Linear, Conv1d, Embedding and LSTM become NNA modules, ReLU, Tanh, Sigmoid and op
    modules with `op_name` "add" become integer ops, dropout is removed, and any other leaf module
    is an error. Calibrate the result with `mpsearch.quant.nna.calibrate_nna` before using it.
    Every blocker is reported at once (one NNABlockedError); with an `example` batch (run as
    `forward(model, example)`, default `model(*example)`) float arithmetic between modules is found too.
    """
    if emulation not in EMULATIONS:
        raise ConfigError(f"Unknown emulation '{emulation}'; valid choices: {', '.join(EMULATIONS)}.")
    if numerics is not None and emulation != "nna":
        raise ConfigError("'numerics' describes the NNA's integer arithmetic; pass it with emulation='nna'.")
    sites = find_sites(model)
    policy.validate(sites, QUANTIZERS.names())
    site_configs: dict[str, QuantConfig | None] = {}
    for site in sites:
        cfg = policy.resolve(site.name)
        if cfg is not None:
            _check_site_config(site, cfg)
        site_configs[site.name] = cfg

    model, renames = prepared_copy(model)
    per_module = prepared_configs(model, renames, site_configs)
    return EMULATIONS.get(emulation)(model, per_module, site_configs, numerics, example, forward)


@EMULATIONS.register("none")
def _fake_quantized(model: nn.Module, per_module: dict[str, dict[str, QuantConfig | None]],
                    site_configs: dict[str, QuantConfig | None], numerics: NNANumerics | None, example: Any,
                    forward: Callable[[nn.Module, Any], Any] | None) -> nn.Module:
    for module_name, configs in per_module.items():
        if all(cfg is None for cfg in configs.values()):
            continue
        module = model.get_submodule(module_name)
        _check_swappable(model, module_name, module)
        try:
            quantized = QUANT_SWAPS[_float_class(module)].from_float(module, configs)
        except MpsearchError as exc:
            raise PolicyError(f"Module '{module_name or '<root>'}' ({type(module).__name__}): {exc}") from None
        model = swap_modules(model, {module_name: quantized})
    return model


@EMULATIONS.register("nna")
def _nna_emulated(model: nn.Module, per_module: dict[str, dict[str, QuantConfig | None]],
                  site_configs: dict[str, QuantConfig | None], numerics: NNANumerics | None, example: Any,
                  forward: Callable[[nn.Module, Any], Any] | None) -> nn.Module:
    for module_name in per_module:
        _check_swappable(model, module_name, model.get_submodule(module_name))
    model, blockers = nna_blockers(model, per_module, site_configs, numerics or NNANumerics(), example, forward)
    if blockers:
        raise NNABlockedError(type(model).__name__, blockers)
    return model


def nna_preflight(model: nn.Module, policy: Policy, example: Any, numerics: NNANumerics | None = None,
                  forward: Callable[[nn.Module, Any], Any] | None = None) -> list[Blocker]:
    """Every reason `model` under `policy` cannot run on the NNA, from one example batch; [] if none.

    Run it before any training: it converts and traces a copy, and lists each blocker (module, class,
    why, what to do) instead of stopping at the first.
    """
    try:
        apply(model, policy, emulation="nna", numerics=numerics, example=example, forward=forward)
    except NNABlockedError as exc:
        return exc.blockers
    return []


def _check_site_config(site: Site, cfg: QuantConfig) -> None:
    try:
        QUANTIZERS.get(cfg.method).check_config(cfg)
        if cfg.sparsity is not None:
            check_sparsity_shape(site.shape, cfg.sparsity)
    except MpsearchError as exc:
        raise PolicyError(f"Site '{site.name}': {exc}") from None


def _float_class(module: nn.Module) -> type[nn.Module]:
    for float_class in QUANT_SWAPS:
        if isinstance(module, float_class):
            return float_class
    raise PolicyError(f"No quantized module for {type(module).__name__}; "
                      f"supported: {', '.join(c.__name__ for c in QUANT_SWAPS)}.")


def _check_swappable(model: nn.Module, module_name: str, module: nn.Module) -> None:
    label = module_name or "<root>"
    if isinstance(module, QuantModule):
        raise PolicyError(f"Module '{label}' is already quantized; apply the policy to the float model.")
    float_class = _float_class(module)
    if type(module).forward is not float_class.forward:
        raise PolicyError(f"Module '{label}' ({type(module).__name__}) overrides {float_class.__name__}.forward, "
                          "which a quantized replacement would drop; keep its site(s) float (null).")
    parent_name, _, _ = module_name.rpartition(".")
    parent = model.get_submodule(parent_name) if module_name else None
    if isinstance(parent, nn.MultiheadAttention):
        raise PolicyError(f"Module '{label}' belongs to an nn.MultiheadAttention, which reads its weight "
                          "directly; keep the site float (null) or use separate q/k/v/o nn.Linear layers.")


def _quant_modules(model: nn.Module) -> Iterator[tuple[str, QuantModule]]:
    for name, module in model.named_modules():
        if isinstance(module, QuantModule):
            yield name, module


def quantized_sites(model: nn.Module) -> dict[str, WeightQuantizer]:
    """Site name -> weight quantizer, for every quantized site of a model returned by `apply`."""
    return {module.site_name(name, param): quantizer
            for name, module in _quant_modules(model)
            for param, quantizer in module.weight_quantizers.items()}


def activation_quantizers(model: nn.Module) -> dict[str, ActivationQuantizer]:
    """Site name -> the quantizer of the activation entering that site's matmul."""
    return {module.site_name(name, param): quantizer
            for name, module in _quant_modules(model)
            for param, quantizer in module.input_quantizers.items()}


def export_weights(model: nn.Module) -> dict[str, tuple[Tensor, Tensor, Tensor, int]]:
    """Site name -> (int8 codes, scale, zero point, bits) of every quantized weight (fake-quant export).

    (codes - zero_point) * scale is exactly the weight the quantized model computes with; pruned
    weights hold the zero point's code.
    """
    exported = {}
    for name, module in _quant_modules(model):
        for param, quantizer in module.weight_quantizers.items():
            codes, scale, zero_point = module.quantize_int(param)
            exported[module.site_name(name, param)] = (codes, scale, zero_point, quantizer.bits)
    return exported


@contextmanager
def calibrating(model: nn.Module) -> Iterator[nn.Module]:
    """Within the block, activation quantizers only observe ranges and pass activations through float.

    Run a few representative batches inside it (under torch.no_grad) before QAT or evaluation.
    """
    if any(isinstance(m, NNAModule) for m in model.modules()):
        raise NNAError("An NNA-emulated model calibrates with mpsearch.quant.nna.calibrate_nna(model, "
                       "batches), which also links each input to its producer's scale; calibrating() is for "
                       "emulation='none'.")
    quantizers = list(activation_quantizers(model).values())
    previous = [q.calibrating for q in quantizers]
    for q in quantizers:
        q.calibrating = True
    try:
        yield model
    finally:
        for q, was in zip(quantizers, previous):
            q.calibrating = was


def freeze_activation_ranges(model: nn.Module) -> None:
    """Stop every activation quantizer from observing: its range (or learned step) is final."""
    for q in activation_quantizers(model).values():
        q.freeze()
