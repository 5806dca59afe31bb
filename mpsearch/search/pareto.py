"""The Pareto front of a study's stored trials: non-dominated filtering, exact hypervolume, the reference
point, and the table every downstream command (front, export, analysis scripts) reads.

All objectives are minimised. Only COMPLETE trials with finite values enter the front; trials that
repeat another trial's parameters, policy and values (a retried trial) appear once, under the lowest
trial number. Only trials of the current float baseline are read (record.py); the others are counted.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from mpsearch.errors import MpsearchError

if TYPE_CHECKING:
    import optuna
    import pandas as pd

    from mpsearch.config import StudyConfig
    from mpsearch.quant import Policy

log = logging.getLogger(__name__)

# Bounded error rates: 1.0 (everything wrong) is a natural worst case for the hypervolume.
ERROR_METRICS = ("wer", "cer")
REFERENCE_MARGIN = 1.1
UNIFORM_REFERENCE_ORIGIN = "uniform-8"
# what a trial's model scores (a speech model WER, a language model perplexity), then its hardware cost
QUALITY_COLUMNS = ("wer", "test_wer", "perplexity", "test_perplexity")
# 95% bootstrap interval of the eval WER, and the paired difference against the uniform 8-bit trial on
# the same utterances with its interval (eval/bootstrap.py)
INTERVAL_COLUMNS = ("wer_ci_low", "wer_ci_high", "delta_wer_vs_u8", "delta_ci_low", "delta_ci_high")
METRIC_COLUMNS = ("wer", *INTERVAL_COLUMNS, "test_wer", "perplexity", "test_perplexity", "latency_ms",
                  "size_bytes", "avg_weight_bits")


# --- geometry ---------------------------------------------------------------------------------------------
def non_dominated(points: Sequence[Sequence[float]] | np.ndarray) -> np.ndarray:
    """Boolean mask of the points no other point dominates (minimisation).

    A point dominates another when it is no worse in every objective and better in at least one, so
    identical points do not dominate each other: all copies of a front point stay on the front."""
    pts = np.asarray(points, dtype=float)
    if pts.size == 0:
        return np.zeros(len(pts), dtype=bool)
    no_worse = (pts[:, None, :] <= pts[None, :, :]).all(axis=2)   # [i, j]: i is no worse than j
    better = (pts[:, None, :] < pts[None, :, :]).any(axis=2)
    dominated = (no_worse & better).any(axis=0)
    return ~dominated


def hypervolume(points: Sequence[Sequence[float]] | np.ndarray, reference: Sequence[float]) -> float:
    """Exact volume of the region dominated by `points` and bounded by `reference` (minimisation).

    Points not strictly better than the reference in every objective contribute nothing. Two objectives
    use a sweep (O(n log n)); more are sliced along the last objective, recursively (O(n^(k-1) log n)),
    which is exact and quick for the tens to hundreds of trials a study holds."""
    ref = np.asarray(reference, dtype=float)
    pts = np.asarray(points, dtype=float).reshape(-1, len(ref))
    pts = pts[np.isfinite(pts).all(axis=1) & (pts < ref).all(axis=1)]
    if len(pts) == 0:
        return 0.0
    return float(_hypervolume(pts[non_dominated(pts)], ref))


def _hypervolume(pts: np.ndarray, ref: np.ndarray) -> float:
    k = len(ref)
    if k == 1:
        return float(ref[0] - pts[:, 0].min())
    if k == 2:
        return _hypervolume_2d(pts, ref)
    # Between consecutive values of the last objective, the points at or below the slab's floor
    # dominate a (k-1)-dimensional cross-section that is constant across the slab.
    order = np.argsort(pts[:, -1], kind="stable")
    pts = pts[order]
    levels = np.append(pts[:, -1], ref[-1])
    volume = 0.0
    for i in range(len(pts)):
        depth = levels[i + 1] - levels[i]
        if depth <= 0:
            continue
        active = pts[: i + 1, :-1]
        active = active[non_dominated(active)]
        volume += depth * _hypervolume(active, ref[:-1])
    return volume


def _hypervolume_2d(pts: np.ndarray, ref: np.ndarray) -> float:
    # Sorted by the first objective, each point that improves on the best second objective so far adds
    # the horizontal strip between the two values, reaching from its first objective to the reference.
    order = np.lexsort((pts[:, 1], pts[:, 0]))
    volume, best = 0.0, ref[1]
    for x, y in pts[order]:
        if y < best:
            volume += (ref[0] - x) * (best - y)
            best = y
    return volume


# --- reference point --------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ReferencePoint:
    """The hypervolume's reference: one value per objective and where each came from."""

    objectives: tuple[str, ...]
    values: tuple[float, ...]
    sources: tuple[str, ...]

    def as_dict(self) -> dict[str, float]:
        return dict(zip(self.objectives, self.values))

    def describe(self) -> str:
        return ", ".join(f"{o}={_number(v)} ({s})" for o, v, s in zip(self.objectives, self.values, self.sources))


