"""The trial storage as several workers share it."""

import threading
from collections import Counter

import optuna

from mpsearch.config import StudyConfig
from mpsearch.search.storage import open_storage


def test_each_enqueued_trial_runs_once_when_workers_take_them_at_once(tmp_path):
    # Optuna hands out an enqueued trial by reading WAITING and then writing RUNNING; on SQLite, without
    # transactions that take the lock when they begin, two workers both read WAITING and run one trial
    # twice (the second to finish then fails with "Cannot tell a COMPLETE trial").
    cfg = StudyConfig.from_dict({"name": "queue", "output_dir": str(tmp_path / "study"), "model": {"name": "rnnt"}})
    storage = open_storage(cfg)
    runs, lock = Counter(), threading.Lock()

    def objective(trial):
        with lock:
            runs[trial.number] += 1
        return trial.suggest_float("x", 0, 10)

    for repeat in range(6):
        study = optuna.create_study(study_name=f"queue-{repeat}", storage=storage)
        for x in range(6):
            study.enqueue_trial({"x": float(x)})
        runs.clear()
        study.optimize(objective, n_trials=6, n_jobs=4)
        assert sorted(runs.values()) == [1] * 6
        assert [t.state for t in study.trials] == [optuna.trial.TrialState.COMPLETE] * 6
