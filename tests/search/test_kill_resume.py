"""A search process killed with SIGKILL mid-trial, then re-run with the same command, ends with exactly
the requested distinct complete points, and no finished trial is evaluated again (both backends). The
re-run fails the killed trial and enqueues its point at once: the heartbeat's grace period (60 s here)
is not waited for, since the process that ran the trial is gone."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections import Counter

import optuna
import pytest
from optuna.trial import TrialState

from mpsearch.search.storage import fail_reason

TRIALS = 4


def _search(study_yaml, backend, log, address=None):
    command = [sys.executable, "-m", "mpsearch.cli.main", "search", str(study_yaml), "--backend", backend,
               "--no-progress", *(["--address", address] if address else [])]
    # A session of its own: the kill reaches the search process and everything it started (Ray included).
    return subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})


@pytest.mark.parametrize("backend", ["optuna", "ray"])
def test_killed_search_resumes_without_rerunning_finished_trials(tmp_path, make_study_yaml, backend, request,
                                                                  trial_states):
    # The Ray search joins the session's Ray by --address (a killed driver's trials die with its job).
    address = request.getfixturevalue("ray_session").get_runtime_context().gcs_address if backend == "ray" else None
    study_yaml = make_study_yaml(trials=TRIALS, workers=1 if backend == "optuna" else 2, heartbeat_seconds=60,
                                 finetune={"max_steps": 12, "warmup_steps": 0, "threads": 1})
    db = tmp_path / "study" / "optuna.db"
    log_path = tmp_path / "search.log"
    with open(log_path, "w") as log:
        process = _search(study_yaml, backend, log, address)
        deadline = time.monotonic() + 150
        try:
            while not (trial_states.read(db)["COMPLETE"] >= 1 and trial_states.mid_trial(trial_states.read(db))):
                assert process.poll() is None, f"the search ended before it was killed:\n{log_path.read_text()}"
                assert time.monotonic() < deadline, f"no trial completed in time:\n{log_path.read_text()}"
                time.sleep(0.2)
        finally:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()

    storage = f"sqlite:///{db}"
    before = {t.number: t for t in optuna.load_study(study_name="tiny", storage=storage).trials}
    interrupted = [t for t in before.values() if t.state == TrialState.RUNNING]
    assert interrupted and len(interrupted) + sum(t.state == TrialState.COMPLETE for t in before.values()) <= TRIALS

    with open(log_path, "a") as log:
        rerun = _search(study_yaml, backend, log, address)
        try:
            assert rerun.wait(timeout=150) == 0, log_path.read_text()
        except subprocess.TimeoutExpired:
            os.killpg(rerun.pid, signal.SIGKILL)
            pytest.fail(f"the re-run did not finish:\n{log_path.read_text()}")

    trials = optuna.load_study(study_name="tiny", storage=storage).trials
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    assert len({tuple(sorted(t.params.items())) for t in complete}) == TRIALS, log_path.read_text()
    assert not [t for t in trials if t.state in (TrialState.RUNNING, TrialState.WAITING)]
    # Finished before the kill: untouched.
    for number, old in before.items():
        if old.state.is_finished():
            assert trials[number].state == old.state and trials[number].values == old.values
    # No point evaluated twice: a repeated point is answered from the stored trial (copied_from).
    evaluated = Counter(tuple(sorted(t.params.items())) for t in complete if "copied_from" not in t.user_attrs)
    assert max(evaluated.values()) == 1, evaluated
    # An interrupted trial is failed, not counted, and its point (with its origin) was run again, unless
    # the kill came before the sampler had chosen all of its parameters.
    for old in interrupted:
        assert trials[old.number].state == TrialState.FAIL
        # whichever backend failed it, the trial says why (the heartbeat check cannot write a reason)
        assert "killed" in fail_reason(trials[old.number]) or "interrupted" in fail_reason(trials[old.number])
        point = old.system_attrs.get("fixed_params") or old.params
        if len(point) == len(complete[0].params):
            assert any(t.params == point and t.user_attrs.get("origin") == old.user_attrs.get("origin")
                       for t in complete if t.number > old.number), [(t.number, t.params) for t in complete]
    for t in complete:
        assert {"metrics", "policy", "origin"} <= set(t.user_attrs)
