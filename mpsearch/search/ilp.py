"""Bit allocation by integer linear programming (HAWQ-V3 style), solved exactly with scipy's milp (HiGHS).

One binary x[site, choice] per candidate bit width, exactly one per site; minimise the summed Omega
(from the sensitivity report) subject to any of: latency_ms (hardware model), size_bytes, avg_bits.

Latency is additive over sites once the memory regime is fixed, but the regime depends on the total:
the roofline model reads weights off chip every step unless the whole model fits in on-chip memory.
Weight bytes are linear in x, so the ILP is solved twice:
  on chip:  per-site on-chip latencies, plus the linear constraint  sum bytes <= onchip_memory_bytes;
  off chip: per-site off-chip latencies, no memory constraint.
The better feasible answer is optimal: an off-chip solution that happens to fit on chip is still
feasible, since the model never makes an on-chip site slower than the same site off chip.
"""

from __future__ import annotations

import logging
import math
import os
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field

import numpy as np
from scipy.optimize import Bounds, LinearConstraint, milp
from scipy.sparse import csr_matrix

from mpsearch.errors import MpsearchError
from mpsearch.quant.config import QuantConfig
from mpsearch.quant.policy import Policy
from mpsearch.quant.sites import Site

log = logging.getLogger(__name__)

METRICS = ("latency_ms", "size_bytes", "avg_bits")
# HiGHS stops within an absolute objective gap of 1e-6, which scipy does not expose; scaling the
# largest Omega to this keeps every meaningful difference far above it.
_OBJECTIVE_SCALE = 1e6


class InfeasibleBudgetError(MpsearchError):
    """No bit allocation meets the budgets."""


class AllocationError(MpsearchError):
    """The inputs of a bit allocation do not fit together."""


@dataclass(frozen=True)
class Budgets:
    """Upper bounds; None leaves a metric free. latency_ms per utterance (hardware model), size_bytes of
    weight storage, avg_bits weighted by each site's number of weights."""

    latency_ms: float | None = None
    size_bytes: float | None = None
    avg_bits: float | None = None

    def __post_init__(self) -> None:
        for name in METRICS:
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))
                                      or not value > 0 or not math.isfinite(value)):
                raise AllocationError(f"The budget '{name}' must be a positive number; got {value!r}.")

    def active(self) -> dict[str, float]:
        return {name: float(getattr(self, name)) for name in METRICS if getattr(self, name) is not None}

    @classmethod
    def parse(cls, value: Budgets | Mapping[str, float] | None) -> Budgets:
        if value is None or isinstance(value, Budgets):
            return value or cls()
        unknown = sorted(set(value) - set(METRICS))
        if unknown:
            raise AllocationError(f"Unknown budget(s) {unknown}; valid budgets: {', '.join(METRICS)}.")
        return cls(**value)


@dataclass(frozen=True)
class Candidate:
    """One configuration: its policy (exact site names), predicted Omega and hardware metrics
    (latency_ms is None without a latency model)."""

    policy: Policy
    bits: dict[str, int]
    omega: float
    latency_ms: float | None
    size_bytes: int
    avg_bits: float

    def metric(self, name: str) -> float | None:
        return {"latency_ms": self.latency_ms, "size_bytes": self.size_bytes, "avg_bits": self.avg_bits}[name]


@dataclass(frozen=True)
class Allocation(Candidate):
    """The optimal candidate under `budgets`; `onchip` says whether its weights fit on chip (None
    without a latency model)."""

    budgets: Budgets = field(default_factory=Budgets)
    onchip: bool | None = None


@dataclass
class _Tables:
    """Per site x choice: Omega, weight bytes, bits x numel, and latency (us) on and off chip."""

    sites: list[Site]
    configs: list[QuantConfig]
    omega: np.ndarray
    size: np.ndarray
    bit_weights: np.ndarray
    latency_on: np.ndarray | None
    latency_off: np.ndarray | None
    onchip_bytes: float | None

    @property
    def total_numel(self) -> int:
        return sum(s.numel for s in self.sites)


