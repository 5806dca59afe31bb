import pytest
import torch
from torch import nn

from mpsearch.quant import Policy, QuantConfig, apply
from mpsearch.quant.parts import BitWidth, MinMaxScale, MseScale


@pytest.mark.parametrize(("scale", "part"), [("mse", MseScale), ("maxabs", MinMaxScale)])
def test_emulated_integer_weights_use_the_sites_weight_scale(scale, part):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(32, 16), nn.ReLU(), nn.Linear(16, 4))
    cfg = QuantConfig(weight_bits=3, act_bits=8, options={"weight_scale": scale})
    emulated = apply(model, Policy.uniform(cfg), emulation="nna")
    for layer in (emulated[0], emulated[2]):
        codes, w_scale, bits = layer.weight_codes("weight")
        expected, _ = part(per_channel=True)(layer.weight, BitWidth(3))
        assert bits == 3 and torch.allclose(w_scale, expected.flatten())
        assert torch.allclose(codes.float() * w_scale[:, None], layer.quantized("weight"))
