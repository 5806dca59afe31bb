"""The thread policy: cores other work keeps busy are left to it."""

import os
import subprocess
import sys

import pytest

from mpsearch.runtime import busy_cores, choose_thread_policy, choose_threads, choose_workers


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


@pytest.mark.parametrize("cores, busy, workers, can_wait_passively, expected", [
    (2, 0.0, 1, True, (2, False)),   # idle: every core, spinning as usual
    (2, 1.0, 1, True, (2, True)),    # busy, before OpenMP starts: every core, sleeping while waiting
    (2, 1.0, 1, False, (1, False)),  # busy, OpenMP already started: the free core
    (8, 2.6, 2, True, (2, False)),   # mpsearch's own workers share the free cores
])
def test_choose_thread_policy(cores, busy, workers, can_wait_passively, expected):
    assert choose_thread_policy(cores, busy, workers, can_wait_passively) == expected


BUSY_START = """
import os, sys
import mpsearch.runtime as runtime
runtime.busy_cores = lambda *args: 1.0  # one core taken by other work
if sys.argv[1] == "torch-first":
    import torch
threads = runtime.apply_thread_policy()
import torch
print(os.environ.get("OMP_WAIT_POLICY"), threads, torch.get_num_threads())
"""


@pytest.mark.skipif((os.cpu_count() or 1) < 2, reason="a busy core needs a second one to leave free")
@pytest.mark.parametrize("order, expected", [("policy-first", "PASSIVE {n} {n}"), ("torch-first", "None {f} {f}")])
def test_a_busy_start_sets_the_passive_wait_policy_only_before_torch_loads(order, expected):
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "OMP_NUM_THREADS")}
    out = subprocess.run([sys.executable, "-c", BUSY_START, order], env=env, capture_output=True, text=True,
                         check=True).stdout.split()
    cores = os.cpu_count()
    assert " ".join(out) == expected.format(n=cores, f=choose_threads(cores, 1.0))