@dataclass(frozen=True)
class IlpProblem:
    """One milp instance: objective, equality (one choice per site) and budget rows."""

    c: np.ndarray
    equality: csr_matrix
    rows: np.ndarray  # (n_rows, n_variables), budget constraints
    upper: np.ndarray

    @property
    def n_variables(self) -> int:
        return self.c.size


def allocate_bits(sites: Sequence[Site], omega: Mapping[str, Mapping[int, float]],
                  choices: Sequence[int | QuantConfig], budgets: Budgets | Mapping[str, float] | None = None,
                  latency_model=None) -> Allocation:
    """The bit width per site that minimises the summed Omega within every budget.

    Args:
        sites: the model's sites (find_sites).
        omega: {site name: {bits: Omega}} (SensitivityReport.omega_for(method)).
        choices: candidate bit widths, or QuantConfigs (their weight_bits index `omega`).
        budgets: any of latency_ms, size_bytes, avg_bits (Budgets or a mapping).
        latency_model: a RooflineLatencyModel; needed for a latency budget, and used for sizes when
            given (otherwise size is numel * bits / 8 per site, rounded up).

    Raises InfeasibleBudgetError naming the budget and the least value the choices can reach.
    """
    started = time.perf_counter()
    budgets = Budgets.parse(budgets)
    tables = _tables(list(sites), omega, choices, latency_model, need_latency=budgets.latency_ms is not None)
    allocation = _allocate(tables, budgets, latency_model)
    log.debug("allocated %d sites x %d choices in %.1f ms", len(tables.sites), len(tables.configs),
              1e3 * (time.perf_counter() - started))
    return allocation


def _allocate(tables: _Tables, budgets: Budgets, latency_model) -> Allocation:
    best = None
    for regime in (["on", "off"] if budgets.latency_ms is not None else [None]):
        x = _solve(_problem(tables, budgets, regime))
        if x is not None:
            value = float((tables.omega * x).sum())
            if best is None or value < best[0] - 1e-12 * max(1.0, abs(value)):
                best = (value, x)
    if best is None:
        raise _infeasible(tables, budgets)
    return _candidate(tables, best[1], latency_model, budgets)


def budget_sweep(sites: Sequence[Site], omega: Mapping[str, Mapping[int, float]],
                 choices: Sequence[int | QuantConfig], metric: str = "latency_ms", steps: int = 20,
                 budgets: Budgets | Mapping[str, float] | None = None, latency_model=None) -> list[Candidate]:
    """Optimal allocations for `steps` budgets on `metric`, evenly spaced from the cost of every site at
    the fewest bits to the cost of every site at the most; other `budgets` stay fixed.

    Returns distinct candidates in order of increasing cost, each with strictly smaller Omega than the
    one before (a budget that buys nothing better is dropped).
    """
    if metric not in METRICS:
        raise AllocationError(f"Unknown budget metric '{metric}'; valid metrics: {', '.join(METRICS)}.")
    if not isinstance(steps, int) or steps < 2:
        raise AllocationError(f"A budget sweep needs at least 2 steps; got {steps!r}.")
    fixed = Budgets.parse(budgets).active()
    fixed.pop(metric, None)
    need_latency = metric == "latency_ms" or "latency_ms" in fixed
    tables = _tables(list(sites), omega, choices, latency_model, need_latency=need_latency)
    ends = []
    for pick in (np.argmin, np.argmax):
        j = int(pick([c.weight_bits for c in tables.configs]))
        x = np.zeros_like(tables.omega)
        x[:, j] = 1.0
        ends.append(_candidate(tables, x, latency_model, Budgets()).metric(metric))
    found: dict[tuple[int, ...], Candidate] = {}
    for value in np.linspace(ends[0], ends[1], steps):
        try:
            candidate = _allocate(tables, Budgets(**{**fixed, metric: float(value)}), latency_model)
        except InfeasibleBudgetError:
            continue
        found.setdefault(tuple(candidate.bits[s.name] for s in tables.sites), candidate)
    front: list[Candidate] = []
    for candidate in sorted(found.values(), key=lambda c: (c.metric(metric), c.omega)):
        if not front or candidate.omega < front[-1].omega:
            front.append(candidate)
    return front


