import itertools
import logging

import pytest
import torch

from mpsearch.errors import RegistryError
from mpsearch.quant import find_sites
from mpsearch.sensitivity import omega_table, quantization_error
from mpsearch.sensitivity.omega import omega_by_site

BITS = [2, 3, 4, 5, 6, 8]


@pytest.mark.parametrize("method", ["uniform", "lsq"])
def test_omega_grows_as_bits_shrink(rnnt_case, method):
    model, _ = rnnt_case
    sites = find_sites(model)
    records = omega_table(model, sites, [1.0] * len(sites), [method], BITS)
    table = omega_by_site(records, method)
    assert set(table) == {s.name for s in sites}
    for site, row in table.items():
        values = [row[b] for b in BITS]
        assert all(a > b for a, b in itertools.pairwise(values)), (site, values)


def test_omega_is_mean_curvature_times_quantization_error(rnnt_case):
    model, _ = rnnt_case
    site = find_sites(model)[0]
    weight = dict(model.named_modules())[site.module].weight
    (record,) = omega_table(model, [site], [12.0], ["uniform"], [4])
    error = quantization_error(weight, "uniform", 4)
    # per-channel symmetric 4 bits: the error of each weight is at most half a step
    step = weight.detach().abs().flatten(1).amax(1) / 7
    assert 0 < error <= float(((step / 2) ** 2 * weight[0].numel()).sum()) + 1e-12
    assert record.omega == pytest.approx(12.0 / site.numel * error)
    assert record.quant_error == pytest.approx(error) and record.trace == 12.0


def test_a_negative_trace_scores_as_insensitive(rnnt_case, caplog):
    model, _ = rnnt_case
    sites = find_sites(model)[:2]
    with caplog.at_level(logging.WARNING):
        records = omega_table(model, sites, [-3.0, 1.0], ["uniform"], [2, 8])
    assert [r.omega for r in records if r.site == sites[0].name] == [0.0, 0.0]
    assert all(r.omega > 0 for r in records if r.site == sites[1].name)
    assert sites[0].name in caplog.text


def test_an_unknown_method_lists_the_registered_ones(rnnt_case):
    model, _ = rnnt_case
    sites = find_sites(model)
    with pytest.raises(RegistryError, match="uniform"):
        omega_table(model, sites, [1.0] * len(sites), ["nope"], [4])


def test_quantization_error_vanishes_for_weights_on_the_grid():
    weight = torch.tensor([[-1.0, 0.0, 1.0, 0.5]])  # per-channel scale 1/7 at 4 bits: 0.5 is off grid
    assert quantization_error(weight, "uniform", 8) < quantization_error(weight, "uniform", 4)
    assert quantization_error(torch.tensor([[-1.0, 0.0, 1.0]]), "uniform", 2) == 0.0


@pytest.mark.parametrize("method", ["admm", "s8bqat", "gq"])
def test_methods_that_train_in_float_are_scored_at_their_deployed_weight(method):
    weight = torch.randn(16, 32, generator=torch.Generator().manual_seed(0))
    assert quantization_error(weight, method, 3) > 0.0
