"""Trials enqueued before the sampler's own: the uniform-precision policies (always: the reference every
front must beat), the ILP's latency-budget sweep over the sensitivity report, and the supernet's
lambda sweep when the study asks for it."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING

from mpsearch.search.space import SearchSpace

if TYPE_CHECKING:
    from mpsearch.study import Study

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


def ilp_starts(study: Study, space: SearchSpace, count: int) -> list[WarmStart]:
    """`count` allocations spread along the ILP's latency-budget sweep (HAWQ-V3), snapped to the space.
    The sweep's two ends (every site at its widest or narrowest width) are the uniform policies, which
    are enqueued anyway, so the picks are spread over its inside."""
    if count <= 0:
        return []
    from mpsearch.search.ilp import budget_sweep
    from mpsearch.sensitivity.stage import ensure_sensitivity

    report = ensure_sensitivity(study)
    bits = sorted({b for g in space.groups for b in g.choices["weight_bits"]} & set(report.bits))
    if len(bits) < 2:
        log.info("the search space and the sensitivity report share fewer than two bit widths; no ILP candidates")
        return []
    sweep = budget_sweep(study.sites(), report.omega_for("uniform"), bits, metric="latency_ms",
                         steps=max(8, 4 * count), latency_model=study.latency_model())
    inside = sweep[1:-1] if len(sweep) > 2 else sweep
    picked = [inside[round(i * (len(inside) - 1) / max(1, count - 1))] for i in range(min(count, len(inside)))]
    return [WarmStart(f"ilp-{i}", space.params_for(c.policy)) for i, c in enumerate(picked)]


def supernet_starts(study: Study, space: SearchSpace) -> list[WarmStart]:
    from mpsearch.supernet.stage import ensure_supernet

    return [WarmStart(f"supernet-{c.lam:g}", dict(c.params)) for c in ensure_supernet(study)]


def warm_starts(study: Study, space: SearchSpace) -> list[WarmStart]:
    """Every warm-start trial of the study, duplicates (same parameters) dropped, first origin kept."""
    cfg = study.cfg.search.warm_start
    starts = uniform_starts(space) + ilp_starts(study, space, cfg.ilp)
    if cfg.supernet:
        starts += supernet_starts(study, space)
    unique: dict[tuple, WarmStart] = {}
    for start in starts:
        unique.setdefault(tuple(sorted(start.params.items())), start)
    return list(unique.values())
