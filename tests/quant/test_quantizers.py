import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from mpsearch.errors import MpsearchError, PolicyError
from mpsearch.quant import ACTIVATION_QUANTIZERS, QUANTIZERS, QuantConfig
from mpsearch.quant.activation_quantizers import LsqActivationQuantizer, MinMaxActivationQuantizer
from mpsearch.quant.parts import BitWidth, MinMaxScale, MseScale
from mpsearch.quant.quantizers import make_activation_quantizer, make_weight_quantizer
from mpsearch.quant.rounding import RoundHalfAway, RoundHalfEven, RoundHalfUp
from mpsearch.quant.weight_quantizers import LsqQuantizer, UniformQuantizer

# A row of weights, a bit width and a grid symmetry: the cases the uniform scale properties run over.
ROWS_BITS_SYMMETRIC = given(st.lists(st.floats(-10.0, 10.0, allow_nan=False, width=32), min_size=2, max_size=64),
                            st.integers(2, 8), st.booleans())


def test_registries():
    assert QUANTIZERS.get("uniform") is UniformQuantizer and QUANTIZERS.get("lsq") is LsqQuantizer
    assert set(ACTIVATION_QUANTIZERS.names()) == {"lsq", "minmax"}
    with pytest.raises(MpsearchError, match="valid choices: admm, gq, lsq, s8bqat, uniform"):
        QUANTIZERS.get("gq2")


def test_integer_ranges():
    assert (BitWidth(8).qmin, BitWidth(8).qmax, BitWidth(8).levels) == (-127, 127, 255)
    assert (BitWidth(2).qmin, BitWidth(2).qmax) == (-1, 1)
    assert (BitWidth(8, "asymmetric").qmin, BitWidth(8, "asymmetric").qmax) == (-128, 127)
    assert (BitWidth(4, "unsigned").qmin, BitWidth(4, "unsigned").qmax) == (0, 15)
    with pytest.raises(PolicyError, match=r"\[2, 8\]"):
        BitWidth(9)


def test_symmetric_int8_uses_the_restricted_range_and_hits_both_ends():
    w = torch.tensor([[-2.0, 0.5, 1.0], [0.1, -0.3, 0.3]])
    q = UniformQuantizer(8, symmetric=True, per_channel=True, scale="maxabs")
    codes, scale, zero_point = q.quantize_int(w)
    assert codes.dtype == torch.int8
    assert codes[0].tolist()[0] == -127 and codes[1].abs().max() == 127
    assert torch.equal(zero_point, torch.zeros(2, 1, dtype=torch.int8))
    assert torch.allclose(scale.flatten(), torch.tensor([2.0 / 127, 0.3 / 127]))


def test_asymmetric_range_represents_zero_exactly():
    w = torch.tensor([[0.2, 0.9, 1.7, 3.1]])  # all positive: the range is widened to include 0
    q = UniformQuantizer(4, symmetric=False, per_channel=False)
    out = q(torch.cat([w, torch.zeros(1, 1)], dim=1))
    assert out[0, -1] == 0.0
    codes, scale, zero_point = q.quantize_int(w)
    assert int(zero_point) == -8 and int(codes.max()) == 7
    w2 = torch.tensor([[-1.0, -0.2, 0.0, 0.7, 3.0]])
    codes, scale, zero_point = q.quantize_int(w2)
    assert int(codes.min()) == -8 and int(codes.max()) == 7
    assert float(((torch.zeros(()) / scale).round() + zero_point - zero_point) * scale) == 0.0


def test_rounding_modes_differ_only_on_ties():
    x = torch.tensor([-2.5, -1.5, -0.5, 0.5, 1.5, 2.5, 0.49999997, -0.49999997, 1.2, -1.7])
    assert RoundHalfEven.round(x).tolist() == [-2, -2, -0, 0, 2, 2, 0, -0, 1, -2]
    assert RoundHalfAway.round(x).tolist() == [-3, -2, -1, 1, 2, 3, 0, 0, 1, -2]
    assert RoundHalfUp.round(x).tolist() == [-2, -1, -0, 1, 2, 3, 0, -0, 1, -2]


@settings(max_examples=60, deadline=None)
@given(st.lists(st.floats(-1e3, 1e3, allow_nan=False, width=32), min_size=1, max_size=40))
def test_half_away_matches_python_decimal_rounding(values):
    x = torch.tensor(values, dtype=torch.float32)
    expected = [math.copysign(math.floor(abs(v) + 0.5), v) if abs(v) % 1 == 0.5 else round(v) for v in x.tolist()]
    assert RoundHalfAway.round(x).tolist() == pytest.approx(expected)


