"""The sensitivity stage: sensitivity.json and sensitivity.png in the study folder, reused while the
baseline's weights and the sensitivity settings are unchanged (the report's key says so)."""

from __future__ import annotations

import copy
import itertools
import logging
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from torch import nn

from mpsearch.artifacts import cached
from mpsearch.config import SensitivityConfig
from mpsearch.sensitivity.backends import BACKENDS
from mpsearch.sensitivity.loss import LossFn, batch_loss
from mpsearch.sensitivity.report import SensitivityReport, plot_traces, report_key

log = logging.getLogger(__name__)

REPORT_FILE = "sensitivity.json"
PLOT_FILE = "sensitivity.png"


def ensure_sensitivity(folder: str | Path, model: nn.Module, batches: Callable[[int], Iterable[Any]],
                       cfg: SensitivityConfig, progress: bool = False,
                       loss_fn: LossFn | None = None) -> SensitivityReport:
    """The sensitivity report of the float `model` (left unchanged) in `folder`: loaded when its key
    matches, else computed on the first `cfg.batches` of `batches(cfg.seed)` (unaugmented training
    batches, as `loss_fn(model, batch)` takes them; default the model's forward) and written with its plot."""
    path, plot = Path(folder) / REPORT_FILE, Path(folder) / PLOT_FILE

    def compute() -> SensitivityReport:
        probe = copy.deepcopy(model)
        use_twice_differentiable_loss(probe)
        report = BACKENDS.get(cfg.backend)(probe, itertools.islice(batches(cfg.seed), cfg.batches), cfg,
                                           progress=progress, loss_fn=loss_fn or batch_loss)
        report.save(path)
        plot_traces(report, plot)
        log.info("wrote %s and %s (%.1f s)", path, plot, report.seconds)
        return report

    report = cached(path, report_key(model, cfg), compute, _load_report)
    if not plot.is_file():
        plot_traces(report, plot)
    return report


def _load_report(path: Path) -> tuple[str, SensitivityReport]:
    report = SensitivityReport.load(path)
    return report.key, report


def use_twice_differentiable_loss(model: nn.Module) -> None:
    """Switch a model whose config offers `ctc_impl` to the pure-PyTorch CTC loss (same values,
    double backward supported); other models are left as they are."""
    config = getattr(model, "config", None)
    fields = getattr(type(config), "model_fields", {})
    if "ctc_impl" in fields and config.ctc_impl != "pure":
        model.config = config.model_copy(update={"ctc_impl": "pure"})
        log.info("using the pure-PyTorch CTC loss for second derivatives")
