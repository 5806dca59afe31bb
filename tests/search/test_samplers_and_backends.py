"""The sampler and search-backend registries: every name builds, an unknown name lists the valid ones."""

import optuna
import pytest

from mpsearch.errors import MpsearchError
from mpsearch.search.engine import BACKENDS
from mpsearch.search.optuna_backend import make_sampler
from mpsearch.search.samplers import SAMPLERS


@pytest.mark.parametrize("name", SAMPLERS.names())
def test_every_sampler_builds_seeded(name):
    assert isinstance(make_sampler(name, seed=3, n_objectives=2), optuna.samplers.BaseSampler)


def test_nsga2_population_grows_with_the_objectives():
    assert make_sampler("nsga2", 0, 2)._population_size == 8
    assert make_sampler("nsga2", 0, 3)._population_size == 12


def test_unknown_names_list_the_valid_ones():
    with pytest.raises(MpsearchError, match="valid choices: gp, nsga2, random, tpe"):
        make_sampler("cmaes", 0)
    with pytest.raises(MpsearchError, match="valid choices: optuna, ray"):
        BACKENDS.get("dask")


def test_the_optuna_backend_refuses_a_ray_address():
    with pytest.raises(MpsearchError, match="--address names a Ray cluster"):
        BACKENDS.get("optuna").check("auto")
