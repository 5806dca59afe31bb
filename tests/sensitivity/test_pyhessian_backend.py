import builtins
import math

import numpy as np
import pytest

from mpsearch.config import SensitivityConfig
from mpsearch.quant import find_sites
from mpsearch.sensitivity import SensitivityError, hessian_traces, pyhessian_backend


def test_missing_pyhessian_names_the_extra_and_the_license(monkeypatch, mlp_case):
    real_import = builtins.__import__

    def no_pyhessian(name, *args, **kwargs):
        if name == "pyhessian" or name.startswith("pyhessian."):
            raise ImportError("No module named 'pyhessian'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_pyhessian)
    model, batches = mlp_case
    with pytest.raises(SensitivityError, match=r"mpsearch\[hessian\].*GPL-3.0"):
        pyhessian_backend.pyhessian_traces(model, batches, SensitivityConfig())


def test_sum_of_site_traces_agrees_with_pyhessian(rnnt_case):
    pytest.importorskip("pyhessian")
    model, batch = rnnt_case
    ours = hessian_traces(model, [batch], SensitivityConfig(batches=1, min_probes=150, max_probes=150, tol=1e-9))
    theirs, error, probes = pyhessian_backend.pyhessian_total_trace(model, [batch], max_probes=150, tol=-math.inf,
                                                                    seed=7)
    assert probes == 150
    combined = np.hypot(ours.total_stderr, error)
    assert abs(ours.total_trace - theirs) <= 3 * combined, (ours.total_trace, theirs, combined)
    # the same estimator of the same trace: errors of one size
    assert 0.5 < ours.total_stderr / error < 2.0


def test_pyhessian_backend_gives_a_full_report(mlp_case):
    pytest.importorskip("pyhessian")
    model, batches = mlp_case
    cfg = SensitivityConfig(batches=2, max_probes=40, tol=1e-3, bits=[4, 8])
    report = pyhessian_backend.pyhessian_traces(model.float(), [tuple(t.float() for t in b) for b in batches], cfg)
    assert report.settings["backend"] == "pyhessian" and report.sites == [s.name for s in find_sites(model)]
    assert all(2 <= p <= 40 for p in report.probes) and np.all(np.isfinite(report.traces))
    assert {r.bits for r in report.omega} == {4, 8}
    assert all(p.grad is None for p in model.parameters())
