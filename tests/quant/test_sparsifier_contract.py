"""Every registered sparsifier passes the same contract (mpsearch.testing.sparsifier_contract)."""

import pytest

from mpsearch.quant.config import SPARSIFIERS
from mpsearch.testing import sparsifier_contract as contract


def _id(value):
    return getattr(value, "__name__", None) or f"{value.method}-{value.fraction or f'{value.n}:{value.m}'}"


@pytest.mark.parametrize("sparsity", contract.sparsity_cases(), ids=_id)
@pytest.mark.parametrize("check", contract.CHECKS, ids=_id)
def test_sparsifier_contract(check, sparsity):
    check(sparsity)


def test_every_sparsifier_is_covered():
    assert {case.method for case in contract.sparsity_cases()} == set(SPARSIFIERS.names())
    assert {"magnitude", "regrow", "csp", "nm"} <= set(SPARSIFIERS.names())
