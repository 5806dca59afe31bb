"""prepare(model): rewrite a model, in place, into the layers `apply` quantizes and NNA emulation runs.

- Weight norm (torch.nn.utils.weight_norm and parametrizations.weight_norm) is folded into a plain
  weight: fake quantization and the chip both see the weight the layer computes with.
- A BatchNorm1d in eval mode registered right after a Conv1d of its width (the order nn.Sequential and
  model code such as a Conformer's convolution module run them in) is folded into that conv's weight and
  bias, as the chip runs it; one in training mode (batch statistics) is left as it is.
- Activation modules of other libraries (Hugging Face's GELUActivation and friends, matched by class
  name so nothing imports them) become the torch modules computing the same function.
- Padding layers that pad or trim nothing become nn.Identity.
- nn.MultiheadAttention becomes SplitMultiheadAttention (separate q/k/v/out Linears and op modules);
  nn.Transformer*Layer's activation function becomes its module.

It returns the site renames it made: prepared site name -> the site name `find_sites` gives the
original model, so a policy written against the original model applies to the prepared one.
"""

from __future__ import annotations

import copy
import warnings
from collections.abc import Mapping

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils import parametrize

from mpsearch.errors import MpsearchError, PolicyError
from mpsearch.quant.attention import SplitMultiheadAttention
from mpsearch.quant.config import QuantConfig
from mpsearch.quant.sites import UncoveredWeightWarning, find_sites

# Class name -> a factory of the torch module computing the same function.
ACTIVATION_EQUIVALENTS = {
    "GELUActivation": nn.GELU,
    "GELUTanh": lambda: nn.GELU(approximate="tanh"),
    "PytorchGELUTanh": lambda: nn.GELU(approximate="tanh"),
    "NewGELUActivation": lambda: nn.GELU(approximate="tanh"),
    "FastGELUActivation": lambda: nn.GELU(approximate="tanh"),
    "AccurateGELUActivation": lambda: nn.GELU(approximate="tanh"),
    "SiLUActivation": nn.SiLU,
    "MishActivation": nn.Mish,
    "LinearActivation": nn.Identity,
}
_FUNCTION_MODULES = {F.relu: nn.ReLU, F.gelu: nn.GELU}


def prepare(model: nn.Module) -> tuple[nn.Module, dict[str, str]]:
    """Rewrite `model` in place (pass a copy to keep the original); returns (model, site renames).

    An error while rewriting a module names it.
    """
    renames: dict[str, str] = {}
    replacements: dict[str, nn.Module] = {}
    for name, module in model.named_modules():
        try:
            _fold_weight_norm(module)
            new = _replacement(module)
        except MpsearchError as exc:
            raise PolicyError(f"Module '{name or '<root>'}' ({type(module).__name__}): {exc}") from None
        except (RuntimeError, ValueError, AttributeError, TypeError) as exc:
            raise PolicyError(f"Module '{name or '<root>'}' ({type(module).__name__}) cannot be prepared for "
                              f"quantisation: {exc}") from None
        if new is None:
            continue
        replacements[name] = new
        if isinstance(new, SplitMultiheadAttention):
            renames.update(_attention_renames(name, module))
    model = swap_modules(model, replacements)
    _fold_batch_norms(model)
    return model, renames


def swap_modules(model: nn.Module, replacements: Mapping[str, nn.Module]) -> nn.Module:
    """Put each module of `replacements` (module name -> module) in its place; returns the root, new if
    the root itself ("") was replaced."""
    for name, new in replacements.items():
        if name == "":
            model = new
        else:
            parent, _, child = name.rpartition(".")
            setattr(model.get_submodule(parent), child, new)
    return model


def prepared_copy(model: nn.Module) -> tuple[nn.Module, dict[str, str]]:
    """prepare() on a deep copy of `model`; the original is untouched."""
    # torch.nn.utils.weight_norm keeps the derived weight as a non-leaf tensor, which deepcopy refuses;
    # folding recomputes it from g and v, so the copy may start from a detached alias.
    memo: dict[int, object] = {}
    for module in model.modules():
        for hook in module._forward_pre_hooks.values():
            derived = getattr(module, getattr(hook, "name", ""), None)
            if type(hook).__name__ == "WeightNorm" and isinstance(derived, Tensor) and not derived.is_leaf:
                memo[id(derived)] = derived.detach()
    return prepare(copy.deepcopy(model, memo))


