"""Policies and helpers shared by the tests that run the emulated RNN-T and Conformer on real speech."""

from __future__ import annotations

import numpy as np
import torch

from mpsearch.quant import Policy, QuantConfig, apply, quantized_sites
from mpsearch.quant.nna import calibrate_nna, export_int

UNIFORM_8 = Policy.uniform(QuantConfig(weight_bits=8))
RNNT_MIXED_4_6_8 = Policy({
    "_default": QuantConfig(weight_bits=8),
    r"re:encoder\.lstm\..*": QuantConfig(weight_bits=4),
    r"re:predictor\..*": QuantConfig(weight_bits=6, method="lsq"),
    r"re:frontend\..*": QuantConfig(weight_bits=6, granularity="per_tensor"),
})
CONFORMER_MIXED_4_6_8 = Policy({
    "_default": QuantConfig(weight_bits=8),
    r"re:encoder\.blocks\.\d+\.ff[12]\..*": QuantConfig(weight_bits=4),
    r"re:encoder\.blocks\.\d+\.attn\..*": QuantConfig(weight_bits=6, method="lsq"),
    r"re:frontend\..*": QuantConfig(weight_bits=6, granularity="per_tensor"),
})


def emulate(model, speech, policy, numerics=None):
    """`model` under NNA emulation with `policy`, calibrated on the corpus' calibration batch."""
    result = apply(model, policy, emulation="nna", numerics=numerics)
    calibrate_nna(result, [speech.calibration])
    return result


def codes(x: torch.Tensor, scale: torch.Tensor) -> np.ndarray:
    """The integer codes an emulated tensor stands for at `scale`."""
    return torch.round(x.detach().double() / scale.double()).to(torch.int64).numpy()


def emulated_and_executor(model, speech, policy, numerics, executor_class, path):
    """`model` emulated (in eval mode) and the reference executor of its export to `path`; the export's header
    must give every quantized site its bits."""
    emulated = emulate(model, speech, policy, numerics).eval()
    expected_bits = {name: q.bits for name, q in quantized_sites(emulated).items()}
    header = export_int(emulated, path)
    assert {name: site["bits"] for name, site in header["sites"].items()} == expected_bits
    return emulated, executor_class(path)
