"""The Ray Tune backend: Ray runs the trials (locally or on a cluster given by `--address`), an
OptunaSearch over the study's own Optuna storage proposes them, and only this driver process writes
that storage, so every trial lands there with the same contract as the Optuna backend (see storage.py).

Resuming after a kill is re-running the same command. The Optuna storage, not Ray's snapshot, decides
what is done: trials the storage holds as finished are never run again; a trial it still holds as
RUNNING was interrupted, so it is marked failed ("interrupted") and its point re-enqueued with its
origin, as the Optuna backend's heartbeat does. The Ray experiment in `<study dir>/ray/run-NNN` is
continued with `Tuner.restore` when the previous process died mid-run with the same request; its
unfinished Ray trials are not resumed (their points are the re-enqueued ones), so a trial that
finished after Ray's last snapshot cannot run twice.
"""

from __future__ import annotations

import json
import logging
import math
import os
import pickle
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mpsearch.errors import MpsearchError, TrialError
from mpsearch.search.optuna_backend import complete_count, enqueue_warm_starts, make_sampler, open_study
from mpsearch.search.space import SearchSpace
from mpsearch.search.warm_start import WarmStart

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
    from mpsearch.search.objective import TrialRunner

log = logging.getLogger(__name__)

EXPERIMENTS_DIR = "ray"
REQUEST_FILE = "mpsearch-request.json"
FINISHED_FILE = "mpsearch-finished"
# Retries of a trial whose worker crashed or raised unexpectedly; a TrialError (NaN loss, a policy the
# chip cannot run) is deterministic and recorded failed at once.
RETRIES_PER_TRIAL = 2
MAX_REQUEUES = 2
INTERRUPTED = "interrupted: the search process stopped while the trial ran; its point was re-enqueued"
INTERRUPTED_UNCHOSEN = "interrupted: the search process stopped before the sampler had chosen the point"


