import copy

import pytest
import torch
from torch import nn

from mpsearch.errors import ConfigError, MpsearchError, PolicyError
from mpsearch.quant import (
    Policy,
    QuantConfig,
    activation_quantizers,
    apply,
    calibrating,
    export_weights,
    find_sites,
    freeze_activation_ranges,
    quantized_sites,
)
from mpsearch.quant.modules import QuantConv1d, QuantEmbedding, QuantLinear, QuantLSTM
from mpsearch.testing.toy_models import ToySpeechModel, toy_batch


def make_model():
    torch.manual_seed(0)
    return ToySpeechModel()


def batch():
    return toy_batch(make_model(), batch=3, frames=9, tokens=4)


W8 = QuantConfig(weight_bits=8, act_bits=None)


def test_apply_keeps_the_original_model_untouched():
    model = make_model()
    before = copy.deepcopy(model.state_dict())
    quantized = apply(model, Policy.uniform(QuantConfig(weight_bits=4)))
    assert all(type(m) in (ToySpeechModel, nn.Conv1d, nn.LSTM, nn.Embedding, nn.Linear) for m in model.modules())
    for key, value in model.state_dict().items():
        assert torch.equal(value, before[key])
    assert quantized is not model
    assert isinstance(quantized.frontend, QuantConv1d) and isinstance(quantized.encoder, QuantLSTM)
    assert isinstance(quantized.embed, QuantEmbedding) and isinstance(quantized.joiner, QuantLinear)
    assert quantized.joiner.weight is not model.joiner.weight


@pytest.mark.parametrize("method", ["uniform", "lsq"])
@pytest.mark.parametrize("act_bits", [None, 8])
def test_8_bit_output_is_close_to_float(method, act_bits):
    model = make_model().eval()
    feats, tokens = batch()
    with torch.no_grad():
        ref = model(feats, tokens)
        quantized = apply(model, Policy.uniform(QuantConfig(weight_bits=8, act_bits=act_bits, method=method)))
        with calibrating(quantized):
            quantized(feats, tokens)
        out = quantized(feats, tokens)
    rel = float((out - ref).norm() / ref.norm())
    assert 0 < rel < (0.03 if method == "uniform" else 0.08), rel


def test_state_dict_keeps_the_float_names_and_loads_float_checkpoints():
    model = make_model()
    quantized = apply(model, Policy.uniform(QuantConfig(weight_bits=4, method="lsq")))
    float_keys = set(model.state_dict())
    assert float_keys <= set(quantized.state_dict())
    result = quantized.load_state_dict(model.state_dict(), strict=False)
    assert result.unexpected_keys == []
    assert all("quantizers." in key for key in result.missing_keys)
    assert [s.name for s in find_sites(quantized)] == [s.name for s in find_sites(model)]


def test_gradients_flow_to_all_float_weights():
    for cfg in (QuantConfig(weight_bits=4, act_bits=8), QuantConfig(weight_bits=3, act_bits=6, method="lsq")):
        quantized = apply(make_model(), Policy.uniform(cfg)).train()
        feats, tokens = batch()
        with torch.no_grad(), calibrating(quantized):  # an uncalibrated hidden-state quantizer is skipped once
            quantized(feats, tokens)
        quantized(feats, tokens).square().mean().backward()
        for name, param in quantized.named_parameters():
            assert param.grad is not None, name
            assert torch.isfinite(param.grad).all(), name
            assert param.grad.abs().sum() > 0, name


def test_uniform_4_bit_uses_at_most_16_values_per_channel():
    quantized = apply(make_model(), Policy.uniform(QuantConfig(weight_bits=4, act_bits=None)))
    checked = 0
    for module in quantized.modules():
        for param in getattr(module, "weight_quantizers", {}):
            w = module.quantized(param).detach()
            for row in w.reshape(w.shape[0], -1):
                assert row.unique().numel() <= 16
            checked += 1
    assert checked == len(find_sites(make_model())) == 9


