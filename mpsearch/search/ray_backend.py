"""The Ray Tune backend: Ray runs the trials (locally or on a cluster given by `--address`), an
OptunaSearch over the study's own Optuna storage proposes them, and only this driver process writes
that storage, so every trial lands there with the same contract as the Optuna backend (see storage.py).

Resuming after a kill is re-running the same command. The Optuna storage, not Ray's snapshot, decides
what is done: trials the storage holds as finished are never run again; a trial a dead search process
left RUNNING is marked failed ("interrupted") and its point re-enqueued with its origin (runs.py), as
for the Optuna backend. The driver stamps its trials and beats for them, so a second search process on
the same storage leaves them alone. The Ray experiment in `<study dir>/ray/run-NNN` is continued with
`Tuner.restore` when the previous process died mid-run with the same request; its unfinished Ray
trials are not resumed (their points are the re-enqueued ones), so a trial that finished after Ray's
last snapshot cannot run twice.
"""

from __future__ import annotations

import json
import logging
import math
import os
import pickle
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mpsearch.errors import MpsearchError, TrialError
from mpsearch.search.optuna_backend import make_sampler, open_run
from mpsearch.search.record import Budget, Provenance, TrialRecord, point_key, retry_budget, scored_values
from mpsearch.search.runs import INTERRUPTED, Heartbeat, give_back
from mpsearch.search.warm_start import WarmStart
from mpsearch.space import SearchSpace

try:
    import ray
    from ray import tune
    from ray.tune.search import Searcher
    from ray.tune.search.optuna import OptunaSearch
except ImportError as exc:  # the extra is optional; say how to get it
    raise MpsearchError(f"The ray backend needs Ray Tune ({exc}); install it with `pip install 'ray[tune]'` "
                        "or use --backend optuna.") from None

if TYPE_CHECKING:
    import optuna

    from mpsearch.config import StudyConfig
    from mpsearch.quant import Policy
    from mpsearch.search.objective import TrialRunner

log = logging.getLogger(__name__)

EXPERIMENTS_DIR = "ray"
REQUEST_FILE = "mpsearch-request.json"
FINISHED_FILE = "mpsearch-finished"
# Retries of a trial whose worker crashed or raised unexpectedly; a TrialError (NaN loss, a policy the
# chip cannot run) is deterministic and recorded failed at once.
RETRIES_PER_TRIAL = 2
# After the sampler proposes a point another process is evaluating, wait this long before asking again.
DUPLICATE_BACKOFF_SECONDS = 2.0
# The user attribute of a trial whose worker could not set the study up; the driver then stops with its reason.
FATAL_ATTR = "worker_setup_failed"