def resolve_reference_point(objectives: Sequence[str], values: np.ndarray, origins: Sequence[str],
                            given: Mapping[str, float] | None = None) -> ReferencePoint:
    """Per objective: the value in `given` (search.reference_point); else 1.0 for an error rate; else
    1.1 x the "uniform-8" trial's value, or 1.1 x the worst trial's when no uniform 8-bit trial completed.

    `values` holds the complete trials' objective values (one row each), `origins` their origins."""
    given = dict(given or {})
    values = np.asarray(values, dtype=float).reshape(-1, len(objectives))
    uniform = [i for i, o in enumerate(origins) if o == UNIFORM_REFERENCE_ORIGIN]
    ref, sources = [], []
    for j, name in enumerate(objectives):
        if name in given:
            ref.append(float(given[name]))
            sources.append("search.reference_point")
        elif name in ERROR_METRICS:
            ref.append(1.0)
            sources.append("error rate")
        elif uniform:
            ref.append(REFERENCE_MARGIN * float(values[uniform[0], j]))
            sources.append(f"{REFERENCE_MARGIN:g} x {UNIFORM_REFERENCE_ORIGIN}")
        else:
            finite = values[:, j][np.isfinite(values[:, j])]
            if len(finite) == 0:
                raise MpsearchError(f"No complete trial has a finite '{name}', so the hypervolume has no "
                                    f"reference; set search.reference_point.{name} in the study YAML.")
            ref.append(REFERENCE_MARGIN * float(finite.max()))
            sources.append(f"{REFERENCE_MARGIN:g} x worst trial")
    return ReferencePoint(tuple(objectives), tuple(ref), tuple(sources))


