"""The integer LayerNorm, softmax, rotary and grouped-conv kernels against float64 references, the NNA
modules built on them, and the float op modules the models write."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from mpsearch.models.ops import Add, Mask, MatMul, Rotary, Softmax
from mpsearch.quant import Policy, QuantConfig, apply
from mpsearch.quant.nna import NNAError, NNANumerics, calibrate_nna, checking_grid, export_int
from mpsearch.quant.nna.executor import IntegerModel
from mpsearch.quant.nna.numerics import (
    NORM_EPS_FRAC_BITS,
    NORM_FRAC_BITS,
    NORM_GAMMA_BITS,
    ROTARY_FRAC_BITS,
    SOFTMAX_MIN_PEAK,
    exp_table,
    isqrt,
    layer_norm_codes,
    quantize_multiplier,
    reciprocal_sqrt,
    rotary_codes,
    rotary_tables,
    softmax_codes,
    softmax_numerator,
)

NUMERICS = NNANumerics()
W8 = Policy.uniform(QuantConfig(weight_bits=8))


def _both(fn, *arrays):
    """fn on numpy int64 arrays and on torch int64 tensors; asserts both give the same integers."""
    on_numpy = fn(*[np.asarray(a) for a in arrays])
    on_torch = fn(*[torch.from_numpy(np.ascontiguousarray(a)) for a in arrays])
    np.testing.assert_array_equal(on_torch.numpy(), on_numpy)
    return on_numpy


# --- reciprocal square root ----------------------------------------------------------------------
@settings(max_examples=300, deadline=None)
@given(st.lists(st.integers(0, 2 ** 63 - 1), min_size=1, max_size=8))
def test_isqrt_is_the_exact_floor_on_numpy_and_torch(values):
    roots = _both(isqrt, np.array(values, dtype=np.int64))
    assert roots.tolist() == [math.isqrt(v) for v in values]


@settings(max_examples=300, deadline=None)
@given(st.lists(st.integers(1, 2 ** 62 - 1), min_size=1, max_size=8))
def test_reciprocal_sqrt_keeps_31_significant_bits_at_any_magnitude(values):
    v = np.array(values, dtype=np.int64)
    r, e = reciprocal_sqrt(v)
    r_t, e_t = reciprocal_sqrt(torch.from_numpy(v))
    assert r_t.tolist() == r.tolist() and e_t.tolist() == e.tolist()
    for vi, ri, ei in zip(values, r.tolist(), e.tolist()):
        assert 2 ** 60 <= vi * 4 ** ei < 2 ** 62 and 2 ** 31 < ri <= 2 ** 32
        assert ri == 2 ** 62 // math.isqrt(vi * 4 ** ei)  # r * 2^(e - 62) ~ 1 / sqrt(v) to 2^-30


# --- LayerNorm ----------------------------------------------------------------------------------
def _layer_norm_case(rng, channels, s_in, eps=1e-5):
    x = np.clip(rng.normal(rng.integers(-40, 40), rng.integers(1, 128), size=(40, channels)).round(), -128, 127)
    x = x.astype(np.int64)
    x[0] = x[0, 0]  # a constant row: only beta (and eps) remain
    gamma, beta = rng.normal(1, 0.3, channels), rng.normal(0, 0.5, channels)
    xf = x * s_in
    ref = (xf - xf.mean(-1, keepdims=True)) / np.sqrt(xf.var(-1, keepdims=True) + eps) * gamma + beta
    out_scale = np.abs(ref).max() / 127
    gamma_scale = np.abs(gamma).max() / (2 ** (NORM_GAMMA_BITS - 1) - 1)
    acc_scale = gamma_scale * 2.0 ** -NORM_FRAC_BITS
    gamma_codes, beta_codes = np.rint(gamma / gamma_scale).astype(np.int64), np.rint(beta / acc_scale).astype(np.int64)
    eps_term = round(eps * channels ** 2 / s_in ** 2 * 2 ** NORM_EPS_FRAC_BITS)
    multiplier, shift = quantize_multiplier(acc_scale / out_scale, NUMERICS.multiplier_bits)
    return x, gamma_codes, beta_codes, eps_term, int(multiplier), int(shift), ref / out_scale


@pytest.mark.parametrize("channels", [8, 32, 96, 512])
def test_integer_layer_norm_is_within_0_6_codes_of_float(channels):
    rng = np.random.default_rng(channels)
    for _ in range(10):
        x, gamma, beta, eps_term, m, shift, expected = _layer_norm_case(rng, channels, 10 ** rng.uniform(-3, 0))
        out = _both(lambda x, g, b, e=eps_term, m=m, s=shift: layer_norm_codes(x, g, b, e, m, s, NUMERICS),
                    x, gamma, beta)
        # 0.5 from the final rounding; the rest from Q5.10 normalised values and int16 gamma.
        assert np.abs(out - expected).max() <= 0.6


def test_integer_layer_norm_over_channels_equals_it_over_the_last_dim():
    x, gamma, beta, eps_term, m, shift, _ = _layer_norm_case(np.random.default_rng(1), 24, 0.05)
    last = layer_norm_codes(x, gamma, beta, eps_term, m, shift, NUMERICS)
    first = layer_norm_codes(x.T, gamma[:, None], beta[:, None], eps_term, m, shift, NUMERICS, axis=0)
    np.testing.assert_array_equal(first.T, last)


class ChannelNorm(nn.LayerNorm):
    normalized_dim = 1

    def forward(self, x):
        return super().forward(x.transpose(1, 2)).transpose(1, 2)


class ConvThenNorm(nn.Module):
    def __init__(self, norm: nn.Module):
        super().__init__()
        self.conv = nn.Conv1d(3, 8, 1)
        self.norm = norm

    def forward(self, x):
        return self.norm(self.conv(x))


def test_nna_layer_norm_module_over_channels_tracks_float():
    torch.manual_seed(0)
    norm = ChannelNorm(8)
    with torch.no_grad():
        norm.weight.uniform_(0.5, 1.5)
        norm.bias.uniform_(-0.5, 0.5)
    model = apply(ConvThenNorm(norm), W8, emulation="nna")
    x = torch.randn(4, 3, 20)
    calibrate_nna(model, [(x,)])
    with torch.no_grad(), checking_grid():
        out = model(x)
        expected = norm(model.conv(x)) / model.norm.out_scale  # float LayerNorm of the same (integer) input
    assert float((out / model.norm.out_scale - expected).abs().max()) <= 0.6


def test_layer_norms_the_chip_cannot_run_are_refused():
    class Opaque(nn.LayerNorm):
        def forward(self, x):
            return super().forward(x) * 2

    with pytest.raises(NNAError, match="overrides LayerNorm.forward without saying which dim"):
        apply(ConvThenNorm(Opaque(8)), W8, emulation="nna")
    with pytest.raises(NNAError, match=r"normalises over one dim; got normalized_shape \(8, 4\)"):
        apply(ConvThenNorm(nn.LayerNorm([8, 4])), W8, emulation="nna")


# --- softmax ------------------------------------------------------------------------------------
def _softmax_reference(x, valid, s_in):
    xf = np.where(valid, x * s_in, -np.inf)
    p = np.exp(xf - xf.max(-1, keepdims=True))
    return p / p.sum(-1, keepdims=True)


@pytest.mark.parametrize("frames", [1, 5, 50, 400])
def test_integer_softmax_is_within_half_a_code_of_float_and_masked_positions_are_zero(frames):
    rng = np.random.default_rng(frames)
    for _ in range(10):
        s_in = 10 ** rng.uniform(-3, -0.5)
        x = rng.integers(-128, 128, size=(20, frames))
        valid = rng.random((20, frames)) < 0.7
        valid[:, 0] = True
        p = _softmax_reference(x, valid, s_in)
        out_scale = min(max(p.max(), SOFTMAX_MIN_PEAK), 1.0) / 127
        table, numerator = exp_table(s_in, NUMERICS), softmax_numerator(out_scale)
        out = _both(lambda x, v, t, n=numerator: softmax_codes(x, v, t, n, NUMERICS), x, valid, table)
        assert (out[~valid] == 0).all()
        assert np.abs(out - p / out_scale).max() <= 0.51  # 0.5 of rounding; exp and reciprocal ~1e-4


def test_integer_softmax_ignores_masked_values_and_zeroes_a_row_with_nothing_valid():
    rng = np.random.default_rng(0)
    x = rng.integers(-128, 128, size=(3, 9))
    valid = np.ones_like(x, dtype=bool)
    valid[0, 4:] = False
    valid[2] = False
    table, numerator = exp_table(0.05, NUMERICS), softmax_numerator(1 / 127)
    out = softmax_codes(x, valid, table, numerator, NUMERICS)
    changed = x.copy()
    changed[0, 4:] = 127  # larger than any valid code: must not become the row maximum
    np.testing.assert_array_equal(softmax_codes(changed, valid, table, numerator, NUMERICS), out)
    assert (out[0, 4:] == 0).all() and (out[2] == 0).all() and out[1].sum() > 0


def test_nna_softmax_module_masks_exactly_and_passes_gradients():
    class Scores(nn.Module):
        def __init__(self):
            super().__init__()
            self.proj = nn.Linear(4, 6)
            self.softmax = Softmax()

        def forward(self, x, mask):
            return self.softmax(self.proj(x), mask)

    torch.manual_seed(0)
    model = apply(Scores(), W8, emulation="nna")
    x = torch.randn(5, 4)
    mask = torch.tensor([True, True, False, True, False, True])
    calibrate_nna(model, [(x, mask)])
    x.requires_grad_(True)
    p = model(x, mask)
    assert (p[:, ~mask] == 0).all()
    assert float(p.detach().sum(-1).sub(1).abs().max()) < 6 * float(model.softmax.out_scale)
    p[:, 0].sum().backward()
    assert x.grad.abs().sum() > 0 and model.proj.weight.grad.abs().sum() > 0


# --- rotary -------------------------------------------------------------------------------------
@pytest.mark.parametrize("frames", [3, 100, 1000])
def test_integer_rotary_is_within_half_a_code_of_float(frames):
    rng = np.random.default_rng(frames)
    dim, s_in = 16, 0.02
    x = rng.integers(-128, 128, size=(2, frames, dim))
    cos, sin = rotary_tables(frames, dim)
    assert np.abs(cos).max() <= 2 ** ROTARY_FRAC_BITS and cos[0].tolist() == [2 ** ROTARY_FRAC_BITS] * (dim // 2)
    reference = Rotary()(torch.from_numpy(x * s_in)).numpy()  # float64 through the model's op
    out_scale = np.abs(reference).max() / 127
    m, shift = quantize_multiplier(s_in * 2.0 ** -ROTARY_FRAC_BITS / out_scale, NUMERICS.multiplier_bits)
    out = _both(lambda x, c, s: rotary_codes(x, c, s, int(m), int(shift), NUMERICS), x, cos, sin)
    assert np.abs(out - reference / out_scale).max() <= 0.51


# --- grouped convolution ------------------------------------------------------------------------
@pytest.mark.parametrize("groups, padding", [(2, 1), (6, 3)], ids=["two-groups", "depthwise"])
def test_grouped_conv1d_matches_the_executor(tmp_path, groups, padding):
    torch.manual_seed(3)
    model = apply(nn.Sequential(nn.Conv1d(6, 6, 7, padding=padding, groups=groups), nn.ReLU()),
                  Policy.uniform(QuantConfig(weight_bits=5)), emulation="nna")
    x = torch.randn(2, 6, 19)
    calibrate_nna(model, [(x,)])
    export_int(model, tmp_path / "conv.npz")
    graph = IntegerModel(tmp_path / "conv.npz")
    with torch.no_grad():
        emulated = model(x)
        reference = nn.functional.conv1d(x, model[0].quantized("weight"), model[0].bias, padding=padding,
                                         groups=groups).relu()
    assert float((emulated - reference).abs().max()) < 3 * float(model[0].out_scale)  # sanity: it is a conv
    expected = torch.round(emulated / model[0].out_scale).long().numpy()
    for b in range(2):
        codes = graph.conv1d("0", graph.quantize_input("0", x[b].numpy()))
        np.testing.assert_array_equal(np.maximum(codes, 0), expected[b])


# --- float op modules ---------------------------------------------------------------------------
def test_float_op_modules_compute_the_inline_expressions_bit_for_bit():
    torch.manual_seed(0)
    a, b = torch.randn(2, 3, 5, 4), torch.randn(2, 3, 5, 4)
    assert torch.equal(Add(beta=0.5)(a, b), a + 0.5 * b)
    assert torch.equal(Add(alpha=2.0, beta=0.5)(a, b), 2.0 * a + 0.5 * b)
    assert torch.equal(MatMul(divisor=math.sqrt(4))(a, b.transpose(-2, -1)), a @ b.transpose(-2, -1) / math.sqrt(4))
    mask = torch.rand(2, 1, 1, 5) < 0.6
    scores = a @ b.transpose(-2, -1)
    assert torch.equal(Softmax()(scores, mask),
                       scores.masked_fill(~mask, torch.finfo(scores.dtype).min).softmax(dim=-1))
    valid = (torch.rand(2, 1, 4) < 0.5).float()
    assert torch.equal(Mask()(a[:, 0], valid), a[:, 0] * valid)
    frames, dim = a.shape[-2:]
    inv_freq = 10000.0 ** (-torch.arange(0, dim, 2, dtype=torch.float32) / dim)
    angles = torch.arange(frames, dtype=torch.float32)[:, None] * inv_freq[None, :]
    even, odd = a[..., 0::2], a[..., 1::2]
    rotated = torch.stack([even * angles.cos() - odd * angles.sin(), even * angles.sin() + odd * angles.cos()],
                          dim=-1).flatten(-2)
    assert torch.equal(Rotary()(a), rotated)


def test_add_with_a_negative_factor_is_refused():
    class Sub(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b, self.sub = nn.Linear(2, 2), nn.Linear(2, 2), Add(beta=-1.0)

        def forward(self, x):
            return self.sub(self.a(x), self.b(x))

    with pytest.raises(NNAError, match="non-negative factors"):
        apply(Sub(), W8, emulation="nna")


def test_the_gelu_table_is_within_half_a_code_of_float():
    from mpsearch.quant.nna.numerics import LUT_FUNCTIONS, build_lut

    numerics = NNANumerics()
    in_scale, out_scale = 6 / 127, 6 / 127
    table = build_lut(LUT_FUNCTIONS["gelu"], in_scale, out_scale, numerics.activation_bits, numerics.lut_bits)
    codes = np.arange(-128, 128)
    want = torch.nn.functional.gelu(torch.from_numpy(codes * in_scale)).numpy()
    assert np.abs(table[codes + 128] * out_scale - want).max() <= 0.5 * out_scale + 1e-9


def test_the_transformer_lm_runs_under_nna_emulation_close_to_float():
    from mpsearch.models.transformer_lm import TransformerLM, TransformerLMConfig

    torch.manual_seed(0)
    model = TransformerLM(TransformerLMConfig(vocab_size=30, d_model=32, n_layers=2, n_heads=4))
    emulated = apply(model, Policy.uniform(QuantConfig(weight_bits=8, act_bits=8)), emulation="nna")
    batches = [(torch.randint(1, 30, (4, 12)), torch.tensor([12, 10, 8, 5])) for _ in range(3)]
    calibrate_nna(emulated, batches[:2])
    model.eval(), emulated.eval()
    with torch.no_grad(), checking_grid():  # every input on its producer's grid: nothing ran in float
        float_loss, emulated_loss = float(model(*batches[2])), float(emulated(*batches[2]))
    assert abs(emulated_loss - float_loss) < 0.02 * float_loss
    emulated.train()
    emulated(*batches[2]).backward()
    assert all(p.grad is not None for p in emulated.parameters() if p.requires_grad)
