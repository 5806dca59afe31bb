import json
import math

import numpy as np
import pytest
import torch

from mpsearch.config import SensitivityConfig
from mpsearch.sensitivity import (
    SensitivityReport,
    format_sensitivity_table,
    hessian_traces,
    plot_traces,
    report_key,
)
from mpsearch.sensitivity.report import SensitivityReportError


@pytest.fixture
def report(rnnt_case):
    model, batch = rnnt_case
    return hessian_traces(model, [batch], SensitivityConfig(batches=1, min_probes=3, max_probes=3, bits=[2, 4, 8],
                                                            methods=["uniform", "lsq"]))


def test_round_trip_through_json(report, tmp_path):
    path = tmp_path / "sensitivity.json"
    report.save(path)
    data = json.loads(path.read_text())
    assert data["_type"] == "mpsearch.SensitivityReport" and data["settings"]["backend"] == "hutchinson"
    loaded = SensitivityReport.load(path)
    assert loaded == report
    assert loaded.omega_for("lsq").keys() == set(report.sites)
    assert loaded.bits == [2, 4, 8] and loaded.methods == ["lsq", "uniform"]


def test_infinite_errors_survive_json(report, tmp_path):
    report.stderrs[0] = math.inf
    report.save(tmp_path / "r.json")
    assert SensitivityReport.load(tmp_path / "r.json").stderrs[0] == math.inf


def test_bad_files_are_named_errors(tmp_path):
    with pytest.raises(SensitivityReportError, match="does not exist"):
        SensitivityReport.load(tmp_path / "missing.json")
    (tmp_path / "x.json").write_text('{"_type": "other"}')
    with pytest.raises(SensitivityReportError, match="not a sensitivity report"):
        SensitivityReport.load(tmp_path / "x.json")


def test_key_follows_weights_and_settings(rnnt_case):
    model, _ = rnnt_case
    cfg = SensitivityConfig()
    key = report_key(model, cfg)
    assert report_key(model, SensitivityConfig()) == key
    assert report_key(model, SensitivityConfig(tol=0.1)) != key
    with torch.no_grad():
        model.joiner.out.weight[0, 0] += 1e-6
    assert report_key(model, cfg) != key


def test_table_and_plot(report, tmp_path):
    table = format_sensitivity_table(report, "lsq")
    assert all(site in table for site in report.sites) and "Ω@2" in table and "total trace" in table
    with pytest.raises(SensitivityReportError, match="no Omega for method 'gq'"):
        format_sensitivity_table(report, "gq")
    plot_traces(report, tmp_path / "traces.png")
    assert (tmp_path / "traces.png").read_bytes()[:4] == b"\x89PNG"


def test_report_totals(report):
    assert report.total_trace == pytest.approx(sum(report.traces))
    assert np.isfinite(report.total_stderr) and report.total_stderr > 0


def test_report_feeds_the_bit_allocation(report, rnnt_case):
    from mpsearch.quant import find_sites
    from mpsearch.search.ilp import allocate_bits

    model, _ = rnnt_case
    sites = find_sites(model)
    allocation = allocate_bits(sites, report.omega_for("uniform"), report.bits, {"avg_bits": 5.0})
    allocation.policy.validate(sites)
    assert allocation.avg_bits <= 5.0 + 1e-9 and set(allocation.bits.values()) <= {2, 4, 8}
