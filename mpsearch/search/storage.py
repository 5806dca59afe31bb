"""The study's trial record: an Optuna RDB storage (SQLite in the study folder unless `search.storage`
names another SQLAlchemy URL). Search algorithms never write result files; everything downstream (the
front, export) reads from here.

What every trial carries (both backends):
  values                 one per `search.objectives`, in order, all minimised (the study's metric_names)
  params                 the SearchSpace parameters (`<group>.<field>`)
  user_attrs["metrics"]  wer, cer, test_wer, test_cer, latency_ms, size_bytes, avg_weight_bits, seconds
  user_attrs["m_<name>"] each number of `metrics` again on its own, for optuna-dashboard's columns
  user_attrs["policy"]   the Policy as `Policy.to_dict()` (so export needs neither model nor space)
  user_attrs["origin"]   "uniform-<bits>", "ilp-<i>", "supernet-<lambda>" or "sampler"
  user_attrs["baseline"], ["sensitivity"]  the keys of the float baseline and the sensitivity report the
                         trial is scored with, from its start (metrics carries them too); only the current
                         baseline's trials count (record.py)
  user_attrs["copied_from"]  on a COMPLETE trial of a point evaluated before: that trial's number (its
                         result copied; it counts for nothing)
  user_attrs["duplicate_of"] on a PRUNED trial: the earlier trial evaluating the same point meanwhile
  user_attrs["fail_reason"]  on a FAIL trial: why (NaN loss, the exception's message); a trial failed
                         by Optuna's heartbeat check has none (a finished trial cannot be written to),
                         `fail_reason()` says why for it
  system_attrs["mpsearch:run"]  the search process that ran it (runs.py)
"""

from __future__ import annotations

import logging
import warnings
from pathlib import Path
from typing import TYPE_CHECKING

from mpsearch.config import StudyConfig
from mpsearch.errors import ConfigError

if TYPE_CHECKING:
    import optuna

log = logging.getLogger(__name__)

STORAGE_FILE = "optuna.db"


def storage_url(cfg: StudyConfig) -> str:
    if cfg.search.storage:
        return cfg.search.storage
    return f"sqlite:///{(cfg.study_dir / STORAGE_FILE).resolve()}"


def open_storage(cfg: StudyConfig, heartbeat: bool = False, read_only: bool = False) -> optuna.storages.RDBStorage:
    """The RDB storage; with `heartbeat`, trials silent for `search.heartbeat_seconds` count as stale and
    their points are enqueued again (a killed process's trial is run again, never a finished one).
    `read_only` creates nothing: no study folder, no SQLite file, no tables (an error if none exist)."""
    import optuna
    from sqlalchemy.exc import SQLAlchemyError

    from mpsearch.search.runs import requeue_stale

    url = storage_url(cfg)
    if read_only:
        _require_stored(cfg, url)
    else:
        Path(cfg.study_dir).mkdir(parents=True, exist_ok=True)
    kwargs = {"skip_table_creation": True} if read_only else {}
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    if heartbeat:
        interval = max(1, cfg.search.heartbeat_seconds // 3)
        kwargs.update(heartbeat_interval=interval, grace_period=cfg.search.heartbeat_seconds,
                      heartbeat_stale_trial_callback=requeue_stale)
    try:
        storage = optuna.storages.RDBStorage(url, engine_kwargs=_engine_kwargs(url), **kwargs)
    except (SQLAlchemyError, ValueError, ImportError, RuntimeError) as exc:  # RuntimeError: an older schema
        raise ConfigError(f"Cannot open the trial storage '{url}' ({str(exc).splitlines()[0]}); check "
                          "search.storage (a SQLAlchemy URL) or remove it to use SQLite in the study folder.") from None
    if storage.engine.dialect.name == "sqlite" and not read_only:
        serialise_sqlite_transactions(storage.engine)
    return storage


def serialise_sqlite_transactions(engine) -> None:
    """Make each transaction on a SQLite engine take the write lock when it begins (BEGIN IMMEDIATE).

    Optuna hands an enqueued trial to a worker by reading that it is WAITING and then writing RUNNING,
    relying on SELECT ... FOR UPDATE, which SQLite ignores; and Python's sqlite3 opens a transaction
    only at the first write, so two workers (threads of `search.workers`, or two search processes on one
    file) can both read WAITING and both run the same trial: the second one to finish then fails with
    "Cannot tell a COMPLETE trial". Begun IMMEDIATE, the second reader waits for the first to commit and
    reads RUNNING. The SQLAlchemy recipe for SQLite transactions: the driver's own BEGIN is turned off
    and the engine issues the BEGIN."""
    from sqlalchemy import event

    @event.listens_for(engine, "connect")
    def _driver_begins_nothing(dbapi_connection, _record) -> None:
        dbapi_connection.isolation_level = None

    @event.listens_for(engine, "begin")
    def _begin_immediate(connection) -> None:
        connection.exec_driver_sql("BEGIN IMMEDIATE")

    engine.dispose()  # connections pooled while the storage was created predate the listeners


def _require_stored(cfg: StudyConfig, url: str) -> None:
    """Reading a SQLite file that does not exist would create it, empty; say that nothing ran instead."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    try:
        parsed = make_url(url)
    except ArgumentError:
        return  # open_storage names the malformed URL
    if parsed.get_backend_name() == "sqlite" and parsed.database not in (None, "", ":memory:") \
            and not Path(parsed.database).is_file():
        raise ConfigError(_nothing_stored(cfg, url))


def _nothing_stored(cfg: StudyConfig, url: str) -> str:
    return f"No trials stored for study '{cfg.name}' in {url}; run `mpsearch search` on the study first."


def load_trials_study(cfg: StudyConfig) -> optuna.Study:
    """The stored Optuna study, for reading (front, export); an error if no search has run yet. Reading
    creates nothing in the storage or the study folder."""
    import optuna
    from sqlalchemy.exc import SQLAlchemyError

    storage = open_storage(cfg, read_only=True)
    try:
        return optuna.load_study(study_name=cfg.name, storage=storage)
    except (KeyError, SQLAlchemyError):  # no such study, or no Optuna tables at all
        raise ConfigError(_nothing_stored(cfg, storage_url(cfg))) from None


def _engine_kwargs(url: str) -> dict:
    # Several Ray workers or a resumed process may write at once: wait for SQLite's lock, don't fail.
    return {"connect_args": {"timeout": 60}} if url.startswith("sqlite") else {}


STOPPED_WITHOUT_RESULT = ("stopped without a result: its process was killed or stopped sending heartbeats, "
                          "and the point was queued again")


def fail_reason(trial: optuna.trial.FrozenTrial) -> str | None:
    """Why a FAIL trial failed; None for any other state."""
    if trial.state.name != "FAIL":
        return None
    return trial.user_attrs.get("fail_reason", STOPPED_WITHOUT_RESULT)
