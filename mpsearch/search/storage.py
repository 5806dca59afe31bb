"""The study's trial record: an Optuna RDB storage (SQLite in the study folder unless `search.storage`
names another SQLAlchemy URL). Search algorithms never write result files; everything downstream (the
front, export) reads from here.

What every trial carries (both backends):
  values                 one per `search.objectives`, in order, all minimised
  params                 the SearchSpace parameters (`<group>.<field>`)
  user_attrs["metrics"]  wer, cer, test_wer, test_cer, latency_ms, size_bytes, avg_weight_bits, seconds
  user_attrs["policy"]   the Policy as `Policy.to_dict()` (so export needs neither model nor space)
  user_attrs["origin"]   "uniform-<bits>", "ilp-<i>", "supernet-<lambda>" or "sampler"
  user_attrs["fail_reason"]  on a FAIL trial: why (NaN loss, the exception's message); a trial failed
                         by Optuna's heartbeat check has none (a finished trial cannot be written to),
                         `fail_reason()` says why for it
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


def open_storage(cfg: StudyConfig, heartbeat: bool = False) -> optuna.storages.RDBStorage:
    """The RDB storage; with `heartbeat`, trials silent for `search.heartbeat_seconds` count as stale and
    are re-enqueued once (a killed process's trial is run again, never a finished one)."""
    import optuna
    from sqlalchemy.exc import SQLAlchemyError

    Path(cfg.study_dir).mkdir(parents=True, exist_ok=True)
    kwargs = {}
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    if heartbeat:
        interval = max(1, cfg.search.heartbeat_seconds // 3)
        kwargs = {"heartbeat_interval": interval, "grace_period": cfg.search.heartbeat_seconds,
                      "heartbeat_stale_trial_callback": optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=2)}
    url = storage_url(cfg)
    try:
        return optuna.storages.RDBStorage(url, engine_kwargs=_engine_kwargs(url), **kwargs)
    except (SQLAlchemyError, ValueError, ImportError) as exc:
        raise ConfigError(f"Cannot open the trial storage '{url}' ({str(exc).splitlines()[0]}); check "
                          "search.storage (a SQLAlchemy URL) or remove it to use SQLite in the study folder.") from None


def load_trials_study(cfg: StudyConfig) -> optuna.Study:
    """The stored Optuna study, for reading (front, export); an error if no search has run yet."""
    import optuna

    storage = open_storage(cfg)
    try:
        return optuna.load_study(study_name=cfg.name, storage=storage)
    except KeyError:
        raise ConfigError(f"No trials stored for study '{cfg.name}' in {storage_url(cfg)}; "
                          f"run `mpsearch search` on the study first.") from None


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
