"""Which search process runs a trial, and what becomes of the trials of one that died.

A search process (the Optuna loop, or the Ray driver that asks and tells for its Ray trials) stamps
each trial it runs with its identity (`RUN_ATTR`: host, boot, process id and process start time) and
keeps the trial's heartbeat. At start-up, before it counts what is done, a process fails the RUNNING
trials of dead processes and enqueues their points again (origin and policy kept), so a killed run's
points, warm starts included, are neither lost nor waited for. A RUNNING trial is dead when

  - a process of this machine stamped it and no longer runs (same boot, process id and start time
    make the same process; one that still runs keeps its trial, whatever its heartbeat), or
  - another machine's process, or none yet, stamped it, and its heartbeat is older than the grace
    period (`search.heartbeat_seconds`), or it has no heartbeat and started longer ago than that.

Any other RUNNING trial may belong to a live process, here or on another machine, and is left to it:
two processes may search one storage at once. A process stamps a trial right after asking for it, so a
kill in that instant leaves an unstamped trial; it is judged by its heartbeat (the next start-up gives
it one), within the grace period.
"""

from __future__ import annotations

import datetime
import logging
import os
import socket
import threading
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import optuna

    from mpsearch.search.record import TrialRecord

log = logging.getLogger(__name__)

RUN_ATTR = "mpsearch:run"
# A point whose trial was interrupted this many times is not enqueued again.
MAX_REQUEUES = 2
INTERRUPTED = "interrupted: the search process stopped while the trial ran; its point was re-enqueued"
INTERRUPTED_UNCHOSEN = "interrupted: the search process stopped before the sampler had chosen the point"
# Kept when a point is enqueued again; everything else belongs to the run that failed.
_REQUEUED_USER_ATTRS = ("origin", "policy")

_this_run: dict | None = None


def this_run() -> dict:
    """This process's identity as stamped on its trials."""
    global _this_run
    if _this_run is None or _this_run["pid"] != os.getpid():
        pid = os.getpid()
        _this_run = {"host": socket.gethostname(), "boot": _boot_id(), "pid": pid, "start": _process_start(pid)}
    return _this_run


def stamp(record: TrialRecord, number: int, beat: bool = False) -> None:
    """Mark the trial as this process's (and, with `beat`, give it its first heartbeat). A Trial sets no
    system attrs of its own, so the stamp goes through the study's storage."""
    trial_id = record.trial_id(number)
    record.storage.set_trial_system_attr(trial_id, RUN_ATTR, this_run())
    if beat:
        record.storage.record_heartbeat(trial_id)


def is_this_runs(trial: optuna.trial.FrozenTrial) -> bool:
    return trial.system_attrs.get(RUN_ATTR) == this_run()


