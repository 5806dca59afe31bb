"""The integer primitives against float64 references, on numpy and torch alike."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from mpsearch.errors import ConfigError
from mpsearch.hardware.profile import HardwareProfile, load_profile
from mpsearch.quant.nna import NNANumerics
from mpsearch.quant.nna.numerics import (
    LUT_FUNCTIONS,
    build_lut,
    quantize_multiplier,
    quantize_multipliers,
    requantize,
    requantize_sum,
    rounding_shift,
    saturate,
    sigmoid,
)
from mpsearch.quant.rounding import ROUNDINGS

INT8 = (-128, 127)
INT32 = (-(2 ** 31), 2 ** 31 - 1)


def float64_round(value: np.ndarray, rounding: str) -> np.ndarray:
    """Reference rounding in float64 (exact here: every value is below 2^53 and a dyadic rational)."""
    if rounding == "half_up":
        return np.floor(value + 0.5)
    if rounding == "half_even":
        return np.rint(value)
    return np.sign(value) * np.floor(np.abs(value) + 0.5)


def reference_requantize(acc, multiplier, shift, rounding, bounds):
    value = np.asarray(acc, dtype=np.float64) * np.float64(multiplier) / np.float64(2.0 ** shift)
    return np.clip(float64_round(value, rounding), *bounds).astype(np.int64)


@pytest.mark.parametrize("rounding", ROUNDINGS.names())
@pytest.mark.parametrize("shift", [0, 1, 2, 3, 7])
def test_rounding_shift_handles_every_tie_like_the_reference(rounding, shift):
    x = np.arange(-64, 65, dtype=np.int64)  # every tie for these shifts is in here
    expected = float64_round(x / 2.0 ** shift, rounding)
    np.testing.assert_array_equal(rounding_shift(x, shift, rounding), expected)
    np.testing.assert_array_equal(rounding_shift(torch.from_numpy(x), shift, rounding).numpy(), expected)


def test_rounding_modes_differ_exactly_on_the_ties_they_define():
    x = np.array([-6, -2, 2, 6])  # -1.5, -0.5, 0.5, 1.5 after a shift of 2
    assert rounding_shift(x, 2, "half_up").tolist() == [-1, 0, 1, 2]
    assert rounding_shift(x, 2, "half_even").tolist() == [-2, 0, 0, 2]
    assert rounding_shift(x, 2, "half_away").tolist() == [-2, -1, 1, 2]


@settings(max_examples=300, deadline=None)
@given(acc=st.lists(st.integers(*INT32), min_size=1, max_size=16),
       multiplier=st.integers(0, 2 ** 15 - 1), shift=st.integers(0, 40),
       rounding=st.sampled_from(ROUNDINGS.names()))
def test_requantize_matches_float64_and_is_the_same_on_torch(acc, multiplier, shift, rounding):
    acc = np.array(acc, dtype=np.int64)
    expected = reference_requantize(acc, multiplier, shift, rounding, INT8)
    np.testing.assert_array_equal(requantize(acc, multiplier, shift, rounding, INT8), expected)
    on_torch = requantize(torch.from_numpy(acc), torch.tensor(multiplier), torch.tensor(shift), rounding,
                          INT8)
    np.testing.assert_array_equal(on_torch.numpy(), expected)


@settings(max_examples=200, deadline=None)
@given(a=st.integers(-128, 127), b=st.integers(-128, 127),
       scales=st.tuples(*[st.floats(1e-4, 1.0)] * 3), rounding=st.sampled_from(ROUNDINGS.names()))
def test_saturating_add_is_one_rounding_of_the_exact_fixed_point_sum(a, b, scales, rounding):
    s_a, s_b, s_out = scales
    (m_a, m_b), shift = quantize_multipliers([s_a / s_out, s_b / s_out], 15)
    out = requantize_sum([np.int64(a), np.int64(b)], [m_a, m_b], shift, rounding, INT8)
    fixed = (a * int(m_a) + b * int(m_b)) / 2.0 ** int(shift)
    assert out == np.clip(float64_round(np.float64(fixed), rounding), *INT8)
    exact = (a * s_a + b * s_b) / s_out
    if -127 < exact < 126:
        assert abs(out - exact) <= 0.5 + abs(exact) * 2.0 ** -13 + 2 ** -13


@settings(max_examples=300, deadline=None)
@given(real=st.floats(1e-9, 3e4), bits=st.integers(8, 30))
def test_quantize_multiplier_keeps_bits_significant_bits(real, bits):
    multiplier, shift = quantize_multiplier(real, bits)
    assert multiplier.dtype == np.int64 and shift.dtype == np.int64
    if real >= 2 ** bits:  # saturating ratio: the largest multiplier, no shift
        assert (int(multiplier), int(shift)) == (2 ** bits - 1, 0)
        return
    assert 0 <= shift <= 62
    if shift < 62:
        assert 2 ** (bits - 1) <= multiplier < 2 ** bits
        assert abs(int(multiplier) / 2.0 ** int(shift) - real) <= real * 2.0 ** -(bits - 1)


def test_a_saturating_ratio_saturates_exactly_like_the_true_ratio():
    multiplier, shift = quantize_multiplier(1e6, 15)
    acc = np.array([-3, -1, 0, 1, 5])
    saturated = requantize(acc, multiplier, shift, "half_up", INT8)
    np.testing.assert_array_equal(saturated, [-128, -128, 0, 127, 127])


def test_quantize_multipliers_share_one_shift_per_element():
    (m_a, m_b), shift = quantize_multipliers([np.array([0.3, 2.0]), np.array([0.7, 0.1])], 15)
    assert shift.tolist() == [15, 13]
    assert m_b.tolist() == [round(0.7 * 2 ** 15), round(0.1 * 2 ** 13)]
    assert m_a.tolist() == [round(0.3 * 2 ** 15), 2 ** 14]


def test_saturate_clamps_on_both_backends():
    x = np.array([-1000, -128, 0, 127, 1000])
    assert saturate(x, INT8).tolist() == [-128, -128, 0, 127, 127]
    assert saturate(torch.from_numpy(x), INT8).tolist() == [-128, -128, 0, 127, 127]


@pytest.mark.parametrize("function", ["sigmoid", "tanh"])
@pytest.mark.parametrize("in_scale", [0.001, 8 / 127, 0.5])
def test_luts_are_monotone_deterministic_and_in_range(function, in_scale):
    lut = build_lut(LUT_FUNCTIONS[function], in_scale, 1 / 127)
    assert lut.shape == (256,) and lut.dtype == np.int64
    assert (np.diff(lut) >= 0).all()
    np.testing.assert_array_equal(lut, build_lut(LUT_FUNCTIONS[function], in_scale, 1 / 127))
    if function == "sigmoid":
        assert lut.min() >= 0 and lut.max() <= 127
        assert lut[128] == 64  # sigmoid(0) = 0.5 -> 63.5 -> ties to even
    else:
        np.testing.assert_array_equal(lut[1:], -lut[1:][::-1])  # odd, codes -127..127
        assert lut[128] == 0


def test_lut_entry_is_the_rounded_function_of_its_code():
    lut = build_lut(LUT_FUNCTIONS["tanh"], 0.05, 1 / 127)
    for code in (-128, -7, 0, 3, 127):
        assert lut[code + 128] == np.rint(np.tanh(code * 0.05) * 127)


def test_sigmoid_is_stable_for_large_inputs():
    with np.errstate(over="raise"):
        values = sigmoid(np.array([-1e4, 0.0, 1e4]))
    np.testing.assert_array_equal(values, [0.0, 0.5, 1.0])


def test_numerics_validate_and_name_the_field():
    with pytest.raises(ConfigError, match=r"The numerics 'rounding' must be one of half_away, half_even, "
                                          r"half_up; got 'stochastic'\."):
        NNANumerics(rounding="stochastic")
    with pytest.raises(ConfigError, match=r"'multiplier_bits' must be an integer in \[8, 30\]; got 31"):
        NNANumerics(multiplier_bits=31)
    with pytest.raises(ConfigError, match=r"Unknown numerics key\(s\) \['shift_bits'\]"):
        NNANumerics.from_dict({"shift_bits": 5})


def test_numerics_come_from_the_hardware_profile():
    profile = load_profile("nna-int8")
    numerics = NNANumerics.from_profile(profile)
    assert numerics == NNANumerics.from_profile(profile.to_dict())
    assert (numerics.multiplier_bits, numerics.rounding, numerics.cell_state_bits) == (15, "half_up", 16)
    assert NNANumerics.from_profile(load_profile("cpu-int8")) == NNANumerics()  # no section: defaults


def test_profile_rejects_bad_numerics_naming_the_field(tmp_path):
    data = load_profile("nna-int8").to_dict()
    data["numerics"] = {**data["numerics"], "rounding": "down"}
    with pytest.raises(ConfigError, match="numerics.*'rounding' must be one of"):
        HardwareProfile.from_dict(data)
    data["numerics"] = {"activation_bits": 6}
    with pytest.raises(ConfigError, match="activation_bits equal to the profile's activation_bits"):
        HardwareProfile.from_dict(data)
