"""The Optuna backend: an RDB-stored multi-objective study, warm-started, resumable after a kill.

Resuming is re-opening: `load_if_exists` finds the stored trials, the trials a dead process left
RUNNING are failed and their points enqueued again (runs.py), and the loop stops when the study holds
the requested number of distinct complete points. A point the sampler proposes again is answered
from its stored trial (`copied_from`) and counts for nothing, so no finished point is evaluated again
and a resumed or repeated search still adds the points it was asked for.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from mpsearch.errors import ConfigError, TrialError
from mpsearch.search.record import Provenance, distinct_complete_count, is_current, point_key
from mpsearch.search.space import SearchSpace
from mpsearch.search.warm_start import WarmStart

if TYPE_CHECKING:
    import optuna

    from mpsearch.config import StudyConfig

log = logging.getLogger(__name__)

SAMPLERS = ("nsga2", "tpe", "random", "gp")


def make_sampler(name: str, seed: int, n_objectives: int = 2) -> optuna.samplers.BaseSampler:
    import optuna

    if name == "nsga2":
        return optuna.samplers.NSGAIISampler(seed=seed, population_size=_population(n_objectives))
    if name == "tpe":
        return optuna.samplers.TPESampler(seed=seed, multivariate=True)
    if name == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    if name == "gp":
        return optuna.samplers.GPSampler(seed=seed)
    raise ConfigError(f"Unknown sampler '{name}'; valid choices: {', '.join(SAMPLERS)}.")


def _population(n_objectives: int) -> int:
    # NSGA-II's default population (50) is more trials than a CPU study runs; a small one lets
    # selection start after the warm-start generation.
    return 8 if n_objectives <= 2 else 12


def open_study(cfg: StudyConfig, space: SearchSpace, heartbeat: bool = True, sampler=None) -> optuna.Study:
    """The stored study (created on first use, its objectives named for dashboards). A study stored with
    other objectives or another search space is an error: its trials would not be comparable.

    The sampler's seed is `search.seed` plus the number of trials already stored: a fresh study is
    reproducible, and a resumed one does not replay the proposals its earlier runs already made."""
    import optuna

    from mpsearch.search.storage import open_storage, storage_url

    storage = open_storage(cfg, heartbeat=heartbeat)
    objectives = list(cfg.search.objectives)
    study = optuna.create_study(study_name=cfg.name, storage=storage, load_if_exists=True,
                                directions=["minimize"] * len(objectives))
    stamp = {"objectives": objectives, "space": space.describe()}
    stored = {k: study.user_attrs.get(k) for k in stamp}
    if all(v is None for v in stored.values()):
        for key, value in stamp.items():
            study.set_user_attr(key, value)
    else:
        changed = [k for k in stamp if stored[k] != stamp[k]]
        if changed:
            raise ConfigError(
                f"The study '{cfg.name}' in {storage_url(cfg)} was searched with other {' and '.join(changed)}; "
                "give the study a new name (or search.storage), or delete its trials to start over.")
    if study.metric_names != objectives:
        study.set_metric_names(objectives)
    study.sampler = sampler or make_sampler(cfg.search.sampler, cfg.search.seed + len(study.get_trials(deepcopy=False)),
                                            len(objectives))
    return study


def enqueue_warm_starts(study: optuna.Study, starts: list[WarmStart], baseline: str | None = None) -> int:
    """Enqueue each warm start once per study and float baseline, whatever number of times the search is
    re-run: a new baseline gets its warm starts again, since its trials are scored anew."""
    from optuna.trial import TrialState

    stored = study.user_attrs.get("enqueued")
    # a list is the record of a study searched before its warm starts were kept per baseline
    by_baseline = dict(stored) if isinstance(stored, dict) else {"": list(stored or [])}
    done = set(by_baseline.get(baseline or "", []))
    taken = {point_key(t.system_attrs.get("fixed_params", t.params))
             for t in study.get_trials(deepcopy=False, states=(TrialState.WAITING, TrialState.RUNNING,
                                                                TrialState.COMPLETE))
             if is_current(t, baseline)}
    added = 0
    for start in starts:
        if start.origin in done:
            continue
        if point_key(start.params) not in taken:
            study.enqueue_trial(start.params, user_attrs={"origin": start.origin})
            taken.add(point_key(start.params))
            added += 1
        done.add(start.origin)
    by_baseline[baseline or ""] = sorted(done)
    study.set_user_attr("enqueued", by_baseline)
    return added


def target_points(trials: int, space: SearchSpace) -> int:
    """The distinct points a request for `trials` can get: no more than the space holds."""
    if space.size() < trials:
        log.info("the search space holds %d points; the search stops when each has a complete trial "
                 "(%d requested)", space.size(), trials)
    return min(trials, space.size())


def is_replay(trial: optuna.trial.FrozenTrial) -> bool:
    """A trial the sampler asked for a point already evaluated, or being evaluated by an earlier trial."""
    return "copied_from" in trial.user_attrs or "duplicate_of" in trial.user_attrs


def make_objective(cfg: StudyConfig, space: SearchSpace, evaluate: Callable[[Any], dict],
                   study: optuna.Study, poll_seconds: float = 2.0, provenance: Provenance | None = None,
                   ) -> Callable[[optuna.Trial], tuple[float, ...]]:
    """The Optuna objective: ask the space's parameters, evaluate the policy, store metrics and policy.

    A point already evaluated in this study (the sampler proposing it again) is answered from the
    stored trial instead of being trained twice (`copied_from`). A point an earlier trial is still
    training (another worker or process) is not waited for: after `poll_seconds`, so that a sampler
    that insists does not spin, the trial ends PRUNED (`duplicate_of`) and the sampler asks again.
    Neither counts towards the requested points. Only trials of the current float baseline answer
    (record.py); each trial records the baseline and sensitivity keys it is scored with."""
    import optuna
    from optuna.trial import TrialState

    from mpsearch.search.runs import stamp
    from mpsearch.search.storage import record_metrics

    objectives = cfg.search.objectives
    provenance = provenance or Provenance.of_study(cfg)

    def objective(trial: optuna.Trial) -> tuple[float, ...]:
        stamp(study, trial._trial_id)
        provenance.stamp(trial)
        params = {p.name: trial.suggest_categorical(p.name, list(p.choices)) for p in space.parameters()}
        if "origin" not in trial.user_attrs:
            trial.set_user_attr("origin", "sampler")
        policy = space.to_policy(params)
        trial.set_user_attr("policy", policy.to_dict())
        same = _same_point(study, trial.number, params, provenance.baseline)
        if same is not None and same.state == TrialState.COMPLETE:
            trial.set_user_attr("copied_from", same.number)
            record_metrics(trial, same.user_attrs["metrics"])
            return tuple(same.values)
        if same is not None:
            time.sleep(poll_seconds)
            trial.set_user_attr("duplicate_of", same.number)
            raise optuna.TrialPruned(f"trial {same.number} is evaluating the same point")
        try:
            metrics = evaluate(policy)
            missing = [o for o in objectives if o not in metrics]
            if missing:
                raise TrialError(f"the trial reports no {', '.join(missing)}; choose objectives the task measures")
        except TrialError as exc:
            trial.set_user_attr("fail_reason", str(exc))
            log.warning("trial %d failed: %s", trial.number, exc)
            raise
        record_metrics(trial, provenance.into(metrics))
        return tuple(float(metrics[o]) for o in objectives)

    return objective


def _same_point(study: optuna.Study, number: int, params: dict, baseline: str | None):
    """A COMPLETE trial (with metrics) of the same point on `baseline`, else an earlier-numbered RUNNING
    one (only earlier: two trials of one point asked at once never both give way), else None."""
    from optuna.trial import TrialState

    trials = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.RUNNING))
    same = [t for t in trials if t.number != number and t.params == params and is_current(t, baseline)]
    done = next((t for t in same if t.state == TrialState.COMPLETE and "metrics" in t.user_attrs), None)
    return done or next((t for t in same if t.state == TrialState.RUNNING and t.number < number), None)


# The sampler proposing only evaluated points this many times in a row ends the search: it has
# converged on them, or the space's remaining points are ones it will not propose.
MAX_REPLAYS_IN_A_ROW = 100


class _Budget:
    """Optuna callback that stops the search when the study holds `target` distinct complete points, or
    when this run has trained `max_trained` trials (failures spend it, repeats do not), or after
    MAX_REPLAYS_IN_A_ROW repeats."""

    def __init__(self, target: int, max_trained: int, baseline: str | None):
        self.target, self.max_trained, self.baseline = target, max_trained, baseline
        self.trained = self.replays = 0
        self.lock = threading.Lock()

    def __call__(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        with self.lock:
            if is_replay(trial):
                self.replays += 1
            else:
                self.trained, self.replays = self.trained + 1, 0
            if distinct_complete_count(study, self.baseline) >= self.target:
                study.stop()
            elif self.trained >= self.max_trained:
                log.warning("stopping: %d trials trained in this run; see the failed trials' fail_reason", self.trained)
                study.stop()
            elif self.replays >= MAX_REPLAYS_IN_A_ROW:
                log.warning("stopping: the sampler proposed only points already evaluated %d times in a row",
                            self.replays)
                study.stop()


def run_optuna(cfg: StudyConfig, space: SearchSpace, starts: list[WarmStart], evaluate: Callable[[Any], dict],
               trials: int, workers: int = 1, progress: bool = True) -> optuna.Study:
    """Run trials until the study holds `trials` distinct complete points of the current float baseline
    (warm starts included)."""
    import optuna
    from optuna.trial import TrialState
    from tqdm.auto import tqdm

    optuna.logging.set_verbosity(optuna.logging.ERROR)  # our own log line names each failed trial
    study = open_study(cfg, space)
    provenance = Provenance.of_study(cfg)
    baseline = provenance.baseline
    prepare_search(study, space, starts, cfg, baseline)
    target = target_points(trials, space)
    done = distinct_complete_count(study, baseline)
    if done >= target:
        log.info("the study already holds %d distinct complete points (%d requested)", done, trials)
        return study
    if workers > 1:
        from mpsearch.runtime import apply_thread_policy

        apply_thread_policy(workers)  # the free cores shared between the workers
    bar = tqdm(total=target, initial=done, disable=not progress, desc="trials", unit="trial", dynamic_ncols=True)

    def on_trial_end(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        if trial.state == TrialState.COMPLETE and not is_replay(trial):
            bar.update(1)
            values = ", ".join(f"{o}={v:.4g}" for o, v in zip(cfg.search.objectives, trial.values))
            log.info("trial %d (%s): %s", trial.number, trial.user_attrs.get("origin"), values)

    # Failures are recorded and do not count; the cap keeps a space that always fails from looping.
    budget = _Budget(target, max_trained=(target - done) + max(3, math.ceil(0.5 * trials)), baseline=baseline)
    try:
        study.optimize(make_objective(cfg, space, evaluate, study, provenance=provenance), n_trials=None, n_jobs=workers,
                       catch=(TrialError,), gc_after_trial=True, callbacks=[on_trial_end, budget])
    finally:
        bar.close()
    return study


def prepare_search(study: optuna.Study, space: SearchSpace, starts: list[WarmStart], cfg: StudyConfig,
                   baseline: str | None) -> None:
    """Before a search counts what is done: mark the baseline it scores on (what readers of the study
    alone take as current), give the points of dead processes back, enqueue this baseline's warm starts."""
    from mpsearch.search.record import BASELINE
    from mpsearch.search.runs import recover_dead_trials

    if baseline and study.user_attrs.get(BASELINE) != baseline:
        study.set_user_attr(BASELINE, baseline)
    requeued = recover_dead_trials(study, space, cfg.search.heartbeat_seconds)
    if requeued:
        log.info("re-enqueued %d trials interrupted by a search process that stopped", requeued)
    added = enqueue_warm_starts(study, starts, baseline)
    if added:
        log.info("enqueued %d warm-start trials", added)