# --- the table --------------------------------------------------------------------------------------------
@dataclass
class FrontTable:
    """The complete trials of a study, one row per distinct point, with the front marked.

    `frame` columns: trial, origin, any objective not among the usual metrics, wer, its 95% bootstrap
    interval (wer_ci_low, wer_ci_high), the paired difference against uniform 8-bit with its interval
    (delta_wer_vs_u8, delta_ci_low, delta_ci_high), test_wer, latency_ms, size_bytes, avg_weight_bits, then per searched group `<group>.weight_bits` and
    `<group>.method` (from the trial's parameters, or from its stored policy where the field was fixed),
    any other searched fields, and on_front. Rows are sorted by the objectives in order."""

    study_name: str
    objectives: tuple[str, ...]
    frame: pd.DataFrame
    reference: ReferencePoint
    hypervolume: float
    states: dict[str, int]
    trials: dict[int, optuna.trial.FrozenTrial] = field(repr=False)
    duplicates: dict[int, list[int]] = field(default_factory=dict)
    # the uniform 8-bit trial's per-utterance errors, which every row's paired difference is taken against
    reference_utterances: dict | None = field(default=None, repr=False)
    # trials scored on another float baseline than the current one, left out of everything above
    older_baseline: list[int] = field(default_factory=list)

    @classmethod
    def from_study(cls, study: optuna.Study, objectives: Sequence[str],
                   reference_point: Mapping[str, float] | None = None, baseline: str | None = None) -> FrontTable:
        """The table of the trials scored on `baseline` (default: the baseline the study's latest search
        scored on; with neither, every trial)."""
        import pandas as pd
        from optuna.trial import TrialState

        from mpsearch.search.record import split_by_baseline, study_baseline

        objectives = tuple(objectives)
        if len(study.directions) != len(objectives):
            raise MpsearchError(f"Study '{study.study_name}' stores {len(study.directions)} objective(s) but "
                                f"search.objectives lists {len(objectives)} ({', '.join(objectives)}); restore the "
                                "objectives the search ran with, or search again under a new study name.")
        current, older = split_by_baseline(study.get_trials(deepcopy=False), baseline or study_baseline(study))
        trials = {t.number: t for t in current}
        states: dict[str, int] = {}
        for t in trials.values():
            states[t.state.name.lower()] = states.get(t.state.name.lower(), 0) + 1
        complete = sorted((t for t in trials.values() if t.state == TrialState.COMPLETE), key=lambda t: t.number)
        kept, duplicates = _distinct(complete)
        prefixes = _group_prefixes(kept)
        other_params = _other_params(kept)
        group_sites = {g.get("group"): g.get("site_names") or [] for g in study.user_attrs.get("space") or []
                       if isinstance(g, dict)}
        reference_utterances = _reference_utterances(kept)
        rows = [_row(t, objectives, prefixes, other_params, group_sites, reference_utterances) for t in kept]
        columns = _columns(objectives, prefixes, other_params)
        frame = pd.DataFrame(rows, columns=columns)
        # a speech study has no perplexity, a language model no WER: leave out what no trial measured
        frame = frame.drop(columns=[c for c in (*QUALITY_COLUMNS, *INTERVAL_COLUMNS)
                                    if c not in objectives and frame[c].isna().all()])
        points = frame[list(objectives)].to_numpy(dtype=float) if len(frame) else np.zeros((0, len(objectives)))
        finite = np.isfinite(points).all(axis=1)
        on_front = np.zeros(len(frame), dtype=bool)
        on_front[np.flatnonzero(finite)] = non_dominated(points[finite])
        frame["on_front"] = on_front
        frame = frame.sort_values([*objectives, "trial"], kind="stable").reset_index(drop=True)
        _add_confirmed(frame, study, baseline or study_baseline(study))
        if len(frame):
            reference = resolve_reference_point(objectives, frame[list(objectives)].to_numpy(dtype=float),
                                                list(frame["origin"]), reference_point)
            volume = hypervolume(frame.loc[frame["on_front"], list(objectives)].to_numpy(dtype=float),
                                 reference.values)
        else:
            reference = ReferencePoint(objectives, tuple(math.nan for _ in objectives), tuple("" for _ in objectives))
            volume = 0.0
        if duplicates:
            log.debug("trials repeating an earlier point, shown once: %s", duplicates)
        return cls(study.study_name, objectives, frame, reference, volume, states, trials, duplicates,
                   reference_utterances, [t.number for t in older])

    # --- views --------------------------------------------------------------------------------------------
    @property
    def front(self) -> pd.DataFrame:
        return self.frame[self.frame["on_front"]].reset_index(drop=True)

    def front_numbers(self) -> list[int]:
        return [int(n) for n in self.front["trial"]]

    @property
    def group_columns(self) -> list[str]:
        start = list(self.frame.columns).index("avg_weight_bits") + 1
        return list(self.frame.columns)[start:-1]

    def row(self, number: int) -> dict[str, Any]:
        """The table row of trial `number` (a COMPLETE trial; a repeated point gets its own row)."""
        trial = self.trials[number]
        prefixes = [c[: -len(".weight_bits")] for c in self.group_columns if c.endswith(".weight_bits")]
        other = [c for c in self.group_columns if not c.endswith((".weight_bits", ".method"))]
        values = _row(trial, self.objectives, prefixes, other, reference=self.reference_utterances)
        values = {k: v for k, v in values.items() if k in self.frame.columns}
        point = np.array([values[o] for o in self.objectives], dtype=float)
        others = self.frame[list(self.objectives)].to_numpy(dtype=float)
        dominated = ((others <= point).all(axis=1) & (others < point).any(axis=1)).any()
        values["on_front"] = bool(np.isfinite(point).all() and not dominated)
        return values

    def policy(self, number: int) -> Policy:
        from mpsearch.quant import Policy

        data = self.trials[number].user_attrs.get("policy")
        if data is None:
            raise MpsearchError(f"Trial {number} of study '{self.study_name}' stores no policy "
                                "(user_attrs['policy']); pick a trial that `mpsearch search` ran.")
        return Policy.from_dict(data, source=f"trial {number} of study '{self.study_name}'")

    def summary(self) -> dict[str, Any]:
        """What front.json records."""
        return {
            "study": self.study_name,
            "objectives": list(self.objectives),
            "hypervolume": self.hypervolume,
            "reference_point": self.reference.as_dict(),
            "reference_source": dict(zip(self.reference.objectives, self.reference.sources)),
            "trials": {"complete": self.states.get("complete", 0), "failed": self.states.get("fail", 0),
                       **{k: v for k, v in sorted(self.states.items()) if k not in ("complete", "fail")}},
            "distinct_points": len(self.frame),
            "front": self.front_numbers(),
            "duplicates": {str(k): v for k, v in sorted(self.duplicates.items())},
            "older_baseline": len(self.older_baseline),
        }