def test_mixed_per_site_policy_lands_on_the_right_modules():
    policy = Policy({
        "encoder.weight_hh_l1": QuantConfig(weight_bits=3, method="lsq"),
        "re:encoder\\.weight_ih_.*": QuantConfig(weight_bits=6, act_bits=None, granularity="per_tensor"),
        "embed": None,
        "_default": QuantConfig(weight_bits=8, act_bits=None),
        "predictor.weight_hh_l0": None,
    })
    quantized = apply(make_model(), policy)
    sites = quantized_sites(quantized)
    assert sorted(sites) == sorted(["frontend", "encoder.weight_ih_l0", "encoder.weight_hh_l0",
                                    "encoder.weight_ih_l1", "encoder.weight_hh_l1",
                                    "predictor.weight_ih_l0", "joiner"])
    assert type(quantized.embed) is nn.Embedding
    assert (sites["encoder.weight_hh_l1"].bits, type(sites["encoder.weight_hh_l1"]).__name__) == (3, "LsqQuantizer")
    assert sites["encoder.weight_ih_l0"].bits == 6 and not sites["encoder.weight_ih_l0"].per_channel
    assert sites["encoder.weight_hh_l0"].bits == 8 and sites["joiner"].bits == 8
    assert set(quantized.predictor.weight_quantizers) == {"weight_ih_l0"}
    # Only the LSQ site has act_bits (8 by default): the hidden state enters weight_hh_l1 quantized.
    assert set(activation_quantizers(quantized)) == {"encoder.weight_hh_l1"}
    assert quantized.encoder._path() == "unrolled" and quantized.predictor._path() == "fused"


def test_export_weights_reproduces_the_fake_quantized_weights():
    quantized = apply(make_model(), Policy.uniform(QuantConfig(weight_bits=5, symmetric=False, act_bits=None)))
    exported = export_weights(quantized)
    assert set(exported) == set(quantized_sites(quantized))
    codes, scale, zero_point, bits = exported["encoder.weight_hh_l1"]
    assert bits == 5 and codes.dtype == torch.int8 and int(codes.min()) >= -16 and int(codes.max()) <= 15
    dequantized = (codes.float() - zero_point.float()) * scale
    assert torch.allclose(dequantized, quantized.encoder.quantized("weight_hh_l1"), atol=1e-7)


def test_calibration_then_freeze():
    quantized = apply(make_model(), Policy.uniform(QuantConfig(weight_bits=8, act_bits=8)))
    feats, tokens = batch()
    acts = activation_quantizers(quantized)
    assert acts and not any(q.initialized for q in acts.values())
    with torch.no_grad(), calibrating(quantized):
        float_out = quantized(feats, tokens)
    assert all(q.initialized for q in acts.values()) and not any(q.calibrating for q in acts.values())
    freeze_activation_ranges(quantized)
    state = {k: v.clone() for k, v in quantized.state_dict().items() if isinstance(v, torch.Tensor)}
    quantized.train()
    out = quantized(feats * 5, tokens)
    assert not torch.equal(out, float_out)
    for key, value in quantized.state_dict().items():
        if "running_" in key:
            assert torch.equal(value, state[key]), key


def test_emulation_must_be_a_known_value():
    with pytest.raises(ConfigError, match="Unknown emulation 'fpga'; valid choices: nna, none"):
        apply(make_model(), Policy.uniform(W8), emulation="fpga")


