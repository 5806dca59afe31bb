"""export_int: the calibrated NNA model as the chip holds it, in one .npz with a JSON header.

Arrays are named `<module>.<item>` (LSTM layers `<module>.l<k>.<item>`): int8 weight codes (narrower
widths still in int8, with their bits in the header), int32 biases at the accumulator scale, int32
multipliers and int8 shifts of every requantisation, int8 lookup tables; LayerNorm's int16 gamma,
int32 beta and int64 eps term, softmax's int16 exp table and int64 reciprocal numerator. The header (`__header__`, a
JSON string) holds `_type`, `_version`, the architecture name and its config (layer sizes), the
numerics, per module its kind, input links and scales, and per site its bits and packed size in
bytes (for the latency model's storage count). Scales are informational except the model input's,
which the host uses to quantize features; everything the chip computes with is an integer array.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from mpsearch.artifacts import atomic_path
from mpsearch.quant.nna.base import NNAModule
from mpsearch.quant.nna.calibrate import nna_modules
from mpsearch.quant.nna.errors import NNAError
from mpsearch.quant.nna.fileformat import EXPORT_TYPE, EXPORT_VERSION, HEADER_KEY
from mpsearch.quant.nna.layers import NNAConv1d, NNAEmbedding, NNALinear
from mpsearch.quant.nna.lstm import NNALSTM
from mpsearch.quant.nna.ops import NNAAdd, NNALookup
from mpsearch.quant.nna.transformer import (
    NNAGLU,
    NNALayerNorm,
    NNAMask,
    NNAMatMul,
    NNAMul,
    NNARotary,
    NNASoftmax,
)

# Stored dtype of each array item; the chip's widths (values were saturated to them already).
DTYPES = {"weight": np.int8, "weight_ih": np.int8, "weight_hh": np.int8, "bias": np.int32, "lut": np.int8,
          "gate_luts": np.int8, "cell_lut": np.int8, "shift": np.int8, "gate_shift": np.int8,
          "cell_shift": np.int8, "cell_tanh_shift": np.int8, "hidden_shift": np.int8, "gamma": np.int16,
          "beta": np.int32, "eps": np.int64, "exp_lut": np.int16, "numerator": np.int64}
KINDS = ((NNALSTM, "lstm"), (NNALinear, "linear"), (NNAConv1d, "conv1d"), (NNAEmbedding, "embedding"),
         (NNAAdd, "add"), (NNAMul, "mul"), (NNAMatMul, "matmul"), (NNALayerNorm, "layer_norm"),
         (NNASoftmax, "softmax"), (NNARotary, "rotary"), (NNAGLU, "glu"), (NNAMask, "mask"))


def _array(item: str, value: torch.Tensor) -> np.ndarray:
    return value.detach().cpu().numpy().astype(DTYPES.get(item, np.int32))


def _kind(module: NNAModule) -> str:
    for cls, kind in KINDS:
        if isinstance(module, cls):
            return kind
    if isinstance(module, NNALookup):
        return module.function
    raise NNAError(f"No integer export for {type(module).__name__}; supported: "
                   f"{', '.join(kind for _, kind in KINDS)}, tanh, sigmoid, silu, gelu.")


def _check_exportable(modules: dict[str, NNAModule]) -> None:
    """One line naming the first module the integer executor cannot run (the emulation runs more)."""
    for name, module in modules.items():
        if isinstance(module, NNALSTM) and module.bidirectional:
            raise NNAError(f"'{name}' is a bidirectional LSTM, which has no integer export (the executor runs "
                           "unidirectional LSTMs); train it with emulation='nna', or export a unidirectional model.")
        try:
            _kind(module)
        except NNAError as exc:
            raise NNAError(f"'{name}' has no integer export: {exc} Train it with emulation='nna', or export a "
                           "model built from the supported modules.") from None


def _site(name: str, codes: torch.Tensor, bits: int) -> dict[str, Any]:
    numel = codes.numel()
    return {"bits": bits, "shape": list(codes.shape), "numel": numel,
            "packed_bytes": math.ceil(numel * bits / 8)}


@torch.no_grad()
def _export_module(name: str, module: NNAModule, arrays: dict[str, np.ndarray],
                   sites: dict[str, dict[str, Any]]) -> dict[str, Any]:
    info: dict[str, Any] = {"kind": _kind(module), "inputs": list(module.input_sources),
                            "in_scales": [float(s) for s in module.in_scales],
                            "out_scale": float(module.out_scale)}
    ignored = ("weight_scale", "weight_ih_scale", "weight_hh_scale", "bits", "bits_ih", "bits_hh", "gamma_scale")
    if isinstance(module, NNALSTM):
        info.update(layers=module.num_layers, input_size=module.input_size, hidden_size=module.hidden_size,
                    batch_first=module.batch_first,
                    hidden_scales=[float(s) for s in module.hidden_scales],
                    cell_scales=[float(s) for s in module.cell_scales],
                    gate_scales=module.gate_scales.tolist())
        for layer in range(module.num_layers):
            p = module.layer_params(layer)
            for item, value in p.items():
                if item not in ignored:
                    arrays[f"{name}.l{layer}.{item}"] = _array(item, value)
            for param, item, bits in ((f"weight_ih_l{layer}", "weight_ih", "bits_ih"),
                                      (f"weight_hh_l{layer}", "weight_hh", "bits_hh")):
                sites[f"{name}.{param}"] = _site(f"{name}.{param}", p[item], int(p[bits]))
    elif isinstance(module, (NNALinear, NNAConv1d, NNAEmbedding)):
        p = module.integer_params()
        for item, value in p.items():
            if item not in ignored:
                arrays[f"{name}.{item}"] = _array(item, value)
        sites[name] = _site(name, p["weight"], int(p["bits"]))
        if isinstance(module, NNAConv1d):
            info.update(stride=list(module.stride), padding=list(module.padding),
                        dilation=list(module.dilation), groups=module.groups)
    elif isinstance(module, (NNAAdd, NNAMul, NNAMatMul, NNARotary, NNAGLU, NNALayerNorm)):
        p = module.integer_params()
        for item, value in p.items():
            if item not in ignored:
                arrays[f"{name}.{item}"] = _array(item, value)
        if isinstance(module, NNALayerNorm):
            info.update(dim=module.dim, channels=module.normalized_shape[0],
                        gamma_scale=float(p["gamma_scale"]))
        elif isinstance(module, NNAGLU):
            info.update(dim=module.dim)
        elif isinstance(module, NNARotary):
            info.update(base=module.base)
        elif isinstance(module, NNAAdd):
            info.update(alpha=module.alpha, beta=module.beta)
        elif isinstance(module, NNAMatMul):
            info.update(divisor=module.divisor)
    elif isinstance(module, NNASoftmax):
        arrays[f"{name}.exp_lut"] = _array("exp_lut", module.exp_lut)
        arrays[f"{name}.numerator"] = _array("numerator", torch.tensor(module.numerator))
    elif isinstance(module, NNALookup):
        arrays[f"{name}.lut"] = _array("lut", module.lut)
    return info


def export_int(model: nn.Module, path: str | Path) -> dict[str, Any]:
    """Write the integer model of a calibrated NNA model to `path` (.npz); returns the header.

    The architecture is `model.nna_architecture` if set, else the class name in lower case ("rnnt");
    its sizes come from `model.config.to_dict()` when the model has a config.
    """
    modules = nna_modules(model)
    if not modules:
        raise NNAError("The model has no NNA modules; make it with apply(model, policy, emulation='nna') "
                       "first.")
    for name, module in modules.items():
        if module.phase != "frozen":
            raise NNAError(f"'{name}' is not calibrated; run calibrate_nna(model, batches) before "
                           "export_int.")
    _check_exportable(modules)
    arrays: dict[str, np.ndarray] = {}
    sites: dict[str, dict[str, Any]] = {}
    infos = {name: _export_module(name, module, arrays, sites) for name, module in modules.items()}
    config = getattr(model, "config", None)
    numerics = next(iter(modules.values())).numerics
    header = {
        "_type": EXPORT_TYPE,
        "_version": EXPORT_VERSION,
        "architecture": getattr(model, "nna_architecture", type(model).__name__.lower()),
        "config": config.to_dict() if hasattr(config, "to_dict") else {},
        "numerics": numerics.to_dict(),
        "modules": infos,
        "sites": sites,
    }
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        np.savez(f, **{HEADER_KEY: np.array(json.dumps(header))}, **arrays)
    return header
