"""The study's sensitivity stage: sensitivity.json and sensitivity.png in the study folder, reused while
the baseline's weights and the sensitivity settings are unchanged (the report's key says so)."""

from __future__ import annotations

import itertools
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from torch import nn

from mpsearch.artifacts import cached
from mpsearch.config import SensitivityConfig
from mpsearch.sensitivity.backends import BACKENDS
from mpsearch.sensitivity.report import SensitivityReport, plot_traces, report_key

if TYPE_CHECKING:  # the study sits above this package; only its interface is used here
    from mpsearch.study import Study

log = logging.getLogger(__name__)

REPORT_FILE = "sensitivity.json"
PLOT_FILE = "sensitivity.png"


def ensure_sensitivity(study: Study, backend: str | None = None) -> SensitivityReport:
    """The study's sensitivity report: loaded when its key matches, else computed and written.

    `backend` overrides `study.cfg.sensitivity.backend`. The float baseline is trained first if the
    study has none yet.
    """
    cfg: SensitivityConfig = study.cfg.sensitivity
    if backend is not None:
        BACKENDS.get(backend)
        cfg = cfg.model_copy(update={"backend": backend})
    path, plot = Path(study.dir) / REPORT_FILE, Path(study.dir) / PLOT_FILE
    model, _ = study.baseline()

    def compute() -> SensitivityReport:
        use_twice_differentiable_loss(model)
        report = BACKENDS.get(cfg.backend)(model, _sensitivity_batches(study, model, cfg), cfg,
                                           progress=getattr(study, "progress", False))
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


def _sensitivity_batches(study: Study, model: nn.Module, cfg: SensitivityConfig) -> Iterator[Any]:
    """`cfg.batches` training batches, without augmentation, drawn in a seeded shuffled order (the first
    batches in length order would hold only the shortest utterances)."""
    if getattr(model, "kind", None) == "lm":
        return itertools.islice(study.task(model, augment=False).train_batches(cfg.seed), cfg.batches)
    frames = cfg.max_batch_frames or study.cfg.data.max_batch_frames
    return itertools.islice(study.data.train.batches(frames, shuffle=True, seed=cfg.seed), cfg.batches)