def load_front_table(cfg: StudyConfig) -> FrontTable:
    """The FrontTable of the study's stored trials of its current float baseline; an error when none has
    completed yet."""
    from mpsearch.search.record import current_baseline, older_baseline_note
    from mpsearch.search.storage import fail_reason, load_trials_study, storage_url

    study = load_trials_study(cfg)
    table = FrontTable.from_study(study, cfg.search.objectives, cfg.search.reference_point,
                                  baseline=current_baseline(cfg, study))
    if table.frame.empty and table.older_baseline:
        raise MpsearchError(f"No complete trial in study '{cfg.name}' on its current float baseline: "
                            f"{older_baseline_note(len(table.older_baseline))}.")
    if table.frame.empty:
        failed = [t for t in table.trials.values() if t.state.name == "FAIL"]
        reason = ""
        if failed:
            last = fail_reason(failed[-1])
            reason = f" ({len(failed)} failed; trial {failed[-1].number}: {last})"
        raise MpsearchError(f"No complete trial in study '{cfg.name}' at {storage_url(cfg)}{reason}; "
                            "run `mpsearch search` on the study, or fix what made the trials fail.")
    return table


def _add_confirmed(frame: pd.DataFrame, study: optuna.Study, baseline: str | None) -> None:
    """A one-shot search's fine-tuned confirmations of its front, as `confirmed_<score>` columns."""
    from mpsearch.search.confirm import confirmations

    confirmed = confirmations(study, baseline)
    for name in CONFIRMED_COLUMNS if confirmed and len(frame) else ():
        frame["confirmed_" + name] = [_float(confirmed.get(int(t), {}).get(name)) for t in frame["trial"]]


CONFIRMED_COLUMNS = ("wer", "wer_ci_low", "wer_ci_high", "test_wer")


# --- rows -------------------------------------------------------------------------------------------------
def _distinct(trials: list) -> tuple[list, dict[int, list[int]]]:
    seen: dict[str, int] = {}
    kept, duplicates = [], {}
    for t in trials:
        key = json.dumps([t.params, list(t.values or []), t.user_attrs.get("policy")], sort_keys=True, default=str)
        if key in seen:
            duplicates.setdefault(seen[key], []).append(t.number)
            continue
        seen[key] = t.number
        kept.append(t)
    return kept, duplicates


def _group_prefixes(trials: list) -> list[str]:
    prefixes: dict[str, None] = {}
    for t in trials:
        for name in t.params:
            prefix, _, _ = name.rpartition(".")
            if prefix:
                prefixes.setdefault(prefix)
    return list(prefixes)


def _other_params(trials: list) -> list[str]:
    names: dict[str, None] = {}
    for t in trials:
        for name in t.params:
            if not name.endswith((".weight_bits", ".method")):
                names.setdefault(name)
    return list(names)


