"""apply(..., emulation="nna") and calibrate_nna: what they swap, what they refuse, and why."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from mpsearch.errors import ConfigError
from mpsearch.models.ops import Add
from mpsearch.quant import Policy, QuantConfig, apply, calibrating, find_sites
from mpsearch.quant.nna import NNAError, NNANumerics, calibrate_nna, checking_grid
from mpsearch.quant.nna.layers import NNAConv1d, NNAEmbedding, NNALinear
from mpsearch.quant.nna.lstm import NNALSTM
from mpsearch.quant.nna.ops import NNAAdd, NNAReLU, NNATanh

W8 = Policy.uniform(QuantConfig(weight_bits=8))


class TwoLayers(nn.Module):
    def __init__(self, inline: str = "none"):
        super().__init__()
        self.a = nn.Linear(4, 6)
        self.b = nn.Linear(6, 3)
        self.c = nn.Linear(4, 6)
        self.add = Add()
        self.inline = inline

    def forward(self, x):
        y = self.a(x)
        if self.inline == "scale":
            y = y * 2.0
        elif self.inline == "cat":
            y = torch.cat([y, self.c(x)], dim=0)
        elif self.inline == "add":
            y = self.add(y, self.c(x))
        else:
            self.c(x)
        return self.b(torch.relu(y).transpose(0, 1).transpose(0, 1))


def test_rnnt_modules_are_swapped_and_dropout_removed(tiny_rnnt):
    model = apply(tiny_rnnt, W8, emulation="nna")
    assert isinstance(model.frontend.conv1, NNAConv1d) and isinstance(model.frontend.activation, NNAReLU)
    assert isinstance(model.encoder.lstm, NNALSTM) and isinstance(model.encoder.proj, NNALinear)
    assert isinstance(model.predictor.embed, NNAEmbedding)
    assert isinstance(model.joiner.add, NNAAdd) and isinstance(model.joiner.activation, NNATanh)
    assert not any(isinstance(m, nn.Dropout) for m in model.modules())
    assert [s.name for s in find_sites(model)] == [s.name for s in find_sites(tiny_rnnt)]
    assert isinstance(tiny_rnnt.joiner.add, Add)  # the float model is untouched


def test_float_op_modules_behave_like_the_inline_expression():
    a, b = torch.randn(3, 1, 4), torch.randn(1, 5, 4)
    assert torch.equal(Add()(a, b), a + b)


@pytest.mark.parametrize("config, message", [
    (None, r"Site 'a' is kept float, which the NNA cannot run"),
    (QuantConfig(symmetric=False), r"Site 'a' has asymmetric weights; .* set 'symmetric: true'"),
    (QuantConfig(act_bits=6), r"Site 'a' asks for act_bits 6, but the NNA moves activations at 8 bits"),
    (QuantConfig(act_bits=None), r"Site 'a' asks for act_bits None"),
])
def test_sites_the_chip_cannot_run_are_refused(config, message):
    with pytest.raises(NNAError, match=message):
        apply(TwoLayers(), Policy({"_default": QuantConfig(), "a": config}), emulation="nna")


def test_numerics_need_the_nna_emulation():
    with pytest.raises(ConfigError, match="pass it with emulation='nna'"):
        apply(TwoLayers(), W8, numerics=NNANumerics())


def test_a_leaf_module_without_an_integer_version_is_named():
    model = nn.Sequential(nn.Linear(4, 4), nn.Mish())
    with pytest.raises(NNAError, match=r"Module '1' \(Mish\) has no NNA integer version; "
                                       r"supported: Linear"):
        apply(model, W8, emulation="nna")


def test_inline_float_arithmetic_between_layers_is_caught_at_calibration():
    model = apply(TwoLayers("scale"), W8, emulation="nna")
    with pytest.raises(NNAError, match=r"The input of 'b' is computed by MulBackward0 in float outside "
                                       r"any NNA module, which the chip cannot run"):
        calibrate_nna(model, [torch.randn(5, 4)])


def test_joining_tensors_of_two_producers_in_float_is_caught():
    model = apply(TwoLayers("cat"), W8, emulation="nna")
    with pytest.raises(NNAError, match=r"joins tensors of different scales \('a', 'c'\) by CatBackward0"):
        calibrate_nna(model, [torch.randn(5, 4)])


def test_links_pass_views_and_relu_and_the_add_takes_both_scales():
    model = apply(TwoLayers("add"), W8, emulation="nna")
    calibrate_nna(model, [torch.randn(5, 4), torch.randn(7, 4)])
    assert model.add.input_sources == ["a", "c"] and model.b.input_sources == ["add"]
    assert torch.equal(model.b.in_scales[0], model.add.out_scale)
    with checking_grid():
        model(torch.randn(3, 4))


def test_a_module_called_from_two_producers_is_refused():
    class Shared(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.c, self.b = nn.Linear(4, 4), nn.Linear(4, 4), nn.Linear(4, 4)

        def forward(self, x):
            return self.b(self.a(x)) + self.b(self.c(x))

    model = apply(Shared(), W8, emulation="nna")
    with pytest.raises(NNAError, match=r"Input 0 of 'b' comes from 'a' in one call and 'c' in another"):
        calibrate_nna(model, [torch.randn(2, 4)])


def test_calibration_needs_batches_that_reach_every_module():
    class Unused(TwoLayers):
        def forward(self, x):
            return self.b(self.a(x))

    model = apply(Unused(), W8, emulation="nna")
    with pytest.raises(NNAError, match=r"'c' saw no data during calibration"):
        calibrate_nna(model, [torch.randn(2, 4)])


def test_calibration_is_refused_twice_and_without_nna_modules():
    model = apply(TwoLayers("add"), W8, emulation="nna")
    with pytest.raises(NNAError, match="got no batches"):
        calibrate_nna(model, [])
    with pytest.raises(NNAError, match="has no calibrated scales"):
        model(torch.randn(2, 4))
    calibrate_nna(model, [torch.randn(2, 4)])
    with pytest.raises(NNAError, match="already calibrated; apply the policy to the float model again"):
        calibrate_nna(model, [torch.randn(2, 4)])
    with pytest.raises(NNAError, match="no NNA modules"):
        calibrate_nna(TwoLayers(), [torch.randn(2, 4)])


def test_calibration_restores_requires_grad_and_training_mode():
    model = apply(TwoLayers("add"), W8, emulation="nna")
    model.a.weight.requires_grad_(False)
    model.train()
    with torch.no_grad():
        calibrate_nna(model, [torch.randn(2, 4)])
    assert not model.a.weight.requires_grad and model.b.weight.requires_grad and model.training


def test_unsupported_lstm_variants_are_refused():
    with pytest.raises(NNAError, match="runs LSTMs without proj_size"):
        apply(nn.Sequential(nn.LSTM(4, 6, proj_size=3)), W8, emulation="nna")


def test_a_producer_read_only_through_relu_spends_its_range_on_positive_values():
    x = torch.randn(64, 4)
    model = apply(nn.Sequential(nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 3)), W8, emulation="nna")
    calibrate_nna(model, [x])
    with torch.no_grad():
        y = nn.functional.linear(x, model[0].quantized("weight"), model[0].bias)
    assert y.min() < -y.max() / 4  # negative values exist and would have cost range
    assert float(model[0].out_scale) == pytest.approx(float(y.max()) / 127, rel=1e-6)
    assert model[2].input_sources == ["0"]


def test_a_producer_read_only_by_a_table_stops_its_range_where_the_table_saturates():
    float_model = nn.Sequential(nn.Linear(4, 4), nn.Tanh(), nn.Linear(4, 2))
    with torch.no_grad():
        float_model[0].weight.mul_(50.0)
    model = apply(float_model, W8, emulation="nna")
    calibrate_nna(model, [torch.randn(32, 4)])
    assert float(model[0].out_scale) == pytest.approx(4.0 / 127)
    assert float(model[1].out_scale) == pytest.approx(1 / 127) and model[2].input_sources == ["1"]


def test_the_fake_quant_calibration_context_points_to_calibrate_nna():
    model = apply(TwoLayers(), W8, emulation="nna")
    with pytest.raises(NNAError, match=r"calibrates with mpsearch\.quant\.nna\.calibrate_nna\(model, "), \
            calibrating(model):
        pass
