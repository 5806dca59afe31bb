import itertools
import time

import numpy as np
import pytest

from mpsearch.hardware import RooflineLatencyModel
from mpsearch.hardware.profile import HardwareProfile
from mpsearch.quant import Policy, QuantConfig
from mpsearch.quant.sites import Site
from mpsearch.search.ilp import (
    AllocationError,
    Budgets,
    InfeasibleBudgetError,
    allocate_bits,
    budget_sweep,
    build_problem,
)

SITES = [
    Site("enc.proj", "enc.proj", "weight", "linear", (64, 80), 64 * 80, "frame"),
    Site("enc.lstm.weight_ih_l0", "enc.lstm", "weight_ih_l0", "lstm_ih", (256, 64), 256 * 64, "frame"),
    Site("enc.lstm.weight_hh_l0", "enc.lstm", "weight_hh_l0", "lstm_hh", (256, 64), 256 * 64, "frame"),
    Site("joint.out", "joint.out", "weight", "linear", (32, 64), 32 * 64, "joint"),
]
CHOICES = [2, 4, 8]
# 39,936 weights: on chip (20,000 bytes) only below ~4 bits on average, so budgets cross the regimes.
PROFILE = {
    "name": "test-nna", "clock_mhz": 500, "macs_per_cycle": 256, "onchip_memory_bytes": 20000,
    "offchip_bandwidth_gbps": 4.0, "onchip_bandwidth_gbps": 64.0, "supported_weight_bits": [2, 3, 4, 5, 6, 7, 8],
    "decompress_on_the_fly": True, "sparse_format": "bitmask", "activation_bits": 8, "layer_overhead_us": 1.0,
    "float_policy": "reject",
}


@pytest.fixture
def latency_model():
    return RooflineLatencyModel(HardwareProfile.from_dict(PROFILE))


def make_omega(sites, bits, seed=0):
    rng = np.random.default_rng(seed)
    return {s.name: {b: float(rng.uniform(0.5, 5.0) * 4.0 ** -b * s.numel) for b in bits} for s in sites}


def brute_force(sites, omega, budgets, latency_model):
    """The least-Omega assignment by enumeration, judged by the full (non-additive) latency model."""
    best = None
    for combo in itertools.product(CHOICES, repeat=len(sites)):
        policy = Policy({s.name: QuantConfig(weight_bits=b) for s, b in zip(sites, combo)})
        report = latency_model(sites, policy)
        metrics = {"latency_ms": report.latency_ms, "size_bytes": report.memory_bytes,
                   "avg_bits": report.avg_weight_bits}
        if all(metrics[k] <= v for k, v in budgets.items()):
            value = sum(omega[s.name][b] for s, b in zip(sites, combo))
            if best is None or value < best[0]:
                best = (value, combo)
    return best


def uniform(latency_model, bits):
    return latency_model(SITES, Policy.uniform(QuantConfig(weight_bits=bits)))


@pytest.mark.parametrize("budgets", [
    {"latency_ms": 0.1225}, {"latency_ms": 0.124}, {"latency_ms": 0.126}, {"latency_ms": 0.25},
    {"latency_ms": 0.36}, {"size_bytes": 15000}, {"size_bytes": 25000}, {"avg_bits": 3.0}, {"avg_bits": 5.5},
    {"latency_ms": 0.36, "size_bytes": 22000}, {"latency_ms": 0.3, "avg_bits": 6.0},
])
def test_equals_brute_force_and_respects_every_budget(budgets, latency_model):
    lo, hi = uniform(latency_model, 2).latency_ms, uniform(latency_model, 8).latency_ms
    assert lo < 0.1225 and 0.36 < hi  # the latency budgets above lie strictly between the uniform extremes
    omega = make_omega(SITES, CHOICES)
    allocation = allocate_bits(SITES, omega, CHOICES, budgets, latency_model)
    best = brute_force(SITES, omega, budgets, latency_model)
    assert allocation.omega == pytest.approx(best[0], rel=1e-9)
    assert tuple(allocation.bits[s.name] for s in SITES) == best[1]
    for name, limit in budgets.items():
        assert allocation.metric(name) <= limit * (1 + 1e-9)
    report = latency_model(SITES, allocation.policy)
    assert report.latency_ms == pytest.approx(allocation.latency_ms) and report.onchip == allocation.onchip