def process_alive(run: dict) -> bool | None:
    """Whether the process that stamped `run` still runs; None when it ran on another machine."""
    me = this_run()
    if not isinstance(run, dict) or run.get("host") != me["host"] or not isinstance(run.get("pid"), int):
        return None
    if run.get("boot") and me["boot"] and run["boot"] != me["boot"]:
        return False  # the machine restarted since
    if me["start"] is not None:  # /proc: the same pid with another start time is another process
        start = _process_start(run["pid"])
        return start is not None and start == run.get("start")
    try:
        os.kill(run["pid"], 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _boot_id() -> str | None:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return None


def _process_start(pid: int) -> int | None:
    """The process's start time in clock ticks since boot (Linux); None without /proc or for a zombie."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return None if fields[0] == "Z" else int(fields[19])


def heartbeat_ages(storage: optuna.storages.BaseStorage, study_id: int) -> dict[int, float]:
    """Seconds since the last heartbeat of each RUNNING trial that has one, by trial number; the
    database's own clock, which wrote the heartbeats, measures it. Optuna's storage API reads no
    heartbeat's age, so this reads the RDB storage's tables (`engine` is RDBStorage's public attribute)."""
    import sqlalchemy as sa

    engine = getattr(storage, "engine", None)
    if engine is None:
        return {}
    trials = sa.table("trials", sa.column("trial_id"), sa.column("number"), sa.column("study_id"),
                      sa.column("state"))
    beats = sa.table("trial_heartbeats", sa.column("trial_id"), sa.column("heartbeat", sa.DateTime))
    query = (sa.select(trials.c.number, beats.c.heartbeat)
             .join(beats, beats.c.trial_id == trials.c.trial_id)
             .where(trials.c.study_id == study_id, trials.c.state == "RUNNING"))
    with engine.connect() as connection:
        now = connection.execute(sa.select(sa.func.now())).scalar()
        rows = connection.execute(query).all()
    now = _naive(now)
    return {number: (now - _naive(beat)).total_seconds() for number, beat in rows}


def _naive(moment) -> datetime.datetime:
    if isinstance(moment, str):  # SQLite hands CURRENT_TIMESTAMP back as text
        moment = datetime.datetime.fromisoformat(moment)
    return moment.replace(tzinfo=None)


def is_dead(trial: optuna.trial.FrozenTrial, heartbeat_age: float | None, grace_seconds: float) -> bool:
    """The rules of the module docstring, for one RUNNING trial."""
    alive = process_alive(trial.system_attrs.get(RUN_ATTR))
    if alive is not None:
        return not alive
    if heartbeat_age is not None:
        return heartbeat_age > grace_seconds
    started = trial.datetime_start
    return started is not None and (datetime.datetime.now() - started).total_seconds() > grace_seconds


def recover_dead_trials(record: TrialRecord, grace_seconds: float) -> int:
    """Fail the RUNNING trials of dead processes, enqueue their points again; returns how many were
    enqueued. A live-looking trial without a heartbeat gets one, so that it goes stale if nobody beats."""
    from optuna.trial import TrialState

    names = {p.name for p in record.space.parameters()}
    ages = heartbeat_ages(record.storage, record.study_id)
    requeued = 0
    for trial in record.study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        if not is_dead(trial, ages.get(trial.number), grace_seconds):
            if trial.number not in ages:
                record.storage.record_heartbeat(record.trial_id(trial.number))
            continue
        # Killed in the middle of `ask`, a sampler's trial has only some of its parameters: no point
        # was chosen yet, so there is nothing to run again. An enqueued one keeps its whole point.
        chosen = set(trial.params) == names or "fixed_params" in trial.system_attrs
        requeued += give_back(record, trial.number, requeue=chosen)
    return requeued


def give_back(record: TrialRecord, number: int, requeue: bool = True) -> bool:
    """FAIL a RUNNING trial as interrupted and, with `requeue`, enqueue its point again. True when the
    point was enqueued; False when the trial was finished meanwhile by its own process. The trial may be
    another process's, so it is written through the storage, which (unlike `Study.tell`) says whether
    this call or its own process finished it."""
    from optuna.exceptions import UpdateFinishedTrialError
    from optuna.trial import TrialState

    storage, trial_id = record.storage, record.trial_id(number)
    try:
        storage.set_trial_user_attr(trial_id, "fail_reason", INTERRUPTED if requeue else INTERRUPTED_UNCHOSEN)
        if not storage.set_trial_state_values(trial_id, TrialState.FAIL):
            return False
    except UpdateFinishedTrialError:
        return False
    return requeue and requeue_point(record.study, storage.get_trial(trial_id))


def requeue_point(study: optuna.Study, failed: optuna.trial.FrozenTrial) -> bool:
    """Enqueue the point of an interrupted trial again, as Optuna's heartbeat retry does (origin and
    policy kept, at most MAX_REQUEUES times per point), without the dead run's stamp."""
    import optuna
    from optuna.trial import TrialState

    history = [*failed.system_attrs.get("retry_history", []), failed.number]
    if len(history) > MAX_REQUEUES:
        log.warning("trial %d was interrupted %d times; its point is not enqueued again", failed.number, len(history))
        return False
    system_attrs = {k: v for k, v in failed.system_attrs.items() if k != RUN_ATTR}
    study.add_trial(optuna.trial.create_trial(
        state=TrialState.WAITING, params=failed.params, distributions=failed.distributions,
        user_attrs={k: v for k, v in failed.user_attrs.items() if k in _REQUEUED_USER_ATTRS},
        system_attrs={**system_attrs, "failed_trial": history[0], "retry_history": history}))
    return True


def requeue_stale(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
    """Optuna's heartbeat-stale callback: the trial was failed for a stale heartbeat; run its point again."""
    requeue_point(study, trial)


class Heartbeat:
    """Beats, every `interval` seconds, for the RUNNING trials this process stamped (the Ray driver's:
    Optuna's own loop beats for its trials itself). With `recover_after` (grace seconds) it also
    recovers the trials of processes that died meanwhile, as Optuna's loop does when a trial starts."""

    def __init__(self, record: TrialRecord, interval: float, recover_after: float | None = None):
        self.record, self.interval, self.recover_after = record, interval, recover_after
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, name="mpsearch-heartbeat", daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop.set()
        self.thread.join()

    def _run(self) -> None:
        from optuna.trial import TrialState
        from sqlalchemy.exc import SQLAlchemyError

        while not self.stop.wait(self.interval):
            try:
                for trial in self.record.study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
                    if is_this_runs(trial):
                        self.record.storage.record_heartbeat(self.record.trial_id(trial.number))
                if self.recover_after is not None and recover_dead_trials(self.record, self.recover_after):
                    log.info("re-enqueued trials interrupted by a search process that stopped")
            except SQLAlchemyError as exc:  # a locked database this time; the next beat is soon
                log.debug("heartbeat skipped: %s", exc)
