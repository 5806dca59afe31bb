"""The trial record both search backends write, and what each trial was scored against.

`TrialRecord` holds the rules of a trial's record for the Optuna and the Ray backend alike: what a trial
carries (storage.py lists it), a re-proposed point answered from its stored trial (`copied_from`), the
missing-objective check, failures with their reason, the warm starts enqueued once, and the retry
budget (`Budget`) that ends a search. It writes through Optuna's public API.

What each stored trial was scored against, and which trials count for the study as it is now:

A trial's numbers hold for the float baseline it fine-tuned from (`Study.baseline_key`) and, for the ILP
warm starts, the sensitivity report they came from. Every trial records both keys (user attrs
"baseline" and "sensitivity" from its start, and the same in its metrics). When the baseline changes (a
new checkpoint, other training settings, an edited manifest) the trials of the old one stay stored as
history but take no part: the front, export and the report leave them out and say how many, a point
the sampler proposes again is never answered from them, the warm starts are enqueued again, and the
count of finished points that ends a search counts only the current baseline's trials.

The current baseline is the one in the study folder (`baseline/metrics.json`'s `config_hash`, which
`Study.baseline()` writes before any trial runs); without that file, the one the study's latest search
scored on (the study's "baseline" user attr); without either, every trial counts.

A one-shot trial (`search.trial_mode: oneshot`) is scored on shared weights trained from the baseline,
not on the baseline itself: its key is the baseline's joined to the shared weights' (`scoring_key`), so
one-shot and fine-tuned trials, or one-shot trials of other shared weights, never mix.
"""

from __future__ import annotations

import json
import logging
import math
import threading
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import optuna

    from mpsearch.config import StudyConfig
    from mpsearch.search.warm_start import WarmStart
    from mpsearch.space import SearchSpace

log = logging.getLogger(__name__)

BASELINE = "baseline"
SENSITIVITY = "sensitivity"
BASELINE_METRICS = Path("baseline") / "metrics.json"
SENSITIVITY_REPORT = "sensitivity.json"  # sensitivity/stage.py's REPORT_FILE, read here without torch


@dataclass(frozen=True)
class Provenance:
    """The keys of the float baseline and the sensitivity report a search's trials are scored with."""

    baseline: str | None = None
    sensitivity: str | None = None

    @classmethod
    def of_study(cls, cfg: StudyConfig) -> Provenance:
        """The keys of the artefacts in the study folder (read only). The sensitivity report counts only
        when the warm starts use it (ILP candidates); otherwise it may be a stale one."""
        folder = Path(cfg.study_dir)
        sensitivity = _json_field(folder / SENSITIVITY_REPORT, "key") if cfg.search.warm_start.ilp > 0 else None
        return cls(scoring_key(cfg, folder_baseline(folder)), sensitivity)

    def items(self) -> dict[str, str]:
        return {k: v for k, v in ((BASELINE, self.baseline), (SENSITIVITY, self.sensitivity)) if v}

    def stamp(self, trial: optuna.Trial) -> None:
        """Record the keys on a trial as it starts, so a RUNNING or failed trial says what it was for."""
        for key, value in self.items().items():
            trial.set_user_attr(key, value)

    def into(self, metrics: dict[str, Any]) -> dict[str, Any]:
        """`metrics` with the keys added where the evaluation did not record them itself."""
        return {**self.items(), **metrics}


def oneshot_key(cfg: StudyConfig, baseline: str | None) -> str:
    """The key of one-shot shared weights: the shared training's settings, the search space file's text
    and the float baseline."""
    from mpsearch.config import config_hash

    return config_hash(cfg.search.shared_training, cfg.search.oneshot.random_policies,
                       Path(cfg.search.space or "").read_text(), baseline or "")


def scoring_key(cfg: StudyConfig, baseline: str | None, mode: str | None = None) -> str | None:
    """What the study's trials (of trial mode `mode`, default `search.trial_mode`) are scored on: the
    float baseline `baseline`, joined, for one-shot trials, to their shared weights' key."""
    if baseline is None or (mode or cfg.search.trial_mode) != "oneshot":
        return baseline
    return f"{baseline}+oneshot-{oneshot_key(cfg, baseline)}"


