"""Sensitivity backends by the name `sensitivity.backend` uses; each is
`(model, batches, cfg, *, sites, loss_fn, progress) -> SensitivityReport`."""

from __future__ import annotations

from collections.abc import Callable

from mpsearch.registry import Registry
from mpsearch.sensitivity.hutchinson import hessian_traces
from mpsearch.sensitivity.pyhessian_backend import pyhessian_traces
from mpsearch.sensitivity.report import SensitivityReport

BACKENDS: Registry[Callable[..., SensitivityReport]] = Registry("sensitivity backend")
BACKENDS.register("hutchinson")(hessian_traces)
BACKENDS.register("pyhessian")(pyhessian_traces)  # imports pyhessian only when it runs