@settings(max_examples=60, deadline=None)
@ROWS_BITS_SYMMETRIC
def test_uniform_error_is_at_most_half_a_step(values, bits, symmetric):
    w = torch.tensor(values).reshape(1, -1)
    q = UniformQuantizer(bits, symmetric=symmetric, per_channel=True, scale="maxabs")
    scale, _ = q.scale_and_zero_point(w)
    err = (q(w) - w).abs().max()
    assert err <= scale.max() * 0.5 * (1 + 1e-5) + 1e-7


@settings(max_examples=60, deadline=None)
@ROWS_BITS_SYMMETRIC
def test_mse_scale_never_does_worse_than_max_abs(values, bits, symmetric):
    w = torch.tensor(values).reshape(1, -1)
    mse = UniformQuantizer(bits, symmetric=symmetric, per_channel=True, scale="mse")
    maxabs = UniformQuantizer(bits, symmetric=symmetric, per_channel=True, scale="maxabs")
    mse_error, maxabs_error = float((mse(w) - w).square().sum()), float((maxabs(w) - w).square().sum())
    assert mse_error <= maxabs_error * (1 + 1e-5) + 1e-10
    # Asymmetric grids, max-abs (min/max) ones too, are not idempotent where the rounded zero point
    # leaves an end code unused ([1, -1] at 3 bits); symmetric ones always are.
    if symmetric:
        assert torch.allclose(mse(mse(w)), mse(w), atol=1e-6)


@pytest.mark.parametrize("method", ["uniform", "lsq"])
def test_mse_scale_reaches_the_error_targets_on_a_gaussian(method):
    w = torch.randn(256, 256, generator=torch.Generator().manual_seed(0))
    errors = {}
    for bits in (2, 3):
        for scale in ("mse", "maxabs"):
            cfg = QuantConfig(weight_bits=bits, act_bits=None, method=method, options={"weight_scale": scale})
            q = make_weight_quantizer(cfg, w).eval()
            with torch.no_grad():
                errors[bits, scale] = float((q(w) - w).norm() / w.norm())
    assert errors[2, "mse"] <= 0.50 and errors[3, "mse"] <= 0.22
    assert errors[2, "maxabs"] > 0.75 and errors[3, "maxabs"] > 0.27  # the option keeps the old scale


def test_mse_scale_is_the_default_and_maxabs_an_option():
    w = torch.randn(8, 16)
    assert isinstance(make_weight_quantizer(QuantConfig(), w).scaling, MseScale)
    assert isinstance(make_weight_quantizer(QuantConfig(options={"weight_scale": "maxabs"}), w).scaling, MinMaxScale)
    with pytest.raises(PolicyError, match="'weight_scale' must be one of maxabs, mse; got 'minmax'"):
        make_weight_quantizer(QuantConfig(options={"weight_scale": "minmax"}), w)


def test_mse_scale_clips_outliers_and_is_idempotent_per_tensor():
    gen = torch.Generator().manual_seed(1)
    w = torch.randn(64, 300, generator=gen)
    w[0, 0] = 40.0  # one outlier: max-abs would spend the 4-bit grid on it
    q = UniformQuantizer(4, per_channel=False)
    scale, _ = q.scale_and_zero_point(w)
    assert float(scale) < 40.0 / 7 / 2
    once = q(w)
    assert torch.allclose(q(once), once, atol=1e-6)
    assert float((once - w).norm()) < float((UniformQuantizer(4, per_channel=False, scale="maxabs")(w) - w).norm())


def test_uniform_scale_follows_the_weight_every_forward():
    q = UniformQuantizer(8)
    w = torch.randn(4, 5)
    assert torch.allclose(q(w * 3.0), q(w) * 3.0, atol=1e-6)


def test_lsq_step_init_and_paper_gradient():
    torch.manual_seed(0)
    w = torch.randn(6, 10)
    q = LsqQuantizer(4, w, per_channel=False)
    qp = 7
    step = q.scaling.step
    assert torch.allclose(step, MseScale(per_channel=False)(w, BitWidth(4))[0])  # LSQ+-style start
    with torch.no_grad():
        step.fill_(0.3)  # a step small enough that some weights clip
    upstream = torch.randn(6, 10)
    wq = w.clone().requires_grad_(True)
    (q(wq) * upstream).sum().backward()
    v = w / 0.3
    inside = (v > -qp) & (v < qp)
    expected_local = torch.where(inside, torch.round(v) - v, torch.where(v <= -qp, -qp, qp).float())
    g = 1.0 / math.sqrt(w.numel() * qp)
    assert torch.allclose(step.grad.flatten(), (upstream * expected_local).sum().reshape(1) * g, rtol=1e-4)
    assert torch.allclose(wq.grad, upstream * inside)  # straight-through inside, zero where clipped
    assert (wq.grad[~inside] == 0).all()


