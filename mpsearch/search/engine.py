"""The trials stage: the warm starts and the trials on the chosen backend, until the study's storage
holds the requested number of complete trials. Backends are a registry: the name in `search.backend`
or `--backend` picks one, and an unknown name lists the valid ones."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TYPE_CHECKING

from mpsearch.errors import ConfigError
from mpsearch.registry import Registry

if TYPE_CHECKING:
    import optuna

    from mpsearch.config import StudyConfig
    from mpsearch.search.objective import TrialRunner
    from mpsearch.search.warm_start import WarmStart
    from mpsearch.space import SearchSpace

log = logging.getLogger(__name__)


class OptunaBackend:
    """Trials in this process (`workers` threads), evaluated by the study's TrialRunner."""

    def check(self, address: str | None) -> None:
        if address:
            raise ConfigError("--address names a Ray cluster; use it with --backend ray.")

    def run(self, cfg: StudyConfig, space: SearchSpace, starts: list[WarmStart], runner: Callable[[], TrialRunner],
            *, trials: int, workers: int | str, address: str | None, progress: bool) -> optuna.Study:
        from mpsearch.search.optuna_backend import run_optuna

        return run_optuna(cfg, space, starts, runner().run, trials=trials, workers=workers, progress=progress)


class RayBackend:
    """Trials on Ray Tune workers, each building its TrialRunner from the study config (ray_backend.py)."""

    def check(self, address: str | None) -> None:
        import mpsearch.search.ray_backend  # noqa: F401  (says how to install Ray when it is missing)

        if address:
            from mpsearch.search.ray_address import check_address

            check_address(address)

    def run(self, cfg: StudyConfig, space: SearchSpace, starts: list[WarmStart], runner: Callable[[], TrialRunner],
            *, trials: int, workers: int | str, address: str | None, progress: bool) -> optuna.Study:
        from mpsearch.search.ray_backend import run_ray

        return run_ray(cfg, space, starts, trials=trials, workers=workers, address=address, progress=progress)


BACKENDS: Registry[OptunaBackend | RayBackend] = Registry("search backend")
BACKENDS.register("optuna")(OptunaBackend())
BACKENDS.register("ray")(RayBackend())


def check_before_work(cfg: StudyConfig, space: SearchSpace, backend: str, address: str | None) -> None:
    """Everything the search will need that the user may have got wrong, checked before the baseline,
    sensitivity and trials spend minutes to hours: the backend and, for Ray, the cluster's address and
    that Ray is installed; the hardware profile; the trial storage (its URL, that it opens, that a stored
    study has the same objectives and space)."""
    import optuna

    from mpsearch.hardware import load_profile
    from mpsearch.search.optuna_backend import open_study

    BACKENDS.get(backend).check(address)
    load_profile(cfg.hardware.profile)
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # the backends log what they do with the study
    open_study(cfg, space, heartbeat=False)


def run_trials(cfg: StudyConfig, space: SearchSpace, starts: list[WarmStart], runner: Callable[[], TrialRunner], *,
               backend: str, trials: int, workers: int | str = 1, address: str | None = None,
               progress: bool = False) -> optuna.Study:
    """Run (or continue) the trials on `backend`; `runner()` gives the TrialRunner of an in-process backend.
    Returns the Optuna study holding every trial."""
    log.info("search space: %d parameters, %d points; %d warm-start trials; %d trials on %s",
             len(space.parameters()), space.size(), len(starts), trials, backend)
    return BACKENDS.get(backend).run(cfg, space, starts, runner, trials=trials, workers=workers, address=address,
                                     progress=progress)