def _fold_weight_norm(module: nn.Module) -> None:
    for key, hook in list(module._forward_pre_hooks.items()):
        if type(hook).__name__ == "WeightNorm":
            hook.remove(module)
            del module._forward_pre_hooks[key]
    if not parametrize.is_parametrized(module):
        return
    folded = [name for name, chain in module.parametrizations.items()
              if all(type(p).__name__ == "_WeightNorm" for p in chain)]
    if not folded:
        return
    if len(folded) < len(module.parametrizations):
        raise PolicyError("weight norm can be folded only where it is the module's one parametrization; "
                          "remove the others first.")
    # Not parametrize.remove_parametrizations: it edits the Parametrized* class, which a deep copy
    # shares with the original model.
    values = {name: getattr(module, name).detach().clone() for name in folded}
    del module._modules["parametrizations"]
    module.__class__ = module.__class__.__bases__[0]
    for name, value in values.items():
        module.register_parameter(name, nn.Parameter(value))


def _fold_batch_norms(model: nn.Module) -> None:
    for parent in list(model.modules()):
        previous = None
        for child_name, child in list(parent.named_children()):
            if _folds_into(child, previous):
                _fold_batch_norm(previous, child)
                setattr(parent, child_name, nn.Identity())
            previous = child


def _folds_into(norm: nn.Module, conv: nn.Module | None) -> bool:
    return (type(norm) is nn.BatchNorm1d and not norm.training and norm.running_mean is not None
            and isinstance(conv, nn.Conv1d) and conv.out_channels == norm.num_features
            and not parametrize.is_parametrized(conv))


@torch.no_grad()
def _fold_batch_norm(conv: nn.Conv1d, norm: nn.BatchNorm1d) -> None:
    """conv then norm (running statistics) as one conv: with f = gamma / sqrt(var + eps), weight W * f and
    bias (b - mean) * f + beta."""
    factor = torch.rsqrt(norm.running_var.double() + norm.eps)
    if norm.weight is not None:
        factor = factor * norm.weight.double()
    bias = conv.bias.double() if conv.bias is not None else torch.zeros_like(factor)
    bias = (bias - norm.running_mean.double()) * factor
    if norm.bias is not None:
        bias = bias + norm.bias.double()
    conv.weight.copy_(conv.weight.double() * factor.reshape(-1, 1, 1))
    if conv.bias is None:
        conv.bias = nn.Parameter(bias.to(conv.weight.dtype))
    else:
        conv.bias.copy_(bias)


def _replacement(module: nn.Module) -> nn.Module | None:
    equivalent = ACTIVATION_EQUIVALENTS.get(type(module).__name__)
    if equivalent is not None and not list(module.children()):
        return equivalent()
    if _pads_nothing(module):
        return nn.Identity()
    if isinstance(module, nn.MultiheadAttention):
        return SplitMultiheadAttention(module)
    if isinstance(module, (nn.TransformerEncoderLayer, nn.TransformerDecoderLayer)):
        factory = _FUNCTION_MODULES.get(getattr(module, "activation", None))
        if factory is not None:
            module.activation = factory()
    return None


def _pads_nothing(module: nn.Module) -> bool:
    if isinstance(module, nn.modules.padding._ConstantPadNd):
        return not any(module.padding)
    # Hugging Face's *SamePadLayer trims `num_pad_to_remove` frames, none for an odd kernel.
    return type(module).__name__.endswith("SamePadLayer") and getattr(module, "num_pad_to_remove", None) == 0


def _attention_renames(name: str, mha: nn.MultiheadAttention) -> dict[str, str]:
    prefix = f"{name}." if name else ""
    if mha._qkv_same_embed_dim:
        return {f"{prefix}{p}": f"{prefix}in_proj_weight" for p in ("q_proj", "k_proj", "v_proj")}
    return {f"{prefix}{p}": f"{prefix}{p}_weight" for p in ("q_proj", "k_proj", "v_proj")}


def prepared_configs(prepared: nn.Module, renames: Mapping[str, str],
                     configs: Mapping[str, QuantConfig | None]) -> dict[str, dict[str, QuantConfig | None]]:
    """Module name -> {param: config} over the prepared model, each weight under the config of the
    original model's site it came from (`configs`: original site name -> config), tied places included."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UncoveredWeightWarning)  # find_sites warned on the original model
        sites = find_sites(prepared)
    per_module: dict[str, dict[str, QuantConfig | None]] = {}
    for site in sites:
        original = renames.get(site.name, site.name)
        if original not in configs:
            raise PolicyError(f"Site '{site.name}' of the prepared model has no site '{original}' in the original "
                              "model; apply the policy to the float model.")
        for module, param in ((site.module, site.param), *site.tied):
            per_module.setdefault(module, {})[param] = configs[original]
    return per_module