def run_ray(cfg: StudyConfig, space: SearchSpace, starts: list[WarmStart], trials: int, workers: int | str = 1,
            address: str | None = None, progress: bool = True,
            evaluate: Callable[[Policy], dict[str, Any]] | None = None) -> optuna.Study:
    """Run Ray trials until the study holds `trials` distinct complete points of the current float
    baseline (warm starts included). Each trial runs the study's TrialRunner in a Ray worker, or
    `evaluate(policy) -> metrics` when given (picklable; what the Optuna backend's `evaluate` is)."""
    import optuna
    from optuna.trial import TrialState

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    record, target, done = open_run(cfg, space, starts, trials, heartbeat=False)
    if done >= target:
        return record.study

    started_ray = _connect(address)
    try:
        asked = workers
        if workers == "auto":  # Ray Tune's way: as many one-CPU trials as the cluster has CPUs
            workers = max(1, int(ray.cluster_resources().get("CPU", 1)))
        cpus = _cpus_per_trial(workers)
        given = {"evaluate": evaluate, "space": space} if evaluate is not None else {}
        trainable = tune.with_resources(
            tune.with_parameters(evaluate_trial, study_config=cfg, workdir=os.getcwd(), **given), {"cpu": cpus})
        request = {"study": cfg.name, "trials": trials, "workers": asked,
                   "objectives": list(cfg.search.objectives), "sampler": cfg.search.sampler}
        path, restore = _experiment_path(cfg, request)
        if restore:
            log.info("continuing the Ray experiment %s", path)
            # Unfinished Ray trials are not resumed: recover_dead_trials gave their points back to the
            # study, and one that finished after Ray's last snapshot must not run again.
            tuner = tune.Tuner.restore(str(path), trainable, resume_unfinished=False, resume_errored=False,
                                       restart_errored=False)
        else:
            path.mkdir(parents=True, exist_ok=True)
            (path / REQUEST_FILE).write_text(json.dumps(request))
            searcher = StudySearcher(cfg, space, trials=trials, workers=workers,
                                     new_trial_budget=retry_budget(target, done, trials), provenance=record.provenance)
            # No max_concurrent_trials: its ConcurrencyLimiter is snapshotted with the trials in flight and,
            # restored without them, would wait for them forever. The searcher limits concurrency itself.
            tuner = tune.Tuner(
                trainable,
                tune_config=tune.TuneConfig(search_alg=searcher, num_samples=-1, reuse_actors=True),
                run_config=tune.RunConfig(
                    name=path.name, storage_path=str(path.parent), verbose=0,
                    failure_config=tune.FailureConfig(max_failures=RETRIES_PER_TRIAL)))
        log.info("running trials on Ray: %d at once, %d CPU(s) each; experiment in %s", workers, cpus, path)
        failed_before = {t.number for t in record.trials(TrialState.FAIL)}
        # Ray's new console output prints boxes and hints whatever the verbosity; the bar below shows progress.
        os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
        with Heartbeat(record, interval=max(1, cfg.search.heartbeat_seconds // 3),
                       recover_after=cfg.search.heartbeat_seconds), \
                _progress_bar(record, target, done, enabled=progress):
            tuner.fit()
        # A finished experiment is never restored: a later request (more trials) starts a new one.
        (path / FINISHED_FILE).write_text("")
        _raise_worker_setup_failure(record, failed_before)
    finally:
        if started_ray:
            ray.shutdown()
    return record.study


class StudySearcher(OptunaSearch):
    """OptunaSearch that keeps the study's trial record (record.py) and its count.

    It asks until the storage holds the requested number of distinct complete points (no more than the
    space holds), with at most `workers` Ray trials in flight and never more points open than would
    reach that number. A point the study already scored is answered from the stored result
    (`copied_from`), one a Ray trial of this driver is scoring is answered when it ends, and one an
    earlier trial of another process is scoring ends PRUNED (`duplicate_of`); none of them runs or
    counts, and the sampler is asked again. Results are stored with their metrics; a failed trial is
    FAIL with its `fail_reason`. Only trials of the current float baseline answer or count.

    `_ot_study`, `_storage`, `_ot_trials` and `_completed_trials` are OptunaSearch's own state, which a
    Searcher subclass shares (Ray offers no accessor); the storage is the one this class opened."""

    def __init__(self, cfg: StudyConfig, space: SearchSpace, trials: int, workers: int, new_trial_budget: int,
                 provenance: Provenance | None = None):
        from optuna.distributions import CategoricalDistribution

        from mpsearch.search.storage import open_storage

        objectives = list(cfg.search.objectives)
        storage = open_storage(cfg)
        super().__init__(
            space={p.name: CategoricalDistribution(list(p.choices)) for p in space.parameters()},
            metric=objectives, mode=["min"] * len(objectives),
            sampler=_resumed_sampler(cfg, storage), study_name=cfg.name, storage=storage)
        self._study_config = cfg
        self._search_space = space
        self._provenance = provenance or Provenance.of_study(cfg)
        self._workers = workers
        # each Ray trial this run asks spends the budget (failures too); points answered from the record do not
        self._budget = Budget(min(trials, space.size()), new_trial_budget)
        self._backoff_until = 0.0
        self._fatal = False
        self._waiting: dict[int, list[optuna.Trial]] = {}  # trial number in flight -> trials of the same point
        self._record = TrialRecord(self._ot_study, self._storage, cfg, space, self._provenance)

    def suggest(self, trial_id: str) -> dict | str | None:
        from optuna.trial import TrialState

        record = self._record
        if self._fatal:  # a worker could not set the study up: no trial will run
            return Searcher.FINISHED
        while True:
            distinct = {point_key(t.params) for t in record.trials(TrialState.COMPLETE)}
            if self._budget.exhausted(len(distinct)):
                return Searcher.FINISHED
            in_flight = {point_key(t.params) for t in self._ot_trials.values()}
            if (len(self._ot_trials) >= self._workers or len(distinct | in_flight) >= self._budget.target
                    or time.monotonic() < self._backoff_until):
                return None  # ask again when a trial ends (a failed one needs a successor)
            # Stamped (in begin) before its point is chosen: a driver killed while the sampler works
            # leaves a trial that the next start-up can tell is dead.
            trial = self._ot_study.ask()
            params = record.begin(trial, beat=True)
            same = record.same_point(trial.number, params)
            if same is not None and same.state == TrialState.COMPLETE:
                self._budget.spent(replay=True)
                self._answer(trial, same)
                continue
            if same is not None and any(t.number == same.number for t in self._ot_trials.values()):
                # Answered from that trial's result when it ends; meanwhile ask for another point.
                self._waiting.setdefault(same.number, []).append(trial)
                continue
            if same is not None:  # another search process on this storage is scoring it
                trial.set_user_attr("duplicate_of", same.number)
                self._ot_study.tell(trial, state=TrialState.PRUNED)
                self._backoff_until = time.monotonic() + DUPLICATE_BACKOFF_SECONDS
                return None
            self._budget.spent(replay=False)
            self._ot_trials[trial_id] = trial
            return params

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        pass  # one result per trial, at its end; several objectives have no intermediate values anyway

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        trial = self._ot_trials.pop(trial_id, None)
        if trial is None:
            return
        self._completed_trials.add(trial_id)
        if not self._record.get(trial.number).state.is_finished():
            self._finish(trial, trial_id, result, error)
        for waiting in self._waiting.pop(trial.number, []):
            self._answer(waiting, self._record.get(trial.number))

    def _finish(self, trial: optuna.Trial, trial_id: str, result: dict | None, error: bool) -> None:
        if result and result.get("failed"):
            if result.get("fatal"):
                trial.set_user_attr(FATAL_ATTR, True)
                self._fatal = True
            self._fail(trial, str(result.get("fail_reason", "the trial failed")))
        elif result and all(result.get(o) is not None for o in self.metric):
            values = self._record.result(trial, json.loads(result["metrics_json"]))
            self._ot_study.tell(trial, values)
            self._record.log_result(trial, values)
        elif error:
            self._fail(trial, f"the Ray trial {trial_id} errored {RETRIES_PER_TRIAL + 1} times (a crashed worker "
                              "or an unexpected exception; see error.txt in its Ray trial folder)")
        else:
            # Stopped before reporting (the experiment was interrupted): give the point back.
            give_back(self._record, trial.number)

    def _answer(self, trial: optuna.Trial, source: optuna.trial.FrozenTrial) -> None:
        """End `trial` as `source` (the same point) ended: its result, its failure, or interrupted."""
        from optuna.trial import TrialState

        if source.state == TrialState.COMPLETE:
            self._ot_study.tell(trial, self._record.copy(trial, source))
            log.info("trial %d (%s): the point of trial %d again; its result copied", trial.number,
                     trial.user_attrs.get("origin"), source.number)
            return
        trial.set_user_attr("copied_from", source.number)
        if source.user_attrs.get("fail_reason", "") == INTERRUPTED:
            give_back(self._record, trial.number)
        else:
            self._fail(trial, source.user_attrs.get("fail_reason", f"the same point failed in trial {source.number}"))

    def _fail(self, trial: optuna.Trial, reason: str) -> None:
        from optuna.trial import TrialState

        self._record.failure(trial, reason)
        self._ot_study.tell(trial, state=TrialState.FAIL)

    # Ray pickles the searcher (tuner.pkl when the Tuner is made, a snapshot while it runs). The sampler
    # may hold a thread lock (Optuna's GA samplers do) and the study and its trials hold the sampler, so
    # none of them is pickled: they are rebuilt from the study's config and its storage where the
    # searcher is unpickled. The storage is the record, and trials in flight at a snapshot are not
    # resumed (their points are re-enqueued), so nothing else is lost.
    _REBUILT = ("_sampler", "_storage", "_ot_study", "_ot_trials", "_waiting", "_record")

    def __getstate__(self) -> dict:
        return {k: v for k, v in self.__dict__.items() if k not in self._REBUILT}

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._attach()

    def _attach(self) -> None:
        """The sampler, the storage and the study, opened afresh; nothing in flight."""
        import optuna

        from mpsearch.search.storage import open_storage

        cfg = self._study_config
        self._storage = open_storage(cfg)
        self._sampler = _resumed_sampler(cfg, self._storage)
        self._ot_study = optuna.load_study(study_name=cfg.name, storage=self._storage, sampler=self._sampler)
        self._ot_trials = {}
        self._waiting = {}
        self._backoff_until = 0.0
        self._record = TrialRecord(self._ot_study, self._storage, cfg, self._search_space, self._provenance)

    def save(self, checkpoint_path: str) -> None:
        with open(checkpoint_path, "wb") as file:
            pickle.dump(self.__getstate__(), file)

    def restore(self, checkpoint_path: str) -> None:
        with open(checkpoint_path, "rb") as file:
            self.__setstate__(pickle.load(file))


def _raise_worker_setup_failure(record: TrialRecord, failed_before: set[int]) -> None:
    """One MpsearchError with the reason of the first trial this run failed because its worker could not set
    the study up (trials that failed before the run, a fixed factory's among them, do not count)."""
    from optuna.trial import TrialState

    for trial in record.trials(TrialState.FAIL):
        if trial.number not in failed_before and trial.user_attrs.get(FATAL_ATTR):
            raise MpsearchError(trial.user_attrs.get("fail_reason", "A Ray worker cannot set up the study."))


def _resumed_sampler(cfg: StudyConfig, storage) -> optuna.samplers.BaseSampler:
    """The study's sampler seeded past the trials already stored, as open_study seeds it."""
    import optuna

    stored = len(optuna.load_study(study_name=cfg.name, storage=storage).get_trials(deepcopy=False))
    return make_sampler(cfg.search.sampler, cfg.search.seed + stored, len(cfg.search.objectives))


# One TrialRunner per worker process and study: the baseline, calibration batches and eval data are
# loaded once, and Ray reuses the worker's actor for the next trial.
_RUNNERS: dict[str, tuple[TrialRunner, SearchSpace]] = {}


def evaluate_trial(config: dict[str, Any], study_config: StudyConfig, workdir: str,
                   evaluate: Callable[[Policy], dict[str, Any]] | None = None, space: SearchSpace | None = None) -> None:
    """The Ray trainable: one trial of the policy `config` stands for, reported once."""
    import torch

    # The study's relative paths are relative to where `mpsearch search` ran; Tune starts trials in
    # their own folders. On a cluster the study folder must be on a filesystem every node shares.
    if os.path.isdir(workdir):
        os.chdir(workdir)
    cpus = max(1, int(tune.get_context().get_trial_resources().required_resources.get("CPU", 1)))
    torch.set_num_threads(cpus)
    objectives = study_config.search.objectives
    if evaluate is None:
        try:
            runner, space = _runner(study_config, cpus)
        except MpsearchError as exc:
            # The study cannot be set up on this worker (a model factory it cannot import, say): no retry
            # and no other point fares better, so the searcher ends the search on this result.
            tune.report({**{o: math.nan for o in objectives}, "failed": 1, "fatal": 1,
                         "fail_reason": f"A Ray worker cannot set up the study: {exc}"})
            return
        evaluate = runner.run
    try:
        metrics = evaluate(space.to_policy(config))
        values = scored_values(metrics, objectives)
    except TrialError as exc:
        # Tune insists every result carries the searcher's metrics; `failed` is what the searcher reads.
        tune.report({**{o: math.nan for o in objectives}, "failed": 1, "fail_reason": str(exc)})
        return
    tune.report({**dict(zip(objectives, values)), "failed": 0, "metrics_json": json.dumps(metrics)})


def _runner(cfg: StudyConfig, cpus: int) -> tuple[TrialRunner, SearchSpace]:
    from mpsearch.study import Study

    # The trainer would otherwise set finetune.threads over the CPUs Ray gave this trial.
    finetune = cfg.search.finetune.model_copy(update={"threads": cpus})
    cfg = cfg.model_copy(update={"search": cfg.search.model_copy(update={"finetune": finetune})})
    key = cfg.model_dump_json()
    if key not in _RUNNERS:
        study = Study(cfg, progress=False)
        _RUNNERS[key] = (study.trial_runner(), study.search_space())
    return _RUNNERS[key]


def _connect(address: str | None) -> bool:
    """Connect to the cluster at `address`, or start a local Ray; True when this call started it."""
    if ray.is_initialized():
        return False
    if address:
        from mpsearch.search.ray_address import check_address

        check_address(address)
        _present_auth_token()
    try:
        if address:
            ray.init(address=address, logging_level=logging.WARNING, log_to_driver=False)
        else:
            # "local": a fresh Ray of this machine's cores, never a cluster found by chance.
            ray.init(address="local", include_dashboard=False, logging_level=logging.WARNING, log_to_driver=False)
    except (ConnectionError, RuntimeError, ValueError, TimeoutError) as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        if not address:
            raise MpsearchError(f"Cannot start Ray locally ({reason}); check that Ray is installed whole "
                                "(`pip install 'ray[tune]'`) and that /tmp has room.") from None
        raise MpsearchError(
            f"Cannot connect to the Ray cluster at '{address}' ({reason}); check --address and that the cluster "
            "is up; a cluster with token authentication (Ray's default for new clusters) needs this machine to "
            "hold the head's token (`ray get-auth-token` there; RAY_AUTH_TOKEN or ~/.ray/auth_token here).") from None
    return True


def _present_auth_token() -> None:
    """Present this machine's Ray token to the cluster when there is one and RAY_AUTH_MODE is unset.

    `ray start --head` turns token authentication on when the head has a token (~/.ray/auth_token,
    written by any earlier local Ray), but `ray.init(address=...)` with an explicit address presents no
    token unless RAY_AUTH_MODE=token: the driver is refused for ~20 s and gives up. A cluster without
    authentication accepts a driver that presents one, so presenting it is always safe; a mode the user
    set is kept."""
    if os.environ.get("RAY_AUTH_MODE") is not None:
        return
    try:
        from ray._private.authentication.authentication_token_setup import (
            maybe_enable_token_auth_if_token_available,
        )
    except ImportError:  # a Ray without token authentication
        return
    if maybe_enable_token_auth_if_token_available(warn_if_disabled=False):
        log.info("presenting this machine's Ray token to the cluster (RAY_AUTH_MODE=disabled to not)")


def _cpus_per_trial(workers: int) -> int:
    """The cluster's CPUs shared among `workers` trials, at most one node's worth, at least one."""
    total = int(ray.cluster_resources().get("CPU", 1))
    largest_node = max((int(n["Resources"].get("CPU", 0)) for n in ray.nodes() if n.get("Alive")), default=1)
    return max(1, min(total // workers, largest_node))


def _experiment_path(cfg: StudyConfig, request: dict) -> tuple[Path, bool]:
    """The Ray experiment to continue (a run killed with the same request) or a new one to start."""
    root = (cfg.study_dir / EXPERIMENTS_DIR).resolve()
    runs = sorted(p for p in root.glob("run-*") if p.is_dir()) if root.is_dir() else []
    if runs:
        last = runs[-1]
        requested = last / REQUEST_FILE
        # A driver killed before Tune's first snapshot leaves tuner.pkl but no experiment state to restore.
        if (not (last / FINISHED_FILE).exists() and requested.is_file()
                and json.loads(requested.read_text()) == request and tune.Tuner.can_restore(str(last))
                and any(last.glob("experiment_state-*.json"))):
            return last, True
    return root / f"run-{len(runs) + 1:03d}", False


class _progress_bar:
    """A tqdm bar over the storage's complete trials, polled (Ray's own output is turned off)."""

    def __init__(self, record: TrialRecord, trials: int, done: int, enabled: bool):
        self.record, self.enabled = record, enabled
        self.trials, self.done = trials, done
        self.stop = threading.Event()

    def __enter__(self):
        if self.enabled:
            from tqdm.auto import tqdm

            self.bar = tqdm(total=self.trials, initial=self.done, desc="trials", unit="trial", dynamic_ncols=True)
            self.thread = threading.Thread(target=self._poll, daemon=True)
            self.thread.start()
        return self

    def _poll(self) -> None:
        while not self.stop.wait(1.0):
            self._update()

    def _update(self) -> None:
        from sqlalchemy.exc import OperationalError

        try:
            count = self.record.distinct_complete_count()
        except OperationalError:  # a locked database this second; the next poll catches up
            return
        self.bar.update(max(0, min(count, self.trials) - self.bar.n))

    def __exit__(self, *exc) -> None:
        if self.enabled:
            self.stop.set()
            self.thread.join()
            self._update()
            self.bar.close()
