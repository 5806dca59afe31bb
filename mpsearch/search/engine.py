"""The search stage: the stages it needs (baseline, sensitivity, warm starts), then the trials on the
chosen backend, until the study's storage holds the requested number of complete trials."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from mpsearch.errors import ConfigError

if TYPE_CHECKING:
    import optuna

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
    trials = trials or cfg.trials
    workers = workers or cfg.workers
    space = study.search_space()
    study.baseline()
    from mpsearch.search.warm_start import warm_starts

    starts = warm_starts(study, space)
    log.info("search space: %d parameters, %d points; %d warm-start trials; %d trials on %s",
             len(space.parameters()), space.size(), len(starts), trials, backend)
    if backend == "ray":
        from mpsearch.search.ray_backend import run_ray

        return run_ray(study.cfg, space, starts, trials=trials, workers=workers,
                       address=address or cfg.address, progress=study.progress)
    if address:
        raise ConfigError("--address names a Ray cluster; use it with --backend ray.")
    from mpsearch.search.objective import TrialRunner
    from mpsearch.search.optuna_backend import run_optuna

    runner = TrialRunner(study)
    return run_optuna(study.cfg, space, starts, runner.run, trials=trials, workers=workers, progress=study.progress)