def folder_baseline(folder: str | Path) -> str | None:
    """The key of the float baseline in a study folder; None when it has none (yet)."""
    return _json_field(Path(folder) / BASELINE_METRICS, "config_hash")


def _json_field(path: Path, name: str) -> str | None:
    try:
        value = json.loads(path.read_text()).get(name)
    except (OSError, ValueError, AttributeError):
        return None
    return str(value) if value else None


def trial_baseline(trial: optuna.trial.FrozenTrial) -> str | None:
    """The baseline a trial was scored on: its metrics' record, else the key stamped when it started."""
    metrics = trial.user_attrs.get("metrics")
    recorded = metrics.get(BASELINE) if isinstance(metrics, dict) else None
    return recorded or trial.user_attrs.get(BASELINE)


def study_baseline(study: optuna.Study) -> str | None:
    """The baseline the study's latest search scored on."""
    return study.user_attrs.get(BASELINE)


def current_baseline(cfg: StudyConfig, study: optuna.Study) -> str | None:
    """The study's current baseline (module docstring): the study folder's, else the latest search's."""
    return scoring_key(cfg, folder_baseline(cfg.study_dir)) or study_baseline(study)


def is_current(trial: optuna.trial.FrozenTrial, baseline: str | None) -> bool:
    """Whether a trial belongs to the baseline `baseline` (None: every trial does). A trial still
    queued belongs to whichever baseline is current when it runs."""
    return baseline is None or trial.state.name == "WAITING" or trial_baseline(trial) == baseline


def split_by_baseline(trials: Iterable[optuna.trial.FrozenTrial], baseline: str | None,
                      ) -> tuple[list[optuna.trial.FrozenTrial], list[optuna.trial.FrozenTrial]]:
    """(the trials of `baseline`, the others)."""
    current, older = [], []
    for trial in trials:
        (current if is_current(trial, baseline) else older).append(trial)
    return current, older


def point_key(params: dict) -> tuple:
    return tuple(sorted(params.items()))


def distinct_complete_count(study: optuna.Study, baseline: str | None = None) -> int:
    """Distinct points among the COMPLETE trials of `baseline` (default: the study's latest search's):
    what a requested trial count counts."""
    from optuna.trial import TrialState

    baseline = baseline or study_baseline(study)
    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    return len({point_key(t.params) for t in complete if is_current(t, baseline)})


def older_baseline_note(count: int) -> str:
    """The sentence every reader of the front prints when trials of another baseline were left out."""
    if not count:
        return ""
    trials = "1 trial" if count == 1 else f"{count} trials"
    return (f"{trials} of an older float baseline {'is' if count == 1 else 'are'} left out (the baseline "
            "changed since they were scored); `mpsearch search` scores the study's points on the current one")


# --- the record both backends write ---------------------------------------------------------------------
# The sampler proposing only evaluated points this many times in a row ends the search: it has
# converged on them, or the space's remaining points are ones it will not propose.
MAX_REPLAYS_IN_A_ROW = 100


def scored_values(metrics: dict[str, Any], objectives: Sequence[str]) -> tuple[float, ...]:
    """The objective values of a trial's metrics; a TrialError when the evaluation does not measure one."""
    from mpsearch.errors import TrialError

    missing = [o for o in objectives if o not in metrics]
    if missing:
        raise TrialError(f"the trial reports no {', '.join(missing)}; choose objectives the task measures")
    return tuple(float(metrics[o]) for o in objectives)


def retry_budget(target: int, done: int, trials: int) -> int:
    """Trials one run may train: the points it still needs, plus room for failures, so that a space that
    always fails does not loop (failures spend it, repeated points do not)."""
    return (target - done) + max(3, math.ceil(0.5 * trials))


