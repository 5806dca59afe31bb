"""Trials enqueued before the sampler's own: the uniform-precision policies (always: the reference every
front must beat), the ILP's latency-budget sweep over the sensitivity report, and the supernet's
lambda sweep when the study asks for it."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from mpsearch.space import SearchSpace

if TYPE_CHECKING:
    from mpsearch.config import WarmStartConfig
    from mpsearch.quant.sites import Site
    from mpsearch.sensitivity.report import SensitivityReport
    from mpsearch.supernet.search import SupernetCandidate

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class WarmStart:
    origin: str
    params: dict


def uniform_starts(space: SearchSpace) -> list[WarmStart]:
    """One trial per bit width every group allows, widest first, with each group's first method."""
    starts = []
    for bits in sorted(space.weight_bit_choices(), reverse=True):
        params = space.uniform_params(bits)
        if params is not None:
            starts.append(WarmStart(f"uniform-{bits}", params))
    return starts


def ilp_starts(space: SearchSpace, report: SensitivityReport, sites: Sequence[Site], latency_model: Any,
               count: int) -> list[WarmStart]:
    """`count` allocations spread along the ILP's latency-budget sweep (HAWQ-V3) over the sensitivity
    `report`, snapped to the space. The sweep's two ends (every site at its widest or narrowest width)
    are the uniform policies, which are enqueued anyway, so the picks are spread over its inside."""
    if count <= 0:
        return []
    from mpsearch.search.ilp import budget_sweep

    bits = sorted({b for g in space.groups for b in g.choices["weight_bits"]} & set(report.bits))
    if len(bits) < 2:
        log.info("the search space and the sensitivity report share fewer than two bit widths; no ILP candidates")
        return []
    sweep = budget_sweep(list(sites), report.omega_for("uniform"), bits, metric="latency_ms",
                         steps=max(8, 4 * count), latency_model=latency_model)
    inside = sweep[1:-1] if len(sweep) > 2 else sweep
    picked = [inside[round(i * (len(inside) - 1) / max(1, count - 1))] for i in range(min(count, len(inside)))]
    return [WarmStart(f"ilp-{i}", space.params_for(c.policy)) for i, c in enumerate(picked)]


def supernet_starts(candidates: Sequence[SupernetCandidate]) -> list[WarmStart]:
    return [WarmStart(f"supernet-{c.lam:g}", dict(c.params)) for c in candidates]


def warm_starts(space: SearchSpace, cfg: WarmStartConfig, *, sites: Sequence[Site] = (), latency_model: Any = None,
                sensitivity: SensitivityReport | None = None,
                supernet: Sequence[SupernetCandidate] | None = None) -> list[WarmStart]:
    """Every warm-start trial: the uniform policies, `cfg.ilp` ILP picks from the `sensitivity` report and
    the `supernet` candidates when `cfg.supernet`; duplicates (same parameters) dropped, first origin kept."""
    starts = uniform_starts(space)
    if cfg.ilp > 0 and sensitivity is not None:
        starts += ilp_starts(space, sensitivity, sites, latency_model, cfg.ilp)
    if cfg.supernet and supernet is not None:
        starts += supernet_starts(supernet)
    unique: dict[tuple, WarmStart] = {}
    for start in starts:
        unique.setdefault(tuple(sorted(start.params.items())), start)
    return list(unique.values())
