"""Start-up recovery of RUNNING trials on a real SQLite storage: a dead process's trial is failed and its
point enqueued again at once, whatever its heartbeat says; a live process's trial is left alone, so two
searches can share one storage."""

from __future__ import annotations

import json
import subprocess
import sys
import time

import pytest
from optuna.trial import TrialState

from mpsearch.config import StudyConfig
from mpsearch.search.optuna_backend import open_record
from mpsearch.search.runs import INTERRUPTED, RUN_ATTR, is_dead, process_alive, recover_dead_trials, this_run
from mpsearch.study import Study

pytestmark = pytest.mark.filterwarnings("ignore:Heartbeat of storage")  # trials asked by hand

PRINT_RUN = "import json, sys; from mpsearch.search.runs import this_run; print(json.dumps(this_run()), flush=True)"


def _run_of(command: str) -> tuple[dict, subprocess.Popen]:
    process = subprocess.Popen([sys.executable, "-c", command], stdout=subprocess.PIPE, text=True)
    return json.loads(process.stdout.readline()), process


def _running_trial(record, run: dict | None, origin: str, choice: int = 0):
    point = {p.name: p.choices[choice] for p in record.space.parameters()}
    record.study.enqueue_trial(point, user_attrs={"origin": origin})
    trial = record.study.ask()
    if run is not None:
        record.storage.set_trial_system_attr(record.trial_id(trial.number), RUN_ATTR, run)
    record.storage.record_heartbeat(record.trial_id(trial.number))
    return trial


def test_dead_processes_trials_are_requeued_at_once_and_live_ones_are_left(tiny_study_yaml):
    cfg = StudyConfig.from_yaml(tiny_study_yaml)
    record = open_record(cfg, Study(cfg, progress=False).search_space(), heartbeat=False)
    study = record.study

    dead_run, dead = _run_of(PRINT_RUN)
    dead.wait()
    live_run, live = _run_of(PRINT_RUN + "; import time; time.sleep(120)")
    try:
        assert process_alive(dead_run) is False and process_alive(live_run) is True
        assert process_alive(this_run()) is True
        assert process_alive({**live_run, "host": "elsewhere"}) is None
        killed = _running_trial(record, dead_run, "uniform-8", 0)
        running = _running_trial(record, live_run, "uniform-4", 1)
        remote = _running_trial(record, {**dead_run, "host": "elsewhere"}, "ilp-0", 0)

        # A fresh heartbeat does not keep a dead process's trial: no waiting for the grace period.
        assert recover_dead_trials(record, grace_seconds=60) == 1
        trials = study.get_trials()
        assert trials[killed.number].state == TrialState.FAIL
        assert trials[killed.number].user_attrs["fail_reason"] == INTERRUPTED
        assert trials[running.number].state == TrialState.RUNNING
        assert trials[remote.number].state == TrialState.RUNNING  # another machine: its heartbeat decides
        again = [t for t in trials if t.state == TrialState.WAITING]
        assert len(again) == 1 and again[0].user_attrs["origin"] == "uniform-8"
        assert again[0].system_attrs["retry_history"] == [killed.number]
        assert RUN_ATTR not in again[0].system_attrs  # its next run stamps it

        # Past the grace period without a heartbeat, the other machine's trial is stale; the live one beats.
        time.sleep(2.1)  # SQLite's clock counts whole seconds
        record.storage.record_heartbeat(record.trial_id(running.number))
        assert recover_dead_trials(record, grace_seconds=1) == 1
        assert study.get_trials()[remote.number].state == TrialState.FAIL
        assert study.get_trials()[running.number].state == TrialState.RUNNING
    finally:
        live.kill()
        live.wait()


def test_a_trial_without_stamp_or_heartbeat_is_dead_only_past_the_grace_period(tiny_study_yaml):
    cfg = StudyConfig.from_yaml(tiny_study_yaml)
    space = Study(cfg, progress=False).search_space()
    record = open_record(cfg, space, heartbeat=False)
    record.study.enqueue_trial({p.name: p.choices[0] for p in space.parameters()})
    trial = record.get(record.study.ask().number)
    assert not is_dead(trial, heartbeat_age=None, grace_seconds=60)
    time.sleep(1.1)
    assert is_dead(trial, heartbeat_age=None, grace_seconds=1)
