"""The Optuna backend: an RDB-stored multi-objective study, warm-started, resumable after a kill.

Resuming is re-opening: `load_if_exists` finds the stored trials, the trials a dead process left
RUNNING are failed and their points enqueued again (runs.py), and the loop stops when the study holds
the requested number of distinct complete points. A point the sampler proposes again is answered
from its stored trial (`copied_from`) and counts for nothing, so no finished point is evaluated again
and a resumed or repeated search still adds the points it was asked for.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from mpsearch.errors import TrialError
from mpsearch.search.record import (
    Budget,
    Provenance,
    TrialRecord,
    check_stamp,
    distinct_complete_count,  # noqa: F401  (its old home; callers import it here)
    is_replay,
    retry_budget,
)
from mpsearch.search.warm_start import WarmStart
from mpsearch.space import SearchSpace

if TYPE_CHECKING:
    import optuna

    from mpsearch.config import StudyConfig

log = logging.getLogger(__name__)
# search.workers auto: at most this many trial threads in one process
MAX_AUTO_WORKERS = 4


def make_sampler(name: str, seed: int, n_objectives: int = 2) -> optuna.samplers.BaseSampler:
    """The sampler `name` (a key of search/samplers.py's SAMPLERS registry) seeded with `seed`."""
    from mpsearch.search.samplers import SAMPLERS

    return SAMPLERS.get(name)(seed, n_objectives)


def open_record(cfg: StudyConfig, space: SearchSpace, heartbeat: bool = True, sampler=None,
                provenance: Provenance | None = None) -> TrialRecord:
    """The stored study's record (the study created on first use, its objectives named for dashboards).
    A study stored with other objectives or another search space is an error: its trials would not be
    comparable.

    The sampler's seed is `search.seed` plus the number of trials already stored: a fresh study is
    reproducible, and a resumed one does not replay the proposals its earlier runs already made."""
    import optuna

    from mpsearch.search.storage import open_storage, storage_url

    storage = open_storage(cfg, heartbeat=heartbeat)
    objectives = list(cfg.search.objectives)
    study = optuna.create_study(study_name=cfg.name, storage=storage, load_if_exists=True,
                                directions=["minimize"] * len(objectives))
    check_stamp(study, cfg, space, storage_url(cfg))
    study.sampler = sampler or make_sampler(cfg.search.sampler, cfg.search.seed + len(study.get_trials(deepcopy=False)),
                                            len(objectives))
    return TrialRecord(study, storage, cfg, space, provenance)


def open_study(cfg: StudyConfig, space: SearchSpace, heartbeat: bool = True, sampler=None) -> optuna.Study:
    """The stored Optuna study (open_record's)."""
    return open_record(cfg, space, heartbeat=heartbeat, sampler=sampler).study


def target_points(trials: int, space: SearchSpace) -> int:
    """The distinct points a request for `trials` can get: no more than the space holds."""
    if space.size() < trials:
        log.info("the search space holds %d points; the search stops when each has a complete trial "
                 "(%d requested)", space.size(), trials)
    return min(trials, space.size())


def open_run(cfg: StudyConfig, space: SearchSpace, starts: list[WarmStart], trials: int,
             heartbeat: bool = True) -> tuple[TrialRecord, int, int]:
    """The record a run of either backend starts from (dead trials recovered, warm starts enqueued), the
    distinct points the run aims at and those the study already holds; done >= target means no work."""
    record = open_record(cfg, space, heartbeat=heartbeat)
    record.prepare(starts, cfg.search.heartbeat_seconds)
    target = target_points(trials, space)
    done = record.distinct_complete_count()
    if done >= target:
        log.info("the study already holds %d distinct complete points (%d requested)", done, trials)
    return record, target, done


def make_objective(record: TrialRecord, evaluate: Callable[[Any], dict], poll_seconds: float = 2.0,
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

    def objective(trial: optuna.Trial) -> tuple[float, ...]:
        params = record.begin(trial)
        same = record.same_point(trial.number, params)
        if same is not None and same.state == TrialState.COMPLETE:
            return record.copy(trial, same)
        if same is not None:
            time.sleep(poll_seconds)
            trial.set_user_attr("duplicate_of", same.number)
            raise optuna.TrialPruned(f"trial {same.number} is evaluating the same point")
        try:
            return record.result(trial, evaluate(record.space.to_policy(params)))
        except TrialError as exc:
            record.failure(trial, str(exc))
            raise

    return objective


class _StopWhenDone:
    """Optuna callback: the run's Budget spent by each trial that ends; stops the study when exhausted."""

    def __init__(self, record: TrialRecord, budget: Budget):
        self.record, self.budget = record, budget

    def __call__(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        self.budget.spent(replay=is_replay(trial))
        if self.budget.exhausted(self.record.distinct_complete_count()):
            study.stop()


def run_optuna(cfg: StudyConfig, space: SearchSpace, starts: list[WarmStart], evaluate: Callable[[Any], dict],
               trials: int, workers: int | str = 1, progress: bool = True) -> optuna.Study:
    """Run trials until the study holds `trials` distinct complete points of the current float baseline
    (warm starts included)."""
    import optuna
    from optuna.trial import TrialState
    from tqdm.auto import tqdm

    optuna.logging.set_verbosity(optuna.logging.ERROR)  # our own log line names each failed trial
    record, target, done = open_run(cfg, space, starts, trials)
    if done >= target:
        return record.study
    if workers == "auto":
        from mpsearch.runtime import apply_worker_policy

        # One one-thread trial per free core: on 2 idle cores two such trials score 1.28x the trials per
        # minute of one 2-thread trial (analysis/bench_ray.py --backend optuna). The trials are threads of
        # this process and share its GIL, so a few of them, not one per core of a large machine.
        workers = apply_worker_policy(MAX_AUTO_WORKERS)
        log.info("running %d trial(s) at once (search.workers: auto)", workers)
    elif workers > 1:
        from mpsearch.runtime import apply_thread_policy

        apply_thread_policy(workers)  # the free cores shared between the workers
    bar = tqdm(total=target, initial=done, disable=not progress, desc="trials", unit="trial", dynamic_ncols=True)

    def on_trial_end(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        if trial.state == TrialState.COMPLETE and not is_replay(trial):
            bar.update(1)
            record.log_result(trial, trial.values)

    stop = _StopWhenDone(record, Budget(target, retry_budget(target, done, trials)))
    try:
        record.study.optimize(make_objective(record, evaluate), n_trials=None, n_jobs=workers, catch=(TrialError,),
                              gc_after_trial=True, callbacks=[on_trial_end, stop])
    finally:
        bar.close()
    return record.study