def test_lsq_per_channel_steps_and_set_bits():
    w = torch.randn(5, 3, 2)
    q = LsqQuantizer(8, w, per_channel=True)
    assert q.scaling.step.shape == (5, 1, 1)
    expected = MseScale(per_channel=True)(w, BitWidth(8))[0]
    assert torch.allclose(q.scaling.step, expected)
    q.set_bits(4)
    assert torch.allclose(q.scaling.step, expected * math.sqrt(127 / 7), rtol=1e-5)
    maxabs = LsqQuantizer(8, w, per_channel=True, scale="maxabs")
    assert torch.allclose(maxabs.scaling.step, w.abs().amax(dim=(1, 2), keepdim=True) / 127)


def test_lsq_refuses_asymmetric_weights_with_a_fix():
    cfg = QuantConfig(method="lsq", symmetric=False)
    with pytest.raises(PolicyError, match="set 'symmetric: true' or use method 'uniform'"):
        make_weight_quantizer(cfg, torch.randn(3, 3))


def test_options_are_validated():
    w = torch.randn(3, 3)
    q = make_weight_quantizer(QuantConfig(options={"rounding": "half_away"}), w)
    assert q.rounding.mode == "half_away"
    with pytest.raises(PolicyError, match="Unknown option.*'tempreature'.*valid options: act_momentum, rounding"):
        make_weight_quantizer(QuantConfig(options={"tempreature": 1.0}), w)
    with pytest.raises(MpsearchError, match="Unknown rounding mode 'up'; valid choices: half_away, half_even, half_up"):
        make_weight_quantizer(QuantConfig(options={"rounding": "up"}), w)
    with pytest.raises(PolicyError, match="'act_momentum' must be a number in"):
        make_weight_quantizer(QuantConfig(options={"act_momentum": 2}), w)


def test_activation_quantizer_choice_follows_the_method():
    assert make_activation_quantizer(QuantConfig(act_bits=None)) is None
    assert isinstance(make_activation_quantizer(QuantConfig(act_bits=8)), MinMaxActivationQuantizer)
    assert isinstance(make_activation_quantizer(QuantConfig(method="lsq")), LsqActivationQuantizer)


def test_minmax_activation_ema_signedness_and_freeze():
    q = MinMaxActivationQuantizer(8, momentum=0.25)
    q.train()
    q(torch.tensor([0.0, 2.0]))
    assert not q.signed and q.running_max == 2.0
    out = q(torch.tensor([0.0, 6.0]))
    assert q.running_max == pytest.approx(2.0 + 0.25 * 4.0)
    assert out[1] == pytest.approx(3.0)  # clipped to the running range, unsigned grid step 3/255
    q(torch.tensor([-1.0, 1.0]))  # training never reads the sign back (no device sync): still unsigned
    assert not q.signed and q.running_min == pytest.approx(-0.25)
    assert q(torch.tensor([-1.0]))[0] == 0.0
    q.running_min.fill_(0.0)
    q.running_max.fill_(3.0)
    q.calibrating = True
    q(torch.tensor([-1.0, 1.0]))  # a calibration pass that sees a negative value makes it signed
    q.calibrating = False
    assert q.signed and q.running_min == pytest.approx(-0.25)
    codes, scale, _ = q.quantize_int(torch.tensor([-0.25, 3.0]))
    assert q.running_max == pytest.approx(2.5)
    assert codes.dtype == torch.int8 and codes.tolist() == [-13, 127]  # -0.25 / (2.5 / 127) = -12.7
    assert scale == pytest.approx(2.5 / 127)
    q.freeze()
    before = q.running_max.clone()
    q(torch.tensor([100.0]))
    assert torch.equal(q.running_max, before)


def test_activation_quantizer_initialises_lazily_in_eval_and_passes_through_while_calibrating():
    q = MinMaxActivationQuantizer(4).eval()
    x = torch.linspace(-1, 1, 50)
    out = q(x)
    assert q.initialized and out.unique().numel() <= 15
    q2 = LsqActivationQuantizer(4)
    q2.calibrating = True
    assert torch.equal(q2(x), x) and q2.initialized
    assert q2.step.item() == pytest.approx(2 * x.abs().mean().item() / math.sqrt(7))
    q3 = LsqActivationQuantizer(8)
    q3(torch.relu(x))
    assert not q3.signed and q3.width.qmax == 255


@pytest.mark.parametrize("method", ["uniform", "lsq"])
def test_quantizers_work_under_torch_func_and_double_backward(method):
    w = torch.randn(4, 6)
    q = make_weight_quantizer(QuantConfig(weight_bits=4, method=method), w)
    func_grad = torch.func.grad(lambda x: q(x).square().sum())(w)
    x = w.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(q(x).square().sum(), x, create_graph=True)
    assert torch.allclose(func_grad, grad)
    assert grad.requires_grad  # a second backward (Hessian-vector products) can run through it
