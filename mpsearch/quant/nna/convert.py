"""Swapping a model's modules for their NNA versions (the emulation="nna" branch of quant.apply)."""

from __future__ import annotations

from collections.abc import Mapping

from torch import nn

from mpsearch.quant.config import QuantConfig
from mpsearch.quant.nna.base import NNAModule
from mpsearch.quant.nna.errors import NNAError
from mpsearch.quant.nna.gru import NNAGRU
from mpsearch.quant.nna.hf_positions import HOST_TABLES
from mpsearch.quant.nna.layers import NNAConv1d, NNAEmbedding, NNALinear, NNAWeighted
from mpsearch.quant.nna.lstm import NNALSTM
from mpsearch.quant.nna.norm import NNAGroupNorm
from mpsearch.quant.nna.numerics import NNANumerics
from mpsearch.quant.nna.ops import NNAGELU, NNAAdd, NNAReLU, NNASigmoid, NNASiLU, NNATanh
from mpsearch.quant.nna.positions import NNAAddPositions
from mpsearch.quant.nna.rewrites import rewrite_inline_arithmetic
from mpsearch.quant.nna.transformer import (
    NNAGLU,
    NNALayerNorm,
    NNAMask,
    NNAMatMul,
    NNAMul,
    NNARotary,
    NNASoftmax,
)
from mpsearch.quant.prepare import swap_modules

NNA_MODULES: dict[type[nn.Module], type[NNAWeighted]] = {
    nn.Linear: NNALinear,
    nn.Conv1d: NNAConv1d,
    nn.Embedding: NNAEmbedding,
    nn.LSTM: NNALSTM,
    nn.GRU: NNAGRU,
}
# Float ops (torch modules, or model op modules by their `op_name`) -> integer versions.
NNA_OPS = {nn.ReLU: NNAReLU, nn.Tanh: NNATanh, nn.Sigmoid: NNASigmoid, nn.SiLU: NNASiLU, nn.GELU: NNAGELU,
           nn.GLU: NNAGLU}
NNA_NAMED_OPS = {"add": NNAAdd, "mul": NNAMul, "matmul": NNAMatMul, "softmax": NNASoftmax, "rotary": NNARotary,
                 "mask": NNAMask, "positions": NNAAddPositions}
# Leaves that compute nothing once dropout is off.
PASSIVE = (nn.Identity, nn.Dropout)


def check_site(site_name: str, cfg: QuantConfig | None, numerics: NNANumerics) -> None:
    """Raise an NNAError if the chip cannot run site `site_name` as `cfg` says."""
    if cfg is None:
        raise NNAError(f"Site '{site_name}' is kept float, which the NNA cannot run; give it a QuantConfig "
                       "(every site runs in integers on the chip).")
    if not cfg.symmetric:
        raise NNAError(f"Site '{site_name}' has asymmetric weights; the NNA takes symmetric weights "
                       "(zero point 0): set 'symmetric: true'.")
    if cfg.act_bits != numerics.activation_bits:
        raise NNAError(f"Site '{site_name}' asks for act_bits {cfg.act_bits}, but the NNA moves activations "
                       f"at {numerics.activation_bits} bits; set act_bits to {numerics.activation_bits}.")


def supported_names() -> str:
    names = [c.__name__ for c in (*NNA_MODULES, *NNA_OPS, nn.LayerNorm, nn.GroupNorm)]
    names += [f"op '{n}'" for n in NNA_NAMED_OPS]
    return ", ".join([*names, "Dropout"])


def float_class(module: nn.Module) -> type[nn.Module] | None:
    for cls in NNA_MODULES:
        if isinstance(module, cls):
            return cls
    return None


def to_nna(model: nn.Module, per_module: Mapping[str, Mapping[str, QuantConfig | None]],
           numerics: NNANumerics, errors: list[tuple[str, nn.Module, NNAError]] | None = None) -> nn.Module:
    """Replace, in place, every module of `model` by its NNA version; returns the (possibly new) root.

    With `errors`, a module that has no NNA version is left as it is and (name, module, error) appended.
    """
    rewrite_inline_arithmetic(model, errors)
    replacements: dict[str, nn.Module] = {}
    for name, module in model.named_modules():
        if any(name.startswith(done + ".") for done in replacements if done):
            continue
        try:
            new = _replacement(name, module, per_module, numerics)
        except NNAError as exc:
            if errors is None:
                raise
            errors.append((name, module, exc))
            continue
        if new is not None:
            if isinstance(new, NNAModule):
                new.nna_name = name or "<root>"
            replacements[name] = new
    return swap_modules(model, replacements)


def _replacement(name: str, module: nn.Module, per_module: Mapping[str, Mapping[str, QuantConfig | None]],
                 numerics: NNANumerics) -> nn.Module | None:
    if name in per_module:
        if float_class(module) is None:
            raise NNAError(f"Module '{name}' ({type(module).__name__}) has no NNA integer version; supported: "
                           f"{supported_names()}.")
        return NNA_MODULES[float_class(module)].from_float(module, per_module[name], numerics)
    if isinstance(module, nn.Dropout):
        return nn.Identity()  # the chip has no dropout; training sees the deployed graph
    for cls, nna_cls in NNA_OPS.items():
        if type(module) is cls:
            return nna_cls.from_op(module, numerics) if nna_cls is not NNAReLU else NNAReLU()
    if isinstance(module, nn.LayerNorm):
        return NNALayerNorm.from_op(module, numerics)
    if type(module) is nn.GroupNorm:
        return NNAGroupNorm.from_op(module, numerics)
    if isinstance(module, nn.modules.batchnorm._BatchNorm):
        raise NNAError(f"Module '{name}' ({type(module).__name__}) has no NNA integer version: the chip folds "
                       "batch norm into the convolution before it, which apply() does for a BatchNorm1d in eval "
                       "mode registered right after its Conv1d; put the model in eval mode before apply, or use "
                       "a LayerNorm (a Conformer's conv_norm: layer, the default).")
    op_name = getattr(type(module), "op_name", None)
    if op_name is not None:
        if op_name not in NNA_NAMED_OPS:
            raise NNAError(f"Module '{name}' is op '{op_name}', which has no NNA version yet; supported: "
                           f"{supported_names()}.")
        return NNA_NAMED_OPS[op_name].from_op(module, numerics)
    if type(module).__name__.endswith("SamePadLayer"):
        return None  # trims frames: a slice, which calibration checks like any other
    if type(module).__name__ in HOST_TABLES:
        return None  # a table of the input's length alone, made on the host
    if not list(module.children()) and not isinstance(module, PASSIVE):
        raise NNAError(f"Module '{name or '<root>'}' ({type(module).__name__}) has no NNA integer version; "
                       f"supported: {supported_names()}.")
    return None
