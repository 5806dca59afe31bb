"""Quantisation: sites, configs, policies, quantizers and `apply` (imports torch only)."""

from mpsearch.quant.apply import (
    activation_quantizers,
    apply,
    calibrating,
    export_weights,
    freeze_activation_ranges,
    quantized_sites,
)
from mpsearch.quant.config import QuantConfig, SparsityConfig
from mpsearch.quant.policy import Policy
from mpsearch.quant.quantizers import ACTIVATION_QUANTIZERS, QUANTIZERS
from mpsearch.quant.sites import Site, find_sites

__all__ = [
    "ACTIVATION_QUANTIZERS",
    "QUANTIZERS",
    "Policy",
    "QuantConfig",
    "Site",
    "SparsityConfig",
    "activation_quantizers",
    "apply",
    "calibrating",
    "export_weights",
    "find_sites",
    "freeze_activation_ranges",
    "quantized_sites",
]
