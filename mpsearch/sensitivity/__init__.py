"""Sensitivity: per-site Hessian traces (Hutchinson) -> Omega table -> SensitivityReport (JSON).

`hessian_traces(model, batches, cfg)` is the entry point; `BACKENDS` maps `sensitivity.backend` names to
estimators (the PyHessian one imports pyhessian only when it runs).
"""

from mpsearch.sensitivity.backends import BACKENDS
from mpsearch.sensitivity.hutchinson import hessian_traces
from mpsearch.sensitivity.loss import SensitivityError, batch_loss
from mpsearch.sensitivity.omega import OmegaRecord, omega_table, quantization_error
from mpsearch.sensitivity.report import SensitivityReport, format_sensitivity_table, plot_traces, report_key

__all__ = [
    "BACKENDS",
    "OmegaRecord",
    "SensitivityError",
    "SensitivityReport",
    "batch_loss",
    "format_sensitivity_table",
    "hessian_traces",
    "omega_table",
    "plot_traces",
    "quantization_error",
    "report_key",
]
