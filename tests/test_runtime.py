"""The thread policy: cores other work keeps busy are left to it."""

import os

import pytest

from mpsearch.runtime import busy_cores, choose_threads, choose_workers


@pytest.mark.parametrize("cores, busy, workers, expected", [
    (2, 0.0, 1, 2),    # idle: every core
    (2, 0.3, 1, 2),    # a little background work takes no core
    (2, 1.0, 1, 1),    # another single-threaded job
    (2, 2.0, 1, 1),    # everything busy: still one thread
    (8, 2.6, 1, 5),
    (8, 0.0, 2, 4),    # two workers share what is free
    (2, 1.0, 2, 1),
])
def test_choose_threads(cores, busy, workers, expected):
    assert choose_threads(cores, busy, workers) == expected


def test_busy_cores_is_a_share_of_the_machine():
    busy = busy_cores(0.05)
    assert 0.0 <= busy <= (os.cpu_count() or 1)


@pytest.mark.parametrize("free, max_workers, expected", [
    (2, 4, (2, 1)),    # two free cores: two one-thread workers
    (1, 4, (1, 1)),
    (8, 4, (4, 2)),    # capped: the free cores shared between the workers
    (6, 4, (4, 1)),
])
def test_choose_workers(free, max_workers, expected):
    assert choose_workers(free, max_workers) == expected