def _columns(objectives: Sequence[str], prefixes: list[str], other_params: list[str]) -> list[str]:
    extra = [o for o in objectives if o not in METRIC_COLUMNS]
    groups = [f"{p}.{f}" for p in prefixes for f in ("weight_bits", "method")]
    return ["trial", "origin", *extra, *METRIC_COLUMNS, *groups, *other_params]


def _reference_utterances(trials: Sequence) -> dict | None:
    """The per-utterance record of the lowest-numbered complete uniform 8-bit trial, if it has one."""
    for t in sorted(trials, key=lambda t: t.number):
        record = (t.user_attrs.get("metrics") or {}).get("utterances")
        if t.user_attrs.get("origin") == UNIFORM_REFERENCE_ORIGIN and isinstance(record, dict):
            return record
    return None


def _paired_delta(record: Any, reference: dict | None) -> tuple[float, float, float]:
    """(delta, low, high) of a trial's WER against the reference's on the same utterances; NaN when
    either has no per-utterance record or they scored different utterances."""
    from mpsearch.eval.bootstrap import paired_delta

    if not isinstance(record, dict) or reference is None:
        return math.nan, math.nan, math.nan
    same = (record.get("references") == reference.get("references") and record.get("words") == reference.get("words"))
    if not same:
        return math.nan, math.nan, math.nan
    delta = paired_delta(record["errors"], reference["errors"], record["words"])
    return delta.value, delta.low, delta.high


def _row(trial, objectives: Sequence[str], prefixes: Sequence[str], other_params: Sequence[str],
         group_sites: Mapping[str, Sequence[str]] | None = None, reference: dict | None = None) -> dict[str, Any]:
    metrics = trial.user_attrs.get("metrics") or {}
    row: dict[str, Any] = {"trial": trial.number, "origin": trial.user_attrs.get("origin", "")}
    for name in {*objectives, *METRIC_COLUMNS}:
        row[name] = _float(metrics.get(name))
    row["delta_wer_vs_u8"], row["delta_ci_low"], row["delta_ci_high"] = _paired_delta(metrics.get("utterances"),
                                                                                       reference)
    # The stored values are what the search optimised; they win over the metrics dict.
    for name, value in zip(objectives, trial.values or []):
        row[name] = _float(value)
    policy = trial.user_attrs.get("policy")
    for prefix in prefixes:
        for f in ("weight_bits", "method"):
            name = f"{prefix}.{f}"
            if name in trial.params:
                row[name] = trial.params[name]
            else:
                row[name] = _group_field(policy, (group_sites or {}).get(prefix), f)
    for name in other_params:
        row[name] = trial.params.get(name)
    return row


def _group_field(policy: Any, sites: Sequence[str] | None, field_name: str) -> Any:
    """A fixed (unsearched) field of a group: its first site's rule when the study stored which sites
    the group holds, else a summary of the whole policy."""
    rules = policy.get("rules") if isinstance(policy, dict) else None
    if sites and isinstance(rules, dict) and isinstance(rules.get(sites[0]), dict):
        return rules[sites[0]].get(field_name)
    return _policy_field(policy, field_name)


def _policy_field(policy: Any, field_name: str) -> Any:
    """A fixed (unsearched) field: the policy's value when all its quantised rules agree, else "a/b"."""
    if not isinstance(policy, dict):
        return None
    values = sorted({str(cfg.get(field_name)) for cfg in (policy.get("rules") or {}).values()
                     if isinstance(cfg, dict) and cfg.get(field_name) is not None})
    if len(values) == 1:
        return int(values[0]) if values[0].isdigit() else values[0]
    return "/".join(values) or None


def _float(value: Any) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan


def format_value(value: Any) -> str:
    """A table cell as text: numbers to 4 significant digits (whole numbers whole), missing as "-"."""
    if isinstance(value, float):
        return "-" if math.isnan(value) else _number(value)
    return "-" if value is None else str(value)


def _number(value: float) -> str:
    if not math.isfinite(value):
        return str(value)
    if value == int(value) and abs(value) >= 1:
        return str(int(value))
    return f"{value:.4g}"
