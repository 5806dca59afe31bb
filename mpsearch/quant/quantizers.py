"""Weight and activation quantizers, registered by the method name a policy uses.

A weight quantizer is built from a QuantConfig and the weight it will quantize
(`QUANTIZERS.get(cfg.method).from_config(cfg, weight)`) and is composed of parts (mpsearch.quant.parts):
a BitWidth (the integer range), a rounding mode and a scale part; the zero point comes from the scale
part. Its public interface, which the contract suite in mpsearch.testing relies on and nothing more:

    forward(w) -> fake-quantized float w (straight-through gradients)
    quantize_int(w) -> (int8 codes, scale, zero_point), with (codes - zero_point) * scale == forward(w)
    bits, levels, set_bits(b), scale_and_zero_point(w), check_config(cfg)
    quantized_in_training: whether forward(w) in training mode is already on the grid (a method that
        trains float weights, as ADMM does, or assigns them softly, as GQ does while annealing, is
        quantized in eval mode only; export and deployment use the eval-mode forward)

The registries and base quantizers live in `weight_quantizers` and `activation_quantizers`; methods
beyond uniform and lsq (gq, s8bqat, admm) live in `mpsearch.quant.methods` and register there, so this
module, which imports them all, sees every method. Activation quantizers are per tensor and chosen by
the weight method's `activation_method`.
"""

from __future__ import annotations

from torch import Tensor

from mpsearch.quant import methods  # noqa: F401  (importing registers gq, s8bqat and admm)
from mpsearch.quant.activation_quantizers import ACTIVATION_QUANTIZERS, ActivationQuantizer
from mpsearch.quant.config import QuantConfig
from mpsearch.quant.weight_quantizers import QUANTIZERS, WeightQuantizer


def make_weight_quantizer(cfg: QuantConfig, weight: Tensor) -> WeightQuantizer:
    """The registered weight quantizer for cfg.method, built for `weight`."""
    return QUANTIZERS.get(cfg.method).from_config(cfg, weight)


def make_activation_quantizer(cfg: QuantConfig) -> ActivationQuantizer | None:
    """The activation quantizer cfg.method uses, or None when cfg.act_bits is None (float activations)."""
    if cfg.act_bits is None:
        return None
    return ACTIVATION_QUANTIZERS.get(QUANTIZERS.get(cfg.method).activation_method).from_config(cfg)