def run_ray(cfg: StudyConfig, space: SearchSpace, starts: list[WarmStart], trials: int, workers: int = 1,
            address: str | None = None, progress: bool = True) -> optuna.Study:
    """Run Ray trials until the study holds `trials` complete ones (warm starts included)."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = open_study(cfg, space, heartbeat=False)
    added = enqueue_warm_starts(study, starts)
    if added:
        log.info("enqueued %d warm-start trials", added)
    requeued = requeue_interrupted(study, space)
    if requeued:
        log.info("re-enqueued %d trials interrupted by the previous run", requeued)
    done = complete_count(study)
    if done >= trials:
        log.info("the study already holds %d complete trials (%d requested)", done, trials)
        return study

    started_ray = _connect(address)
    try:
        cpus = _cpus_per_trial(workers)
        trainable = tune.with_resources(
            tune.with_parameters(evaluate_trial, study_config=cfg, workdir=os.getcwd()), {"cpu": cpus})
        request = {"study": cfg.name, "trials": trials, "workers": workers,
                   "objectives": list(cfg.search.objectives), "sampler": cfg.search.sampler}
        path, restore = _experiment_path(cfg, request)
        if restore:
            log.info("continuing the Ray experiment %s", path)
            # Unfinished Ray trials are not resumed: requeue_interrupted gave their points back to the
            # study, and one that finished after Ray's last snapshot must not run again.
            tuner = tune.Tuner.restore(str(path), trainable, resume_unfinished=False, resume_errored=False,
                                       restart_errored=False)
        else:
            path.mkdir(parents=True, exist_ok=True)
            (path / REQUEST_FILE).write_text(json.dumps(request))
            budget = (trials - done) + max(3, math.ceil(0.5 * trials))
            searcher = StudySearcher(cfg, space, trials=trials, workers=workers, new_trial_budget=budget)
            # No max_concurrent_trials: its ConcurrencyLimiter is snapshotted with the trials in flight and,
            # restored without them, would wait for them forever. The searcher limits concurrency itself.
            tuner = tune.Tuner(
                trainable,
                tune_config=tune.TuneConfig(search_alg=searcher, num_samples=-1, reuse_actors=True),
                run_config=tune.RunConfig(
                    name=path.name, storage_path=str(path.parent), verbose=0,
                    failure_config=tune.FailureConfig(max_failures=RETRIES_PER_TRIAL)))
        log.info("running trials on Ray: %d at once, %d CPU(s) each; experiment in %s", workers, cpus, path)
        # Ray's new console output prints boxes and hints whatever the verbosity; the bar below shows progress.
        os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
        with _progress_bar(study, trials, done, enabled=progress):
            tuner.fit()
        # A finished experiment is never restored: a later request (more trials) starts a new one.
        (path / FINISHED_FILE).write_text("")
    finally:
        if started_ray:
            ray.shutdown()
    return study


def requeue_interrupted(study: optuna.Study, space: SearchSpace) -> int:
    """Mark the study's RUNNING trials failed and enqueue their points again, keeping their origin.

    Only right before this driver starts asking: with one search process per study, a trial still
    RUNNING then belongs to a process that died. Returns how many points were enqueued again."""
    from optuna.trial import TrialState

    names = {p.name for p in space.parameters()}
    requeued = 0
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        # Killed in the middle of `ask`, a sampler's trial has only some of its parameters: no point
        # was chosen yet, so there is nothing to run again. An enqueued one keeps its whole point.
        chosen = set(trial.params) == names or "fixed_params" in trial.system_attrs
        requeued += _give_back(study, trial._trial_id, requeue=chosen)
    return requeued


def _give_back(study: optuna.Study, trial_id: int, requeue: bool = True) -> bool:
    """FAIL a RUNNING trial as interrupted and, with `requeue`, enqueue its point again as Optuna's
    heartbeat retry does (origin and policy kept, at most MAX_REQUEUES times per point)."""
    import optuna
    from optuna.trial import TrialState

    storage = study._storage
    storage.set_trial_user_attr(trial_id, "fail_reason", INTERRUPTED if requeue else INTERRUPTED_UNCHOSEN)
    storage.set_trial_state_values(trial_id, TrialState.FAIL)
    if not requeue:
        return False
    failed = storage.get_trial(trial_id)
    history = [*failed.system_attrs.get("retry_history", []), failed.number]
    if len(history) > MAX_REQUEUES:
        log.warning("trial %d was interrupted %d times; its point is not enqueued again", failed.number, len(history))
        return False
    study.add_trial(optuna.trial.create_trial(
        state=TrialState.WAITING, params=failed.params, distributions=failed.distributions,
        user_attrs={k: v for k, v in failed.user_attrs.items() if k in ("origin", "policy")},
        system_attrs={**failed.system_attrs, "failed_trial": history[0], "retry_history": history}))
    return True


class StudySearcher(OptunaSearch):
    """OptunaSearch that keeps the study's trial contract and its count.

    It asks until the storage holds the requested number of complete trials, with at most `workers` Ray
    trials in flight and never more trials open than would reach that number. A point the study already
    scored, or one a Ray trial is scoring now, is not run again: the stored result answers it
    (`copied_from`). Results are stored with their metrics; a failed trial is FAIL with its
    `fail_reason`."""

    def __init__(self, cfg: StudyConfig, space: SearchSpace, trials: int, workers: int, new_trial_budget: int):
        from optuna.distributions import CategoricalDistribution

        from mpsearch.search.storage import open_storage

        objectives = list(cfg.search.objectives)
        super().__init__(
            space={p.name: CategoricalDistribution(list(p.choices)) for p in space.parameters()},
            metric=objectives, mode=["min"] * len(objectives),
            sampler=make_sampler(cfg.search.sampler, cfg.search.seed, len(objectives)),
            study_name=cfg.name, storage=open_storage(cfg))
        self._study_config = cfg
        self._search_space = space
        self._target_trials = trials
        self._workers = workers
        self._new_trial_budget = new_trial_budget
        self._asked = 0
        self._waiting: dict[int, list[optuna.Trial]] = {}  # trial number in flight -> trials of the same point

    def suggest(self, trial_id: str) -> dict | str | None:
        from optuna.trial import TrialState

        while True:
            # Every RUNNING trial is this run's (requeue_interrupted cleared the rest before the start).
            stored = self._ot_study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.RUNNING))
            complete = [t for t in stored if t.state == TrialState.COMPLETE]
            if len(complete) >= self._target_trials:
                return Searcher.FINISHED
            if self._asked >= self._new_trial_budget:
                log.warning("stopping: %d trials asked in this run and %d of %d complete; see the failed trials' "
                            "fail_reason", self._asked, len(complete), self._target_trials)
                return Searcher.FINISHED
            if len(self._ot_trials) >= self._workers or len(stored) >= self._target_trials:
                return None  # ask again when a trial ends (a failed one needs a successor)
            trial = self._ot_study.ask(fixed_distributions=self._space)
            params = dict(trial.params)
            if "origin" not in trial.user_attrs:
                trial.set_user_attr("origin", "sampler")
            trial.set_user_attr("policy", self._search_space.to_policy(params).to_dict())
            scored = next((t for t in complete if t.params == params and "metrics" in t.user_attrs), None)
            if scored is not None:
                self._copy(trial, self._ot_study._storage.get_trial(scored._trial_id))
                continue
            scoring = next((t for t in self._ot_trials.values() if t.params == params), None)
            if scoring is not None:
                # Answered from that trial's result when it ends; meanwhile ask for another point.
                self._waiting.setdefault(scoring.number, []).append(trial)
                continue
            self._asked += 1
            self._ot_trials[trial_id] = trial
            return params

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        pass  # one result per trial, at its end; several objectives have no intermediate values anyway

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        trial = self._ot_trials.pop(trial_id, None)
        if trial is None:
            return
        self._completed_trials.add(trial_id)
        if not self._ot_study._storage.get_trial(trial._trial_id).state.is_finished():
            self._record(trial, trial_id, result, error)
        for waiting in self._waiting.pop(trial.number, []):
            self._copy(waiting, self._ot_study._storage.get_trial(trial._trial_id))

    def _record(self, trial: optuna.Trial, trial_id: str, result: dict | None, error: bool) -> None:
        objectives = self.metric
        if result and result.get("failed"):
            self._fail(trial, str(result.get("fail_reason", "the trial failed")))
        elif result and all(result.get(o) is not None for o in objectives):
            trial.set_user_attr("metrics", json.loads(result["metrics_json"]))
            values = [float(result[o]) for o in objectives]
            self._ot_study.tell(trial, values)
            log.info("trial %d (%s): %s", trial.number, trial.user_attrs.get("origin"),
                     ", ".join(f"{o}={v:.4g}" for o, v in zip(objectives, values)))
        elif error:
            self._fail(trial, f"the Ray trial {trial_id} errored {RETRIES_PER_TRIAL + 1} times (a crashed worker "
                              "or an unexpected exception; see error.txt in its Ray trial folder)")
        else:
            # Stopped before reporting (the experiment was interrupted): give the point back.
            _give_back(self._ot_study, trial._trial_id)

    def _copy(self, trial: optuna.Trial, source: optuna.trial.FrozenTrial) -> None:
        """End `trial` as `source` (the same point) ended: its result, its failure, or interrupted."""
        from optuna.trial import TrialState

        trial.set_user_attr("copied_from", source.number)
        if source.state == TrialState.COMPLETE:
            trial.set_user_attr("metrics", source.user_attrs["metrics"])
            self._ot_study.tell(trial, source.values)
            log.info("trial %d (%s): the point of trial %d again; its result copied", trial.number,
                     trial.user_attrs.get("origin"), source.number)
        elif source.user_attrs.get("fail_reason", "").startswith("interrupted"):
            _give_back(self._ot_study, trial._trial_id)
        else:
            self._fail(trial, source.user_attrs.get("fail_reason", f"the same point failed in trial {source.number}"))

    def _fail(self, trial: optuna.Trial, reason: str) -> None:
        from optuna.trial import TrialState

        trial.set_user_attr("fail_reason", reason)
        self._ot_study.tell(trial, state=TrialState.FAIL)
        log.warning("trial %d failed: %s", trial.number, reason)

    # Ray pickles the searcher (tuner.pkl when the Tuner is made, a snapshot while it runs). The sampler
    # may hold a thread lock (Optuna's GA samplers do) and the study and its trials hold the sampler, so
    # none of them is pickled: they are rebuilt from the study's config and its storage where the
    # searcher is unpickled. The storage is the record, and trials in flight at a snapshot are not
    # resumed (their points are re-enqueued), so nothing else is lost.
    _REBUILT = ("_sampler", "_storage", "_ot_study", "_ot_trials", "_waiting")

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
        self._sampler = make_sampler(cfg.search.sampler, cfg.search.seed, len(cfg.search.objectives))
        self._storage = open_storage(cfg)
        self._ot_study = optuna.load_study(study_name=cfg.name, storage=self._storage, sampler=self._sampler)
        self._ot_trials = {}
        self._waiting = {}

    def save(self, checkpoint_path: str) -> None:
        with open(checkpoint_path, "wb") as file:
            pickle.dump(self.__getstate__(), file)

    def restore(self, checkpoint_path: str) -> None:
        with open(checkpoint_path, "rb") as file:
            self.__setstate__(pickle.load(file))


# One TrialRunner per worker process and study: the baseline, calibration batches and eval data are
# loaded once, and Ray reuses the worker's actor for the next trial.
_RUNNERS: dict[str, tuple[TrialRunner, SearchSpace]] = {}


def evaluate_trial(config: dict[str, Any], study_config: StudyConfig, workdir: str) -> None:
    """The Ray trainable: one trial of the policy `config` stands for, reported once."""
    import torch

    # The study's relative paths are relative to where `mpsearch search` ran; Tune starts trials in
    # their own folders. On a cluster the study folder must be on a filesystem every node shares.
    if os.path.isdir(workdir):
        os.chdir(workdir)
    cpus = max(1, int(tune.get_context().get_trial_resources().required_resources.get("CPU", 1)))
    torch.set_num_threads(cpus)
    runner, space = _runner(study_config, cpus)
    objectives = study_config.search.objectives
    try:
        metrics = runner.run(space.to_policy(config))
        missing = [o for o in objectives if o not in metrics]
        if missing:
            raise TrialError(f"the trial reports no {', '.join(missing)}; choose objectives the task measures")
    except TrialError as exc:
        # Tune insists every result carries the searcher's metrics; `failed` is what the searcher reads.
        tune.report({**{o: math.nan for o in objectives}, "failed": 1, "fail_reason": str(exc)})
        return
    tune.report({**{o: float(metrics[o]) for o in objectives}, "failed": 0, "metrics_json": json.dumps(metrics)})


def _runner(cfg: StudyConfig, cpus: int) -> tuple[TrialRunner, SearchSpace]:
    from mpsearch.search.objective import TrialRunner
    from mpsearch.study import Study

    # The trainer would otherwise set finetune.threads over the CPUs Ray gave this trial.
    finetune = cfg.search.finetune.model_copy(update={"threads": cpus})
    cfg = cfg.model_copy(update={"search": cfg.search.model_copy(update={"finetune": finetune})})
    key = cfg.model_dump_json()
    if key not in _RUNNERS:
        study = Study(cfg, progress=False)
        _RUNNERS[key] = (TrialRunner(study), study.search_space())
    return _RUNNERS[key]


def _connect(address: str | None) -> bool:
    """Connect to the cluster at `address`, or start a local Ray; True when this call started it."""
    if ray.is_initialized():
        return False
    if address:
        _check_reachable(address)
    try:
        if address:
            ray.init(address=address, logging_level=logging.WARNING, log_to_driver=False)
        else:
            # "local": a fresh Ray of this machine's cores, never a cluster found by chance.
            ray.init(address="local", include_dashboard=False, logging_level=logging.WARNING, log_to_driver=False)
    except (ConnectionError, RuntimeError, ValueError, TimeoutError) as exc:
        where = f"at '{address}'" if address else "locally"
        raise MpsearchError(f"Cannot start Ray {where} ({str(exc).splitlines()[0] if str(exc) else type(exc).__name__}); "
                            "check --address (e.g. ray://head:10001 or auto) and that the cluster is up.") from None
    return True


def _check_reachable(address: str) -> None:
    """Fail at once on a host:port nobody answers (Ray itself retries such an address for minutes)."""
    import socket

    host, _, port = address.removeprefix("ray://").rpartition(":")
    if not host or not port.isdigit():
        return  # "auto", or a form Ray resolves itself
    try:
        socket.create_connection((host, int(port)), timeout=10).close()
    except OSError as exc:
        raise MpsearchError(f"Ray is not reachable at --address '{address}' ({exc.strerror or exc}); start the "
                            "cluster (`ray start --head`) or fix the address (host:6379, or ray://host:10001).") from None


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
        if (not (last / FINISHED_FILE).exists() and requested.is_file()
                and json.loads(requested.read_text()) == request and tune.Tuner.can_restore(str(last))):
            return last, True
    return root / f"run-{len(runs) + 1:03d}", False


class _progress_bar:
    """A tqdm bar over the storage's complete trials, polled (Ray's own output is turned off)."""

    def __init__(self, study: optuna.Study, trials: int, done: int, enabled: bool):
        self.study, self.enabled = study, enabled
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
            count = complete_count(self.study)
        except OperationalError:  # a locked database this second; the next poll catches up
            return
        self.bar.update(max(0, min(count, self.trials) - self.bar.n))

    def __exit__(self, *exc) -> None:
        if self.enabled:
            self.stop.set()
            self.thread.join()
            self._update()
            self.bar.close()