def test_policy_is_validated_against_the_model():
    with pytest.raises(PolicyError, match="Unknown site 'decoder'"):
        apply(make_model(), Policy({"decoder": W8}))
    with pytest.raises(PolicyError,
                       match="Unknown method 'gq2' for 'joiner'; valid choices: admm, gq, lsq, s8bqat, uniform"):
        apply(make_model(), Policy({"joiner": QuantConfig(method="gq2")}))
    with pytest.raises(PolicyError, match="Site 'joiner': Method 'lsq'.*symmetric"):
        apply(make_model(), Policy({"joiner": QuantConfig(method="lsq", symmetric=False)}))
    with pytest.raises(PolicyError, match="Site 'joiner': Unknown option"):
        apply(make_model(), Policy({"joiner": QuantConfig(options={"temp": 1})}))
    with pytest.raises(PolicyError, match="Site 'joiner': N:M sparsity 2:5 .* size 24"):
        apply(make_model(), Policy({"joiner": QuantConfig(sparsity="2:5")}))


def test_modules_a_swap_would_break_are_refused():
    class Scaled(nn.Linear):
        def forward(self, x):
            return 2 * super().forward(x)

    with pytest.raises(PolicyError, match="overrides Linear.forward"):
        apply(nn.Sequential(Scaled(3, 3)), Policy.uniform(W8))
    attention = nn.Sequential(nn.MultiheadAttention(8, 2))
    # Split into separate projections first (mpsearch.quant.prepare), so every weight can be quantized.
    assert set(quantized_sites(apply(attention, Policy.uniform(W8)))) == {"0.q_proj", "0.k_proj", "0.v_proj",
                                                                          "0.out_proj"}
    quantized = apply(nn.Sequential(nn.Linear(3, 3)), Policy.uniform(W8))
    with pytest.raises(PolicyError, match="already quantized"):
        apply(quantized, Policy.uniform(W8))


def test_a_bare_module_can_be_the_whole_model():
    lstm = nn.LSTM(4, 5)
    quantized = apply(lstm, Policy.uniform(W8))
    assert isinstance(quantized, QuantLSTM) and set(quantized_sites(quantized)) == {".weight_ih_l0", ".weight_hh_l0"}


def test_errors_are_mpsearch_errors():
    assert issubclass(ConfigError, MpsearchError) and issubclass(PolicyError, MpsearchError)


def test_works_on_the_projects_rnnt():
    rnnt = pytest.importorskip("mpsearch.models.rnnt")
    torch.manual_seed(0)
    model = rnnt.RNNT(rnnt.RNNTConfig(n_mels=8, vocab_size=6, frontend_dim=16, enc_hidden=16, enc_layers=2,
                                      pred_embed=8, pred_hidden=16, joint_dim=16, dropout=0.0)).eval()
    feats, feat_lens = torch.randn(2, 20, 8), torch.tensor([20, 13])
    targets, target_lens = torch.randint(1, 6, (2, 3)), torch.tensor([3, 2])
    quantized = apply(model, Policy.uniform(QuantConfig(weight_bits=8, act_bits=8)))
    with torch.no_grad():
        with calibrating(quantized):
            quantized(feats, feat_lens, targets, target_lens)
        ref = model(feats, feat_lens, targets, target_lens)
        loss = quantized(feats, feat_lens, targets, target_lens)
        assert abs(float(loss - ref)) < 0.05 * abs(float(ref))
    assert len(quantized.greedy_decode(feats, feat_lens)) == 2  # the predictor's step-with-state path


def test_a_quantized_checkpoint_restores_into_a_fresh_apply():
    policy = Policy({"encoder.weight_hh_l0": QuantConfig(weight_bits=4, method="lsq"),
                     "_default": QuantConfig(weight_bits=6, act_bits=8)})
    feats, tokens = batch()
    trained = apply(make_model(), policy).train()
    opt = torch.optim.SGD(trained.parameters(), lr=0.1)
    for _ in range(2):
        opt.zero_grad()
        trained(feats, tokens).square().mean().backward()
        opt.step()
    trained.eval()
    restored = apply(make_model(), policy).eval()
    restored.load_state_dict(trained.state_dict())
    clone = copy.deepcopy(trained)
    with torch.no_grad():
        expected = trained(feats, tokens)
        assert torch.equal(restored(feats, tokens), expected)
        assert torch.equal(clone(feats, tokens), expected)
