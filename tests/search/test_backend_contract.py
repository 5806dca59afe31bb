"""Both search backends pass the same contract (mpsearch.testing.backend_contract): a toy objective on
real SQLite storage, Ray on the session's local Ray."""

import pytest

from mpsearch.testing import backend_contract as contract


def _id(value):
    return getattr(value, "__name__", None) or str(value)


@pytest.mark.filterwarnings("ignore:Heartbeat of storage")  # the killed trial is asked by hand
@pytest.mark.parametrize("check", contract.CHECKS, ids=_id)
@pytest.mark.parametrize("backend", sorted(contract.BACKENDS))
def test_backend_contract(backend, check, tmp_path, request):
    if backend == "ray":
        request.getfixturevalue("ray_session")
    check(contract.BACKENDS[backend], tmp_path)


def test_every_backend_is_covered():
    from mpsearch.search.engine import BACKENDS

    assert set(contract.BACKENDS) == set(BACKENDS.names())