def test_both_memory_regimes_win_somewhere(latency_model):
    omega = make_omega(SITES, CHOICES)
    regimes = {allocate_bits(SITES, omega, CHOICES, {"latency_ms": b}, latency_model).onchip
               for b in np.linspace(0.123, 0.367, 12)}
    assert regimes == {True, False}


def test_policy_names_every_site_exactly():
    allocation = allocate_bits(SITES, make_omega(SITES, CHOICES), CHOICES, {"avg_bits": 4.0})
    assert allocation.policy.site_names == [s.name for s in SITES]
    assert set(allocation.policy.rules) == {s.name for s in SITES}
    allocation.policy.validate(SITES)
    assert allocation.latency_ms is None and allocation.onchip is None
    assert allocation.size_bytes == sum(s.numel * allocation.bits[s.name] // 8 for s in SITES)


def test_no_budget_keeps_every_site_at_the_most_bits():
    allocation = allocate_bits(SITES, make_omega(SITES, CHOICES), CHOICES)
    assert set(allocation.bits.values()) == {8} and allocation.avg_bits == 8.0


def test_an_infeasible_budget_names_itself_and_the_least_achievable(latency_model):
    omega = make_omega(SITES, CHOICES)
    least = uniform(latency_model, 2).latency_ms
    with pytest.raises(InfeasibleBudgetError, match=rf"latency_ms <= 0.01: .* is {least:.6g} ms"):
        allocate_bits(SITES, omega, CHOICES, {"latency_ms": 0.01}, latency_model)
    with pytest.raises(InfeasibleBudgetError, match=r"avg_bits <= 1.5: .* is 2 bits"):
        allocate_bits(SITES, omega, CHOICES, {"avg_bits": 1.5})
    with pytest.raises(InfeasibleBudgetError, match=r"size_bytes <= 100: .* is 9984 bytes"):
        allocate_bits(SITES, omega, CHOICES, {"size_bytes": 100})


def test_bad_inputs_are_named():
    omega = make_omega(SITES, CHOICES)
    with pytest.raises(AllocationError, match="latency model"):
        allocate_bits(SITES, omega, CHOICES, {"latency_ms": 1.0})
    with pytest.raises(AllocationError, match="Unknown budget"):
        allocate_bits(SITES, omega, CHOICES, {"latency": 1.0})
    with pytest.raises(AllocationError, match="positive"):
        Budgets(size_bytes=-3)
    with pytest.raises(AllocationError, match=r"'enc.proj' at \[6\] bits"):
        allocate_bits(SITES, omega, [2, 6])


@pytest.mark.parametrize("metric", ["latency_ms", "size_bytes", "avg_bits"])
def test_sweep_is_deduplicated_and_monotone(metric, latency_model):
    omega = make_omega(SITES, CHOICES)
    front = budget_sweep(SITES, omega, CHOICES, metric, steps=25, latency_model=latency_model)
    assert 3 <= len(front) <= 25
    assigned = [tuple(c.bits[s.name] for s in SITES) for c in front]
    assert len(set(assigned)) == len(assigned)
    costs, omegas = [c.metric(metric) for c in front], [c.omega for c in front]
    assert costs == sorted(costs) and all(a > b for a, b in itertools.pairwise(omegas))
    assert assigned[0] == (2,) * len(SITES) and assigned[-1] == (8,) * len(SITES)


def test_fifty_sites_by_six_choices_is_one_small_milp(latency_model):
    rng = np.random.default_rng(1)
    sites = [Site(f"layer{i}", f"layer{i}", "weight", "linear", (int(a), int(b)), int(a * b), "frame")
             for i, (a, b) in enumerate(rng.integers(16, 128, size=(50, 2)))]
    bits = [2, 3, 4, 5, 6, 8]
    omega = make_omega(sites, bits)
    problem = build_problem(sites, omega, bits, {"latency_ms": 1.0, "avg_bits": 4.0}, latency_model, regime="on")
    assert problem.n_variables == 300 and problem.equality.shape == (50, 300)
    assert problem.rows.shape == (3, 300)  # latency, on-chip memory, average bits
    started = time.perf_counter()
    allocation = allocate_bits(sites, omega, bits, {"avg_bits": 4.0})
    elapsed = time.perf_counter() - started
    assert allocation.avg_bits <= 4.0 + 1e-9
    print(f"50 x 6 allocation: {elapsed * 1e3:.1f} ms")  # measured, not asserted (shared machines)
