"""Every registered quantizer passes the same contract (mpsearch.testing.quantizer_contract)."""

import pytest

from mpsearch.quant import ACTIVATION_QUANTIZERS, QUANTIZERS
from mpsearch.testing import quantizer_contract as contract


def _id(value):
    return getattr(value, "__name__", None) or str(value)


@pytest.mark.parametrize("method,bits,granularity,symmetric", contract.weight_cases(), ids=_id)
@pytest.mark.parametrize("check", contract.WEIGHT_CHECKS, ids=_id)
def test_weight_quantizer_contract(check, method, bits, granularity, symmetric):
    check(method, bits, granularity, symmetric)


@pytest.mark.parametrize("method,granularity,symmetric", contract.sweep_cases(), ids=_id)
@pytest.mark.parametrize("check", contract.WEIGHT_SWEEP_CHECKS, ids=_id)
def test_weight_quantizer_sweep_contract(check, method, granularity, symmetric):
    check(method, granularity, symmetric)


@pytest.mark.parametrize("name,bits,signed", contract.activation_cases(), ids=_id)
@pytest.mark.parametrize("check", contract.ACTIVATION_CHECKS, ids=_id)
def test_activation_quantizer_contract(check, name, bits, signed):
    check(name, bits, signed)


def test_every_method_is_covered():
    assert {case[0] for case in contract.weight_cases()} == set(QUANTIZERS.names())
    assert {case[0] for case in contract.activation_cases()} == set(ACTIVATION_QUANTIZERS.names())
    assert {"uniform", "lsq", "gq", "s8bqat", "admm"} <= set(QUANTIZERS.names())


def test_methods_that_train_off_the_grid_are_still_checked_in_eval_mode():
    w = contract.weight((12, 20))
    for method in ("admm", "s8bqat"):
        q = QUANTIZERS.get(method).from_config(contract.config(method, 3), w)
        assert not q.quantized_in_training  # these train float weights; their deployed forward is checked
        contract.check_levels(method, 3, "per_channel", True)
        contract.check_export(method, 3, "per_channel", True)
