"""How many torch threads a process uses, chosen once at start-up from the cores other work leaves free.

Two torch processes that each use every core run far below their fair share (measured on 2 cores:
a 2-thread training beside another 2-thread torch process kept about a fifth of its speed, not half):
the threads of one process synchronise at every parallel region, so one thread waiting for a core
stalls the other. A process that takes only the cores nobody else is using keeps its speed; on an
idle machine it takes them all. mpsearch's own parallel workers divide what is free between them.

Better still on a busy machine, when the choice is made before torch starts OpenMP (the CLI makes it
first thing): every core's thread, each sleeping while it waits for the others (OMP_WAIT_POLICY=PASSIVE)
instead of spinning on a core another process needs. Beside a 2-thread torch process on 2 cores that
kept 0.48-0.55x of the idle speed, against 0.41-0.44x for one thread on the free core and 0.36x for
spinning threads (analysis/bench_load.py). On an idle machine spinning is faster, so the wait policy
is left alone there.
"""

from __future__ import annotations

import logging
import math
import os
import sys
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


def choose_thread_policy(cores: int, busy: float, workers: int, can_wait_passively: bool) -> tuple[int, bool]:
    """(threads per worker, whether they wait passively). One process on a busy machine, when OpenMP has
    not started yet: every core's thread, waiting passively. Otherwise the free cores shared between
    `workers` (choose_threads), the wait policy left as it is."""
    threads = choose_threads(cores, busy, workers)
    if threads * workers < cores and workers == 1 and can_wait_passively:
        return cores, True
    return threads, False


def apply_thread_policy(workers: int = 1) -> int:
    """Set torch's thread count (and, on a busy machine before torch is imported, OpenMP's passive wait
    policy) for this process from the cores free now; returns the thread count. An explicit
    `train.threads` (or a Ray trial's CPUs) still overrides it where that applies."""
    cores = os.cpu_count() or 1
    busy = busy_cores()
    # OpenMP reads its wait policy once, when torch loads it; a user's own setting is theirs.
    unset = "torch" not in sys.modules and "OMP_WAIT_POLICY" not in os.environ
    threads, passive = choose_thread_policy(cores, busy, workers, unset)
    if passive:
        os.environ["OMP_WAIT_POLICY"] = "PASSIVE"
    import torch

    torch.set_num_threads(threads)
    if passive:
        log.info("other work keeps %.1f of %d cores busy: using %d torch threads that sleep while they wait",
                 busy, cores, threads)
    elif threads < cores:
        log.info("other work keeps %.1f of %d cores busy: using %d torch thread(s)", busy, cores, threads)
    return threads
