"""One rounding per mode: the float rule (quantizers) and the integer shift (NNA requantisation) agree."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mpsearch.quant.rounding import ROUNDINGS, rounding_half


@pytest.mark.parametrize("mode", ROUNDINGS)
@pytest.mark.parametrize("shift", [0, 1, 2, 5])
def test_float_rounding_and_integer_shift_agree_on_every_tie(mode, shift):
    rule = ROUNDINGS.get(mode)
    x = np.arange(-100, 101, dtype=np.int64)  # every tie for these shifts is in here
    floats = torch.from_numpy(x / 2.0 ** shift).to(torch.float32)
    expected = rule.round(floats).to(torch.int64).numpy()
    np.testing.assert_array_equal(rule.shift(x, shift, rounding_half(shift)), expected)
    np.testing.assert_array_equal(rule.shift(torch.from_numpy(x), shift, rounding_half(shift)).numpy(), expected)
    in_place = torch.from_numpy(x.copy())
    np.testing.assert_array_equal(rule.shift_(in_place, shift, rounding_half(shift)).numpy(), expected)
    assert torch.equal(rule.round_(floats.clone()), rule.round(floats))


def test_an_unknown_mode_lists_the_modes():
    with pytest.raises(Exception, match="Unknown rounding mode 'up'; valid choices: half_away, half_even, half_up"):
        ROUNDINGS.get("up")