class Budget:
    """When a search stops: the study holds `target` distinct complete points, this run has trained its
    retry budget, or the sampler repeated evaluated points MAX_REPLAYS_IN_A_ROW times in a row."""

    def __init__(self, target: int, max_trained: int):
        self.target, self.max_trained = target, max_trained
        self.trained = self.replays = 0
        self.lock = threading.Lock()

    def __getstate__(self) -> dict:  # the Ray searcher that holds it is pickled; a lock is not
        return {k: v for k, v in self.__dict__.items() if k != "lock"}

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self.lock = threading.Lock()

    def spent(self, replay: bool) -> None:
        """One more trial trained, or one more re-proposed point answered from the record."""
        with self.lock:
            if replay:
                self.replays += 1
            else:
                self.trained, self.replays = self.trained + 1, 0

    def exhausted(self, distinct: int) -> bool:
        """Whether to stop, `distinct` complete points of the current baseline being stored (logged why)."""
        if distinct >= self.target:
            return True
        if self.trained >= self.max_trained:
            log.warning("stopping: %d trials trained in this run and %d of %d distinct points complete; see the "
                        "failed trials' fail_reason", self.trained, distinct, self.target)
            return True
        if self.replays >= MAX_REPLAYS_IN_A_ROW:
            log.warning("stopping: the sampler proposed only points already evaluated %d times in a row",
                        self.replays)
            return True
        return False


def is_replay(trial: optuna.trial.FrozenTrial) -> bool:
    """A trial the sampler asked for a point already evaluated, or being evaluated by an earlier trial."""
    return "copied_from" in trial.user_attrs or "duplicate_of" in trial.user_attrs


