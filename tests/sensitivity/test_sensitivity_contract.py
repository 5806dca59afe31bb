"""Every registered sensitivity backend passes the same contract (mpsearch.testing.sensitivity_contract)."""

import pytest
import torch

from mpsearch.sensitivity.backends import BACKENDS
from mpsearch.testing import sensitivity_contract as contract

# pyhessian is an optional extra (GPL-3.0): its backend's checks run only where it is installed.
OPTIONAL = {"pyhessian": "pyhessian"}


@pytest.mark.parametrize("backend", BACKENDS.names())
@pytest.mark.parametrize("check", contract.CHECKS, ids=lambda check: check.__name__)
def test_sensitivity_backend_contract(check, backend):
    if backend in OPTIONAL:
        pytest.importorskip(OPTIONAL[backend])
    check(backend)


def test_every_backend_is_covered():
    assert {"hutchinson", "pyhessian"} <= set(BACKENDS.names())


def test_the_exact_traces_are_the_quadratics_own():
    model, [(x1, x2, y)] = contract.toy_case()
    exact = contract.exact_traces(model, (x1, x2, y))
    assert exact["a"] == pytest.approx(2 / len(x1) * float(x1.pow(2).sum()), rel=1e-5)
    assert exact["b"] == pytest.approx(2 / len(x2) * float(x2.pow(2).sum()), rel=1e-5)
    assert exact["b"] > 2 * exact["a"]
    assert torch.is_grad_enabled()