def build_problem(sites: Sequence[Site], omega: Mapping[str, Mapping[int, float]],
                  choices: Sequence[int | QuantConfig], budgets: Budgets | Mapping[str, float] | None = None,
                  latency_model=None, regime: str | None = None) -> IlpProblem:
    """The milp instance `allocate_bits` solves for one memory regime: "on" or "off" chip with a latency
    budget, None without one."""
    budgets = Budgets.parse(budgets)
    tables = _tables(list(sites), omega, choices, latency_model, need_latency=budgets.latency_ms is not None)
    return _problem(tables, budgets, regime)


def _problem(tables: _Tables, budgets: Budgets, regime: str | None = None) -> IlpProblem:
    n_sites, n_choices = tables.omega.shape
    n = n_sites * n_choices
    top = float(np.abs(tables.omega).max())
    c = tables.omega.ravel() * (_OBJECTIVE_SCALE / top if top > 0 else 1.0)
    equality = csr_matrix((np.ones(n), (np.repeat(np.arange(n_sites), n_choices), np.arange(n))),
                          shape=(n_sites, n))
    rows, upper = [], []

    def bound(table: np.ndarray, limit: float) -> None:
        # Rows scaled to O(1), so HiGHS's absolute feasibility tolerance is a relative one.
        rows.append(table.ravel() / limit)
        upper.append(1.0)

    active = budgets.active()
    if "latency_ms" in active:
        table = tables.latency_on if regime == "on" else tables.latency_off
        bound(table / 1e3, active["latency_ms"])
    if regime == "on":
        bound(tables.size, tables.onchip_bytes)
    if "size_bytes" in active:
        bound(tables.size, active["size_bytes"])
    if "avg_bits" in active:
        bound(tables.bit_weights / tables.total_numel, active["avg_bits"])
    return IlpProblem(c=c, equality=equality, rows=np.array(rows).reshape(len(rows), n), upper=np.array(upper))


def _solve(problem: IlpProblem) -> np.ndarray | None:
    """The optimal 0/1 assignment reshaped to (sites, choices), or None if infeasible."""
    n = problem.n_variables
    constraints = [LinearConstraint(problem.equality, 1.0, 1.0)]
    if len(problem.rows):
        constraints.append(LinearConstraint(problem.rows, -np.inf, problem.upper))
    with _quiet_stdout():
        result = milp(problem.c, integrality=np.ones(n), bounds=Bounds(0, 1), constraints=constraints,
                      options={"mip_rel_gap": 0.0})
    if result.status == 2:  # infeasible
        return None
    if result.status != 0 or result.x is None:
        raise AllocationError(f"The bit-allocation ILP did not solve ({result.message}); report this with the "
                              "sites and budgets used.")
    n_sites = problem.equality.shape[0]
    return np.round(result.x).reshape(n_sites, -1)


@contextmanager
def _quiet_stdout() -> Iterator[None]:
    """Silence file descriptor 1: the HiGHS in scipy prints a stray debug line
    ("HighsMipSolverData::transformNewIntegerFeasibleSolution tmpSolver.run();", ERGO-Code/HiGHS#2783)
    on some solves even with output off, and library code must not print."""
    sys.stdout.flush()
    try:
        saved = os.dup(1)
    except OSError:  # no file descriptor 1 (embedded interpreters): nothing to silence
        yield
        return
    try:
        with open(os.devnull, "w") as null:
            os.dup2(null.fileno(), 1)
        yield
    finally:
        os.dup2(saved, 1)
        os.close(saved)