class TrialRecord:
    """A study's trials as both backends write them (storage.py lists what each trial carries).

    Everything goes through Optuna's public API: the study asks, tells and enqueues; the storage the
    study was opened on (an RDBStorage this process made) takes the writes that concern one trial by
    id, the id looked up from the trial's number, since a Trial exposes only its number."""

    def __init__(self, study: optuna.Study, storage: optuna.storages.BaseStorage, cfg: StudyConfig,
                 space: SearchSpace, provenance: Provenance | None = None):
        self.study, self.storage, self.space = study, storage, space
        self.objectives = tuple(cfg.search.objectives)
        self.provenance = provenance or Provenance.of_study(cfg)
        self.study_id = storage.get_study_id_from_name(study.study_name)

    @property
    def baseline(self) -> str | None:
        return self.provenance.baseline

    # --- reading ---------------------------------------------------------------------------------------
    def trial_id(self, number: int) -> int:
        return self.storage.get_trial_id_from_study_id_trial_number(self.study_id, number)

    def get(self, number: int) -> optuna.trial.FrozenTrial:
        """The trial as stored now (a Trial object's attributes are this process's view of it)."""
        return self.storage.get_trial(self.trial_id(number))

    def trials(self, *states) -> list[optuna.trial.FrozenTrial]:
        """The trials of the current baseline in `states` (default: every state)."""
        trials = self.study.get_trials(deepcopy=False, states=tuple(states) or None)
        return [t for t in trials if is_current(t, self.baseline)]

    def distinct_complete_count(self) -> int:
        return distinct_complete_count(self.study, self.baseline)

    def same_point(self, number: int, params: dict) -> optuna.trial.FrozenTrial | None:
        """The current baseline's COMPLETE trial (with metrics) of the point, else an earlier-numbered
        RUNNING one (only earlier: two trials of one point asked at once never both give way), else None."""
        from optuna.trial import TrialState

        same = [t for t in self.trials(TrialState.COMPLETE, TrialState.RUNNING)
                if t.number != number and t.params == params]
        done = next((t for t in same if t.state == TrialState.COMPLETE and "metrics" in t.user_attrs), None)
        return done or next((t for t in same if t.state == TrialState.RUNNING and t.number < number), None)

    # --- writing ---------------------------------------------------------------------------------------
    def begin(self, trial: optuna.Trial, beat: bool = False) -> dict:
        """Take a trial just asked: this process's stamp (runs.py), the keys it is scored with, its
        point, origin ("sampler" unless enqueued with one) and policy. Returns its parameters."""
        from mpsearch.search.runs import stamp

        stamp(self, trial.number, beat=beat)
        self.provenance.stamp(trial)
        params = {p.name: trial.suggest_categorical(p.name, list(p.choices)) for p in self.space.parameters()}
        if "origin" not in trial.user_attrs:
            trial.set_user_attr("origin", "sampler")
        trial.set_user_attr("policy", self.space.to_policy(params).to_dict())
        return params

    def result(self, trial: optuna.Trial, metrics: dict[str, Any]) -> tuple[float, ...]:
        """Store a finished evaluation's metrics; returns the values to tell (a TrialError when an
        objective is missing)."""
        values = scored_values(metrics, self.objectives)
        record_metrics(trial, self.provenance.into(metrics))
        return values

    def copy(self, trial: optuna.Trial, source: optuna.trial.FrozenTrial) -> tuple[float, ...]:
        """Answer `trial` from the COMPLETE trial `source` of the same point; returns the values to tell."""
        trial.set_user_attr("copied_from", source.number)
        record_metrics(trial, source.user_attrs["metrics"])
        return tuple(source.values)

    def failure(self, trial: optuna.Trial, reason: str) -> None:
        """Record why a trial failed (the backend then tells FAIL, or Optuna's loop does)."""
        trial.set_user_attr("fail_reason", reason)
        log.warning("trial %d failed: %s", trial.number, reason)

    def log_result(self, trial: optuna.trial.FrozenTrial | optuna.Trial, values: Sequence[float]) -> None:
        log.info("trial %d (%s): %s", trial.number, trial.user_attrs.get("origin"),
                 ", ".join(f"{o}={v:.4g}" for o, v in zip(self.objectives, values)))

    def enqueue_warm_starts(self, starts: list[WarmStart]) -> int:
        """Enqueue each warm start once per study and float baseline, whatever number of times the search
        is re-run: a new baseline gets its warm starts again, since its trials are scored anew."""
        from optuna.trial import TrialState

        stored = self.study.user_attrs.get("enqueued")
        # a list is the record of a study searched before its warm starts were kept per baseline
        by_baseline = dict(stored) if isinstance(stored, dict) else {"": list(stored or [])}
        done = set(by_baseline.get(self.baseline or "", []))
        taken = {point_key(t.system_attrs.get("fixed_params", t.params))
                 for t in self.trials(TrialState.WAITING, TrialState.RUNNING, TrialState.COMPLETE)}
        added = 0
        for start in starts:
            if start.origin in done:
                continue
            if point_key(start.params) not in taken:
                self.study.enqueue_trial(start.params, user_attrs={"origin": start.origin})
                taken.add(point_key(start.params))
                added += 1
            done.add(start.origin)
        by_baseline[self.baseline or ""] = sorted(done)
        self.study.set_user_attr("enqueued", by_baseline)
        return added

    def prepare(self, starts: list[WarmStart], grace_seconds: float) -> None:
        """Before a search counts what is done: mark the baseline it scores on (what readers of the study
        alone take as current), give the points of dead processes back, enqueue the warm starts."""
        from mpsearch.search.runs import recover_dead_trials

        if self.baseline and study_baseline(self.study) != self.baseline:
            self.study.set_user_attr(BASELINE, self.baseline)
        requeued = recover_dead_trials(self, grace_seconds)
        if requeued:
            log.info("re-enqueued %d trials interrupted by a search process that stopped", requeued)
        added = self.enqueue_warm_starts(starts)
        if added:
            log.info("enqueued %d warm-start trials", added)


def record_metrics(trial: optuna.Trial, metrics: dict) -> None:
    """Store a trial's metrics: the whole dict (what the front and export read) and each number again as
    its own `m_<name>` attribute (what optuna-dashboard shows as columns)."""
    trial.set_user_attr("metrics", metrics)
    for name, value in metrics.items():
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            trial.set_user_attr(f"m_{name}", value)


def check_stamp(study: optuna.Study, cfg: StudyConfig, space: SearchSpace, where: str) -> None:
    """Stamp a new study with its objectives and search space; a stored study with others is an error:
    its trials would not be comparable."""
    from mpsearch.errors import ConfigError

    objectives = list(cfg.search.objectives)
    stamp = {"objectives": objectives, "space": space.describe()}
    stored = {k: study.user_attrs.get(k) for k in stamp}
    if all(v is None for v in stored.values()):
        for key, value in stamp.items():
            study.set_user_attr(key, value)
    else:
        changed = [k for k in stamp if stored[k] != stamp[k]]
        if changed:
            raise ConfigError(
                f"The study '{cfg.name}' in {where} was searched with other {' and '.join(changed)}; give the "
                "study a new name (or search.storage), or delete its trials to start over.")
    if study.metric_names != objectives:
        study.set_metric_names(objectives)
