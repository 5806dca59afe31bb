"""What every trace estimator produces (TraceEstimate), its running statistics, and the step that turns
an estimate into a SensitivityReport (Omega table and key added)."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import numpy as np
from torch import nn

from mpsearch.config import SensitivityConfig
from mpsearch.quant.sites import Site
from mpsearch.sensitivity.omega import omega_table
from mpsearch.sensitivity.report import SensitivityReport, report_key


class SampleLog:
    """Every probe's per-site samples, for means, standard errors and the error of their sum.

    A site may stop being sampled (`add` with a mask) and then stays stopped, so site l holds samples
    from the first `counts[l]` probes. Samples of different sites from one probe are correlated (they
    share the probe's cross terms), which the total's standard error accounts for.
    """

    def __init__(self, n_sites: int) -> None:
        self.counts = np.zeros(n_sites, dtype=np.int64)
        self._rows: list[np.ndarray] = []

    def add(self, sample: np.ndarray, mask: np.ndarray | None = None) -> None:
        """Record one probe's samples for the sites where `mask` is True (all when None)."""
        mask = np.ones(len(self.counts), dtype=bool) if mask is None else mask
        self.counts += mask
        self._rows.append(np.where(mask, sample, np.nan))

    @property
    def samples(self) -> np.ndarray:
        """(probes, sites), NaN where a site was not sampled."""
        return np.array(self._rows).reshape(len(self._rows), len(self.counts))

    @property
    def mean(self) -> np.ndarray:
        x = self.samples
        return np.where(self.counts > 0, np.nansum(x, axis=0) / np.maximum(self.counts, 1), 0.0)

    @property
    def stderr(self) -> np.ndarray:
        """sqrt(sample variance / count) per site; inf below two samples."""
        x, n = self.samples, self.counts
        squares = np.nansum((x - self.mean) ** 2, axis=0)
        with np.errstate(divide="ignore", invalid="ignore"):
            err = np.sqrt(squares / ((n - 1) * n))
        return np.where(n >= 2, err, math.inf)

    @property
    def rel_stderr(self) -> np.ndarray:
        """stderr / |mean|; 0 where both are 0 (a site the loss is linear in), inf where only the mean is."""
        err, size = self.stderr, np.abs(self.mean)
        with np.errstate(divide="ignore", invalid="ignore"):
            return np.where(size > 0, err / size, np.where(err == 0, 0.0, math.inf))

    def converged(self, tol: float, min_count: int = 2) -> np.ndarray:
        """Per site: at least `min_count` samples and a relative standard error below `tol`."""
        return (self.counts >= max(min_count, 2)) & (self.rel_stderr < tol)

    def columns(self, index: list[int]) -> SampleLog:
        """A log of the given sites (a site may repeat), sharing these samples."""
        log = SampleLog(len(index))
        log.counts = self.counts[index].copy()
        log._rows = [row[index] for row in self._rows]
        return log

    def total_stderr(self) -> float:
        """Standard error of the sum of the site means, covariances included:
        Cov(mean_l, mean_m) = min(n_l, n_m) / (n_l n_m) * cov(sample_l, sample_m)."""
        x, n = self.samples, self.counts
        if len(n) == 0:
            return 0.0
        if n.min() < 2:
            return math.inf
        variance = 0.0
        for l in range(len(n)):
            for m in range(l, len(n)):
                k = int(min(n[l], n[m]))
                a, b = x[:k, l], x[:k, m]
                cov = float(((a - a.mean()) * (b - b.mean())).sum() / (k - 1))
                variance += (1 if l == m else 2) * k / (n[l] * n[m]) * cov
        return math.sqrt(max(variance, 0.0))


@dataclass
class TraceEstimate:
    """Per-site Hessian trace estimates with their standard errors and the probes each took."""

    sites: list[Site]
    traces: list[float]
    stderrs: list[float]
    probes: list[int]
    total_stderr: float
    batches: int
    converged: bool


def finish_report(model: nn.Module, estimate: TraceEstimate, cfg: SensitivityConfig, backend: str,
                  started: float) -> SensitivityReport:
    """The report of `estimate`: Omega for cfg.methods x cfg.bits, settings, wall time and key."""
    cfg = cfg.model_copy(update={"backend": backend})  # the backend that ran, whatever cfg asked for
    omega = omega_table(model, estimate.sites, estimate.traces, cfg.methods, cfg.bits)
    return SensitivityReport(
        sites=[s.name for s in estimate.sites],
        numel=[s.numel for s in estimate.sites],
        traces=list(estimate.traces),
        stderrs=list(estimate.stderrs),
        probes=list(estimate.probes),
        total_stderr=estimate.total_stderr,
        omega=omega,
        settings={**cfg.to_dict(), "batches_used": estimate.batches},
        seconds=round(time.monotonic() - started, 3),
        key=report_key(model, cfg),
        converged=estimate.converged,
    )