def _tables(sites: list[Site], omega: Mapping[str, Mapping[int, float]], choices: Sequence[int | QuantConfig],
            latency_model, need_latency: bool) -> _Tables:
    if not sites:
        raise AllocationError("No sites to allocate bits to; pass the model's sites (find_sites).")
    configs = [c if isinstance(c, QuantConfig) else QuantConfig(weight_bits=c) for c in choices]
    if not configs:
        raise AllocationError("No bit-width choices; pass at least one (e.g. [2, 4, 8]).")
    bits = [c.weight_bits for c in configs]
    if len(set(bits)) != len(bits):
        raise AllocationError(f"The choices repeat a bit width ({bits}); Omega is indexed by bits, "
                              "so give each once.")
    if need_latency and latency_model is None:
        raise AllocationError("A latency budget needs a latency model; pass latency_model="
                              "RooflineLatencyModel(profile, workload).")
    table = np.zeros((len(sites), len(configs)))
    for i, site in enumerate(sites):
        row = omega.get(site.name)
        missing = [b for b in bits if row is None or b not in row]
        if missing:
            raise AllocationError(f"Omega has no value for site '{site.name}' at {missing} bits; compute the "
                                  f"sensitivity report with these bit widths (sensitivity.bits).")
        table[i] = [float(row[b]) for b in bits]
    if not np.all(np.isfinite(table)):
        raise AllocationError("Omega holds non-finite values; compute the sensitivity report again.")
    numel = np.array([s.numel for s in sites], dtype=float)
    if latency_model is not None:
        size = np.array([[latency_model.weight_bytes(s, c) for c in configs] for s in sites], dtype=float)
    else:
        size = np.ceil(numel[:, None] * np.array(bits, dtype=float)[None, :] / 8)
    latency_on = latency_off = onchip = None
    if latency_model is not None:
        latency_on = np.array([[latency_model.site_latency(s, c, True).time_us for c in configs] for s in sites])
        latency_off = np.array([[latency_model.site_latency(s, c, False).time_us for c in configs] for s in sites])
        onchip = float(latency_model.profile.onchip_memory_bytes)
    return _Tables(sites, configs, table, size, numel[:, None] * np.array(bits, dtype=float)[None, :],
                   latency_on, latency_off, onchip)


def _candidate(tables: _Tables, x: np.ndarray, latency_model, budgets: Budgets) -> Allocation:
    chosen = x.argmax(axis=1)
    names = [s.name for s in tables.sites]
    policy = Policy({n: tables.configs[j] for n, j in zip(names, chosen)}, site_names=names)
    bits = {n: tables.configs[j].weight_bits for n, j in zip(names, chosen)}
    omega = float(tables.omega[np.arange(len(names)), chosen].sum())
    if latency_model is not None:
        report = latency_model(tables.sites, policy)
        return Allocation(policy, bits, omega, report.latency_ms, report.memory_bytes, report.avg_weight_bits,
                          budgets, report.onchip)
    size = int(tables.size[np.arange(len(names)), chosen].sum())
    avg = float(tables.bit_weights[np.arange(len(names)), chosen].sum() / tables.total_numel)
    return Allocation(policy, bits, omega, None, size, avg, budgets, None)


def _infeasible(tables: _Tables, budgets: Budgets) -> InfeasibleBudgetError:
    """The error naming the budget that cannot be met and the least value the choices reach."""
    bits = [c.weight_bits for c in tables.configs]
    minima = {}
    for name, limit in budgets.active().items():
        if name == "latency_ms":
            off = tables.latency_off.min(axis=1).sum() / 1e3
            x = _solve(IlpProblem(c=tables.latency_on.ravel() / max(tables.latency_on.max(), 1e-12),
                                  equality=_problem(tables, Budgets()).equality,
                                  rows=(tables.size.ravel() / tables.onchip_bytes)[None, :], upper=np.ones(1)))
            on = (tables.latency_on * x).sum() / 1e3 if x is not None else math.inf
            minima[name] = (float(min(on, off)), "ms")
        elif name == "size_bytes":
            minima[name] = (float(tables.size.min(axis=1).sum()), "bytes")
        else:
            minima[name] = (float(tables.bit_weights.min(axis=1).sum() / tables.total_numel), "bits")
    for name, limit in budgets.active().items():
        least, unit = minima[name]
        if least > limit * (1 + 1e-9):
            return InfeasibleBudgetError(
                f"No bit allocation meets {name} <= {limit:g}: the least achievable with choices {bits} is "
                f"{least:.6g} {unit}; raise the budget or allow fewer bits.")
    together = ", ".join(f"{n} <= {v:g} (least alone {minima[n][0]:.6g} {minima[n][1]})"
                         for n, v in budgets.active().items())
    return InfeasibleBudgetError(f"No bit allocation meets the budgets together: {together}; each is "
                                 "achievable alone, so relax one of them.")
