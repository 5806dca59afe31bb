"""`mpsearch search --backend ray --address` against a real Ray cluster started with `ray start --head`,
with token authentication on as Ray turns it on when the head has a token (~/.ray/auth_token): the
driver presents the machine's token, and a killed driver's study resumes on the same cluster.

The cluster is this test's own: a free port, its own temp folder and home, stopped through its own
process group (never `ray stop`, which would stop every Ray on the machine)."""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

pytest.importorskip("ray")

pytestmark = pytest.mark.cluster

TRIALS = 2  # the uniform warm starts, one at a time


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _stop(process: subprocess.Popen, marker: str, grace: float = 10.0) -> None:
    """Stop a process started in its own session and everything in its group, then any straggler whose
    command line names `marker` (this cluster's temp folder)."""
    for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 5.0)):
        try:
            os.killpg(process.pid, sig)
        except ProcessLookupError:
            break
        try:
            process.wait(timeout=wait)
            break
        except subprocess.TimeoutExpired:
            continue
    for proc in Path("/proc").glob("[0-9]*"):
        try:
            if marker in (proc / "cmdline").read_bytes().decode(errors="replace"):
                os.kill(int(proc.name), signal.SIGKILL)
        except (OSError, ValueError):
            pass


def _start_head(env: dict, log_path: Path) -> tuple[subprocess.Popen | None, str, int]:
    """A head node that says it started, or (None, ...) when it did not: Ray gives a raylet 30 s to
    register, which a machine busy with other work can miss."""
    temp = tempfile.mkdtemp(prefix="mpsr-", dir="/tmp")  # short: Ray's socket paths must fit in 107 bytes
    port = _free_port()
    with open(log_path, "w") as log:
        head = subprocess.Popen(
            [sys.executable, "-m", "ray.scripts.scripts", "start", "--head", f"--port={port}",
             "--node-ip-address=127.0.0.1", "--num-cpus=2", "--include-dashboard=false", "--disable-usage-stats",
             f"--temp-dir={temp}", "--block"],
            stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    deadline = time.monotonic() + 120
    while "Ray runtime started" not in log_path.read_text():
        if head.poll() is not None or time.monotonic() > deadline:
            _stop(head, temp)
            shutil.rmtree(temp, ignore_errors=True)
            return None, temp, port
        time.sleep(0.5)
    return head, temp, port


@pytest.fixture
def ray_cluster(tmp_path):
    """(address, environment) of a 2-CPU Ray head on 127.0.0.1 whose home holds a Ray token."""
    home = tmp_path / "home"
    (home / ".ray").mkdir(parents=True)
    (home / ".ray" / "auth_token").write_text(secrets.token_hex(32))
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    env.update(HOME=str(home), OMP_NUM_THREADS="1")
    log_path = tmp_path / "ray-head.log"
    for _ in range(2):
        head, temp, port = _start_head(env, log_path)
        if head is not None:
            break
    assert head is not None, f"ray start failed twice:\n{log_path.read_text()}"
    try:
        assert "Token authentication is enabled" in log_path.read_text()
        yield f"127.0.0.1:{port}", env
    finally:
        _stop(head, temp)
        shutil.rmtree(temp, ignore_errors=True)


def test_search_on_a_token_cluster_connects_and_resumes_after_the_driver_is_killed(ray_cluster, make_study_yaml,
                                                                                   tmp_path, trial_states):
    address, env = ray_cluster
    study_yaml = make_study_yaml(trials=TRIALS, workers=1, warm_start={"ilp": 0}, heartbeat_seconds=5)
    command = [sys.executable, "-m", "mpsearch.cli.main", "search", str(study_yaml), "--backend", "ray",
               "--address", address, "--no-progress"]
    db = tmp_path / "study" / "optuna.db"
    log_path = tmp_path / "search.log"
    with open(log_path, "w") as log:
        driver = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        deadline = time.monotonic() + 180
        try:
            while not trial_states.mid_trial(trial_states.read(db)):
                assert driver.poll() is None, f"the search ended before it was killed:\n{log_path.read_text()}"
                assert time.monotonic() < deadline, f"no trial started in time:\n{log_path.read_text()}"
                time.sleep(0.2)
        finally:
            os.killpg(driver.pid, signal.SIGKILL)
            driver.wait()
    assert "InvalidAuthToken" not in log_path.read_text()
    interrupted = [t.number for t in optuna.load_study(study_name="tiny", storage=f"sqlite:///{db}").trials
                   if t.state == TrialState.RUNNING]

    with open(log_path, "a") as log:
        rerun = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        try:
            assert rerun.wait(timeout=180) == 0, log_path.read_text()
        finally:
            if rerun.poll() is None:
                os.killpg(rerun.pid, signal.SIGKILL)
                rerun.wait()

    trials = optuna.load_study(study_name="tiny", storage=f"sqlite:///{db}").trials
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    assert len({tuple(sorted(t.params.items())) for t in complete}) == TRIALS, log_path.read_text()
    assert {t.user_attrs["origin"] for t in complete} == {"uniform-8", "uniform-4"}
    assert not [t for t in trials if t.state in (TrialState.RUNNING, TrialState.WAITING)]
    assert interrupted and all(trials[n].state == TrialState.FAIL for n in interrupted)
