"""The Optuna backend: an RDB-stored multi-objective study, warm-started, resumable after a kill.

Resuming is re-opening: `load_if_exists` finds the stored trials, the heartbeat marks a killed
process's trial stale and re-enqueues it once, and the loop stops when the study holds the requested
number of complete trials, so no finished trial is evaluated again.
"""

from __future__ import annotations

import logging
import math
import os
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from mpsearch.errors import ConfigError, TrialError
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
    """The stored study (created on first use). A study stored with other objectives or another search
    space is an error: its trials would not be comparable."""
    import optuna

    from mpsearch.search.storage import open_storage, storage_url

    storage = open_storage(cfg, heartbeat=heartbeat)
    study = optuna.create_study(
        study_name=cfg.name, storage=storage, load_if_exists=True,
        directions=["minimize"] * len(cfg.search.objectives),
        sampler=sampler or make_sampler(cfg.search.sampler, cfg.search.seed, len(cfg.search.objectives)))
    stamp = {"objectives": list(cfg.search.objectives), "space": space.describe()}
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
    return study


def enqueue_warm_starts(study: optuna.Study, starts: list[WarmStart]) -> int:
    """Enqueue each warm start once per study, whatever number of times the search is re-run."""
    done = set(study.user_attrs.get("enqueued", []))
    added = 0
    for start in starts:
        if start.origin in done:
            continue
        study.enqueue_trial(start.params, user_attrs={"origin": start.origin}, skip_if_exists=True)
        done.add(start.origin)
        added += 1
    study.set_user_attr("enqueued", sorted(done))
    return added


def complete_count(study: optuna.Study) -> int:
    from optuna.trial import TrialState

    return len(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)))


def make_objective(cfg: StudyConfig, space: SearchSpace, evaluate: Callable[[Any], dict],
                   study: optuna.Study, poll_seconds: float = 2.0) -> Callable[[optuna.Trial], tuple[float, ...]]:
    """The Optuna objective: ask the space's parameters, evaluate the policy, store metrics and policy.

    A point already evaluated in this study (the sampler proposing it again) is answered from the
    stored trial instead of being trained twice; with several workers, a point an earlier trial is
    still training is waited for, then answered the same way."""
    from optuna.trial import TrialState

    objectives = cfg.search.objectives

    def objective(trial: optuna.Trial) -> tuple[float, ...]:
        params = {p.name: trial.suggest_categorical(p.name, list(p.choices)) for p in space.parameters()}
        if "origin" not in trial.user_attrs:
            trial.set_user_attr("origin", "sampler")
        policy = space.to_policy(params)
        trial.set_user_attr("policy", policy.to_dict())
        done = _same_point_done(study, trial.number, params, poll_seconds)
        if done is not None:
            trial.set_user_attr("metrics", done.user_attrs["metrics"])
            trial.set_user_attr("copied_from", done.number)
            return tuple(done.values)
        try:
            metrics = evaluate(policy)
            missing = [o for o in objectives if o not in metrics]
            if missing:
                raise TrialError(f"the trial reports no {', '.join(missing)}; choose objectives the task measures")
        except TrialError as exc:
            trial.set_user_attr("fail_reason", str(exc))
            log.warning("trial %d failed: %s", trial.number, exc)
            raise
        trial.set_user_attr("metrics", metrics)
        return tuple(float(metrics[o]) for o in objectives)

    return objective


def _same_point_done(study: optuna.Study, number: int, params: dict, poll_seconds: float):
    """The COMPLETE trial (with metrics) of the same point, waiting while an earlier-numbered trial of
    that point is RUNNING (only earlier ones: two workers on one point never wait for each other).
    None when the point has no such trial, or its earlier run failed: then this trial trains it."""
    import optuna
    from optuna.trial import TrialState

    while True:
        trials = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.RUNNING))
        same = [t for t in trials if t.number != number and t.params == params]
        for t in same:
            if t.state == TrialState.COMPLETE and "metrics" in t.user_attrs:
                return t
        if not any(t.state == TrialState.RUNNING and t.number < number for t in same):
            return None
        time.sleep(poll_seconds)
        optuna.storages.fail_stale_trials(study)  # nothing else checks heartbeats while this one waits


def _start_stale_clock(study: optuna.Study) -> None:
    """Give every RUNNING trial a heartbeat now. Optuna never counts a trial stale that has none, and a
    process killed between asking a trial and its first heartbeat leaves exactly that: a trial RUNNING
    forever and, for a warm start, its point lost. A live trial beats anyway; a dead one is now failed
    and retried once `search.heartbeat_seconds` have passed."""
    import optuna
    from optuna.trial import TrialState

    optuna.storages.fail_stale_trials(study)
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        study._storage.record_heartbeat(trial._trial_id)


def run_optuna(cfg: StudyConfig, space: SearchSpace, starts: list[WarmStart], evaluate: Callable[[Any], dict],
               trials: int, workers: int = 1, progress: bool = True) -> optuna.Study:
    """Run trials until the study holds `trials` complete ones (warm starts included)."""
    import optuna
    import torch
    from optuna.study import MaxTrialsCallback
    from optuna.trial import TrialState
    from tqdm.auto import tqdm

    optuna.logging.set_verbosity(optuna.logging.ERROR)  # our own log line names each failed trial
    study = open_study(cfg, space)
    _start_stale_clock(study)
    added = enqueue_warm_starts(study, starts)
    if added:
        log.info("enqueued %d warm-start trials", added)
    done = complete_count(study)
    if done >= trials:
        log.info("the study already holds %d complete trials (%d requested)", done, trials)
        return study
    if workers > 1:
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // workers))
    bar = tqdm(total=trials, initial=done, disable=not progress, desc="trials", unit="trial", dynamic_ncols=True)

    def on_trial_end(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        if trial.state == TrialState.COMPLETE:
            bar.update(1)
            values = ", ".join(f"{o}={v:.4g}" for o, v in zip(cfg.search.objectives, trial.values))
            log.info("trial %d (%s): %s", trial.number, trial.user_attrs.get("origin"), values)

    # Failures are recorded and do not count; the cap keeps a space that always fails from looping.
    budget = (trials - done) + max(3, math.ceil(0.5 * trials))
    try:
        study.optimize(make_objective(cfg, space, evaluate, study), n_trials=budget, n_jobs=workers,
                       catch=(TrialError,), gc_after_trial=True,
                       callbacks=[on_trial_end, MaxTrialsCallback(trials, states=(TrialState.COMPLETE,))])
    finally:
        bar.close()
    return study
