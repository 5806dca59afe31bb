"""Optuna samplers by the names `search.sampler` takes: each entry is (seed, number of objectives) ->
a sampler. Optuna is imported only when a sampler is made."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from mpsearch.registry import Registry

if TYPE_CHECKING:
    import optuna

SAMPLERS: Registry[Callable[[int, int], optuna.samplers.BaseSampler]] = Registry("sampler")


@SAMPLERS.register("nsga2")
def nsga2(seed: int, n_objectives: int) -> optuna.samplers.BaseSampler:
    import optuna

    # NSGA-II's default population (50) is more trials than a CPU study runs; a small one lets
    # selection start after the warm-start generation.
    return optuna.samplers.NSGAIISampler(seed=seed, population_size=8 if n_objectives <= 2 else 12)


@SAMPLERS.register("tpe")
def tpe(seed: int, n_objectives: int) -> optuna.samplers.BaseSampler:
    import optuna

    return optuna.samplers.TPESampler(seed=seed, multivariate=True)


@SAMPLERS.register("random")
def random(seed: int, n_objectives: int) -> optuna.samplers.BaseSampler:
    import optuna

    return optuna.samplers.RandomSampler(seed=seed)


@SAMPLERS.register("gp")
def gp(seed: int, n_objectives: int) -> optuna.samplers.BaseSampler:
    import optuna

    return optuna.samplers.GPSampler(seed=seed)
