"""The search stage: the stages it needs (baseline, sensitivity, warm starts), then the trials on the
chosen backend, until the study's storage holds the requested number of complete trials."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from mpsearch.errors import ConfigError

if TYPE_CHECKING:
    import optuna

    from mpsearch.search.space import SearchSpace
    from mpsearch.study import Study

log = logging.getLogger(__name__)

BACKENDS = ("optuna", "ray")


def run_search(study: Study, backend: str | None = None, trials: int | None = None, workers: int | None = None,
               address: str | None = None) -> optuna.Study:
    """Run (or continue) the study's search; returns the Optuna study holding every trial."""
    cfg = study.cfg.search
    backend = backend or cfg.backend
    if backend not in BACKENDS:
        raise ConfigError(f"Unknown search backend '{backend}'; valid choices: {', '.join(BACKENDS)}.")
    if address and backend != "ray":
        raise ConfigError("--address names a Ray cluster; use it with --backend ray.")
    trials = trials or cfg.trials
    workers = workers or cfg.workers
    address = address or cfg.address
    space = study.search_space()
    check_before_work(study, space, backend, address)
    study.baseline()
    from mpsearch.search.warm_start import warm_starts

    starts = warm_starts(study, space)
    log.info("search space: %d parameters, %d points; %d warm-start trials; %d trials on %s",
             len(space.parameters()), space.size(), len(starts), trials, backend)
    if backend == "ray":
        from mpsearch.search.ray_backend import run_ray

        return run_ray(study.cfg, space, starts, trials=trials, workers=workers, address=address,
                       progress=study.progress)
    from mpsearch.search.objective import TrialRunner
    from mpsearch.search.optuna_backend import run_optuna

    runner = TrialRunner(study)
    return run_optuna(study.cfg, space, starts, runner.run, trials=trials, workers=workers, progress=study.progress)


def check_before_work(study: Study, space: SearchSpace, backend: str, address: str | None) -> None:
    """Everything the search will need that the user may have got wrong, checked before the baseline,
    sensitivity and trials spend minutes to hours: the hardware profile, the trial storage (its URL, that
    it opens, that a stored study has the same objectives and space) and, for Ray, the cluster's address
    and that Ray is installed."""
    import optuna

    from mpsearch.hardware import load_profile
    from mpsearch.search.optuna_backend import open_study

    load_profile(study.cfg.hardware.profile)
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # the backends log what they do with the study
    open_study(study.cfg, space, heartbeat=False)
    if backend == "ray":
        import mpsearch.search.ray_backend  # noqa: F401  (says how to install Ray when it is missing)

        if address:
            from mpsearch.search.ray_address import check_address

            check_address(address)
