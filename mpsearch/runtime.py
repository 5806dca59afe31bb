"""How many torch threads a process uses, chosen once at start-up from the cores other work leaves free.

Two torch processes that each use every core run far below their fair share (measured on 2 cores:
a 2-thread training beside another 2-thread torch process kept about a fifth of its speed, not half):
the threads of one process synchronise at every parallel region, so one thread waiting for a core
stalls the other. A process that takes only the cores nobody else is using keeps its speed; on an
idle machine it takes them all. mpsearch's own parallel workers divide what is free between them.
"""

from __future__ import annotations

import logging
import math
import os
import time

log = logging.getLogger(__name__)

SAMPLE_SECONDS = 0.3
# a core counts as taken when other work keeps it at least this busy over the sample
TAKEN_FRACTION = 0.5


def _cpu_times() -> tuple[int, int] | None:
    """(busy, total) jiffies of all CPUs since boot, or None where /proc/stat is missing."""
    try:
        with open("/proc/stat") as f:
            fields = [int(v) for v in f.readline().split()[1:]]
    except (OSError, ValueError):
        return None
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
    return sum(fields) - idle, sum(fields)


def busy_cores(sample_seconds: float = SAMPLE_SECONDS) -> float:
    """How many cores other processes keep busy right now (0 on an idle machine)."""
    cores = os.cpu_count() or 1
    first = _cpu_times()
    if first is None:
        return min(float(cores), os.getloadavg()[0]) if hasattr(os, "getloadavg") else 0.0
    time.sleep(sample_seconds)
    second = _cpu_times()
    busy, total = second[0] - first[0], second[1] - first[1]
    return cores * busy / total if total > 0 else 0.0


def choose_threads(cores: int, busy: float, workers: int = 1) -> int:
    """Threads per worker: the cores others leave free (a core counts as taken when more than half
    busy), shared between `workers`, at least one."""
    free = cores - math.floor(busy + (1 - TAKEN_FRACTION))
    return max(1, free // max(1, workers))


def free_cores() -> int:
    """The cores other work leaves free now (a core counts as taken when more than half busy), at least one."""
    return choose_threads(os.cpu_count() or 1, busy_cores())


def choose_workers(free: int, max_workers: int) -> tuple[int, int]:
    """(workers, threads per worker) for `workers: auto`: one worker per free core, at most
    `max_workers`, the free cores shared between them."""
    workers = max(1, min(free, max_workers))
    return workers, max(1, free // workers)


def apply_worker_policy(max_workers: int) -> int:
    """Resolve `workers: auto` from one sample of the load: sets torch's threads per worker and returns
    the worker count."""
    import torch

    workers, threads = choose_workers(free_cores(), max_workers)
    torch.set_num_threads(threads)
    return workers


def apply_thread_policy(workers: int = 1) -> int:
    """Set torch's thread count for this process from the cores free now; returns it. An explicit
    `train.threads` (or a Ray trial's CPUs) still overrides it where that applies."""
    import torch

    cores = os.cpu_count() or 1
    busy = busy_cores()
    threads = choose_threads(cores, busy, workers)
    torch.set_num_threads(threads)
    if threads < cores:
        log.info("other work keeps %.1f of %d cores busy: using %d torch thread(s)", busy, cores, threads)
    return threads
