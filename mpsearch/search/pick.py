"""Choosing one trial of a study to export: by number, the knee of the front, or the best trial under a
latency or WER limit. Every choice is a COMPLETE trial; an unmet limit names the closest achievable value.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from mpsearch.errors import MpsearchError
from mpsearch.search.storage import fail_reason

if TYPE_CHECKING:
    from mpsearch.quant import Policy
    from mpsearch.search.pareto import FrontTable

KNEE = "knee"
PICKS = (KNEE,)
_STATE_WORDS = {"FAIL": "failed", "RUNNING": "is still running", "PRUNED": "was pruned", "WAITING": "has not run"}


@dataclass(frozen=True)
class PickedTrial:
    """The chosen trial: its number, why it was chosen, its table row and its Policy."""

    number: int
    reason: str
    row: dict[str, Any]
    policy: Policy


def pick_trial(table: FrontTable, *, trial: int | None = None, pick: str | None = None,
               max_latency_ms: float | None = None, max_wer: float | None = None) -> PickedTrial:
    """Exactly one of `trial`, `pick` ("knee"), `max_latency_ms` or `max_wer` chooses the trial."""
    choices = {"trial": trial, "pick": pick, "max_latency_ms": max_latency_ms, "max_wer": max_wer}
    given = [name for name, value in choices.items() if value is not None]
    if len(given) != 1:
        raise MpsearchError(f"Choose a trial in exactly one way (trial, pick, max_latency_ms or max_wer); "
                            f"got {', '.join(given) or 'none'}.")
    if trial is not None:
        return by_number(table, trial)
    if pick is not None:
        if pick not in PICKS:
            raise MpsearchError(f"Unknown pick '{pick}'; valid choices: {', '.join(PICKS)}.")
        return knee(table)
    if max_latency_ms is not None:
        return lowest_wer_within_latency(table, max_latency_ms)
    return fastest_within_wer(table, max_wer)


def by_number(table: FrontTable, number: int) -> PickedTrial:
    if number in table.older_baseline:
        raise MpsearchError(f"Trial {number} of study '{table.study_name}' was scored on an older float baseline, "
                            "so its numbers no longer hold; pick a trial of the current one, e.g. one on the front: "
                            f"{_numbers(table.front_numbers())}.")
    if number not in table.trials:
        known = sorted(table.trials)
        span = f"trials {known[0]}-{known[-1]}" if known else "no trials"
        raise MpsearchError(f"Trial {number} is not in study '{table.study_name}' ({span}); "
                            f"the front holds trials {_numbers(table.front_numbers())}.")
    state = table.trials[number].state.name
    if state != "COMPLETE":
        reason = fail_reason(table.trials[number])
        why = f" ({reason})" if reason else ""
        raise MpsearchError(f"Trial {number} {_STATE_WORDS.get(state, state)}{why}; pick a COMPLETE trial, e.g. one on the front: "
                            f"{_numbers(table.front_numbers())}.")
    return _picked(table, number, f"trial {number}")


def knee(table: FrontTable) -> PickedTrial:
    """The front point farthest from the line joining the front's extremes (its best WER and its best
    latency, say), on the side of the ideal point, with every objective scaled to [0, 1] over the front.
    With k objectives the line becomes the hyperplane through the best point in each objective. With one
    point, that point; with no point inside the line (a concave or two-point front), the extreme best in
    the first objective."""
    front = table.front
    if front.empty:
        raise MpsearchError(f"Study '{table.study_name}' has no front (no complete trial with finite values); "
                            "run `mpsearch search` until trials complete.")
    points = front[list(table.objectives)].to_numpy(dtype=float)
    numbers = front["trial"].to_numpy()
    low, high = points.min(axis=0), points.max(axis=0)
    scaled = (points - low) / np.where(high > low, high - low, 1.0)
    extremes = [_lexicographic_best(scaled, numbers, j) for j in range(scaled.shape[1])]
    first = extremes[0]
    # Distance to the affine hull of the extremes: the part of (p - first) outside their span.
    spans = scaled[extremes[1:]] - scaled[first]
    u, singular, _ = np.linalg.svd(spans.T, full_matrices=False)
    basis = u[:, singular > 1e-9 * max(singular.max(initial=0.0), 1.0)]
    if basis.shape[1] == 0:
        return _picked(table, int(numbers[first]), "the knee of the front (its only point)")
    offsets = scaled - scaled[first]
    residual = offsets - (offsets @ basis) @ basis.T
    distance = np.linalg.norm(residual, axis=1)
    # The knee bulges toward the ideal point (all zeros); points on the far side are concave dips.
    to_ideal = -scaled[first] - (-scaled[first] @ basis) @ basis.T
    if np.any(np.abs(to_ideal) > 1e-12):
        distance = np.where(residual @ to_ideal >= 0, distance, -distance)
    best = max(range(len(numbers)), key=lambda i: (round(distance[i], 12), -points[i, 0], -numbers[i]))
    if distance[best] <= 1e-12:
        best = first
    return _picked(table, int(numbers[best]), f"the knee of the front (distance {distance[best]:.3g} from the "
                                              "line joining its extremes, objectives scaled to [0, 1])")


def lowest_wer_within_latency(table: FrontTable, max_latency_ms: float) -> PickedTrial:
    """The lowest WER among complete trials with latency_ms <= `max_latency_ms` (ties: the faster)."""
    return _best_within(table, limit_column="latency_ms", limit=max_latency_ms, goal_column="wer",
                        unit=" ms", name="latency")


def fastest_within_wer(table: FrontTable, max_wer: float) -> PickedTrial:
    """The lowest latency_ms among complete trials with WER <= `max_wer` (ties: the lower WER)."""
    return _best_within(table, limit_column="wer", limit=max_wer, goal_column="latency_ms", unit="", name="WER")


def _best_within(table: FrontTable, *, limit_column: str, limit: float, goal_column: str, unit: str,
                 name: str) -> PickedTrial:
    frame = table.frame
    for column in (limit_column, goal_column):
        if frame[column].isna().all():
            raise MpsearchError(f"No complete trial of study '{table.study_name}' records '{column}'; "
                                "choose with --trial or --pick knee instead.")
    usable = frame[frame[limit_column].notna() & frame[goal_column].notna()]
    within = usable[usable[limit_column] <= limit]
    if within.empty:
        closest = usable.sort_values([limit_column, goal_column, "trial"]).iloc[0]
        raise MpsearchError(f"No complete trial has {limit_column} <= {limit:g}{unit}; the lowest is "
                            f"{closest[limit_column]:.4g}{unit} (trial {int(closest['trial'])}); raise the {name} "
                            "limit to at least that.")
    best = within.sort_values([goal_column, limit_column, "trial"]).iloc[0]
    return _picked(table, int(best["trial"]), f"the lowest {goal_column} with {limit_column} <= {limit:g}{unit}")


def _lexicographic_best(points: np.ndarray, numbers: np.ndarray, column: int) -> int:
    order = [column, *(j for j in range(points.shape[1]) if j != column)]
    # np.lexsort sorts by its last key first.
    keys = [numbers, *(points[:, j] for j in reversed(order))]
    return int(np.lexsort(keys)[0])


def _picked(table: FrontTable, number: int, reason: str) -> PickedTrial:
    return PickedTrial(number, reason, table.row(number), table.policy(number))


def _numbers(numbers: list[int], limit: int = 10) -> str:
    if not numbers:
        return "none"
    shown = ", ".join(str(n) for n in numbers[:limit])
    return shown + (f", ... ({len(numbers)} in all)" if len(numbers) > limit else "")
