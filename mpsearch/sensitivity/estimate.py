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

    Why segments: a site's sample carries cross terms with every other site probed at the same time,
    so once high-curvature sites converge and stop being probed, the remaining sites' samples get much
    less noisy. Pooling all of a site's samples into one plain mean would keep the early noise in its
    error for ever. Instead each site's samples are cut into segments where the set of probed sites
    changed or the probe design did (`new_segment`, e.g. deflation) (each segment at least `min_segment` samples, so its variance is estimated from enough
    samples) and the segment means are combined by inverse-variance weights. With one segment this is
    the plain mean and its standard error.
    """

    def __init__(self, n_sites: int, min_segment: int = 8) -> None:
        self.counts = np.zeros(n_sites, dtype=np.int64)
        self.min_segment = max(int(min_segment), 2)
        self._rows: list[np.ndarray] = []
        self._epochs: list[int] = []  # which set of probed sites each row was drawn under
        self._mask: np.ndarray | None = None
        self._new_design = False
        self._cache: tuple[int, tuple[np.ndarray, ...]] | None = None

    def add(self, sample: np.ndarray, mask: np.ndarray | None = None) -> None:
        """Record one probe's samples for the sites where `mask` is True (all when None)."""
        mask = np.ones(len(self.counts), dtype=bool) if mask is None else np.asarray(mask, dtype=bool)
        changed = self._mask is not None and (self._new_design or not np.array_equal(mask, self._mask))
        self._new_design = False
        self._epochs.append((self._epochs[-1] + changed) if self._epochs else 0)
        self._mask = mask.copy()
        self.counts += mask
        self._rows.append(np.where(mask, sample, np.nan))

    def new_segment(self) -> None:
        """The next samples come from another probe design (same expectation, other variance)."""
        self._new_design = True

    @property
    def samples(self) -> np.ndarray:
        """(probes, sites), NaN where a site was not sampled."""
        return np.array(self._rows).reshape(len(self._rows), len(self.counts))

    @property
    def mean(self) -> np.ndarray:
        return self._estimates()[0]

    @property
    def stderr(self) -> np.ndarray:
        """Standard error of each site's estimate; inf below two samples."""
        return self._estimates()[1]

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
        log = SampleLog(len(index), self.min_segment)
        log.counts = self.counts[index].copy()
        log._rows = [row[index] for row in self._rows]
        log._epochs = list(self._epochs)
        return log

    def total_stderr(self) -> float:
        """Standard error of the sum of the site estimates, covariances between sites included.

        Each estimate is linear in the samples, est_l = sum_i c_il x_il, and probes are independent, so
        Var(sum_l est_l) = sum_i sum_lm c_il c_im sd_il sd_im corr_lm, with sd from each sample's
        segment and corr_lm the correlation of sites l and m over the probes that sampled both.
        """
        if len(self.counts) == 0:
            return 0.0
        if self.counts.min() < 2:
            return math.inf
        _, _, coef, spread = self._estimates()
        weighted = coef * spread  # (probes, sites), 0 where a site was not sampled
        return math.sqrt(max(float(((weighted @ self._correlation()) * weighted).sum()), 0.0))

    def _correlation(self) -> np.ndarray:
        x = self.samples
        n_sites = x.shape[1]
        corr = np.eye(n_sites)
        for l in range(n_sites):
            for m in range(l + 1, n_sites):
                both = ~np.isnan(x[:, l]) & ~np.isnan(x[:, m])
                a, b = x[both, l], x[both, m]
                if len(a) >= 2 and a.std() > 0 and b.std() > 0:
                    corr[l, m] = corr[m, l] = float(np.corrcoef(a, b)[0, 1])
        return corr

    def _segments(self, column: np.ndarray) -> list[np.ndarray]:
        """Row indices of one site's segments (`column`: its samples, NaN where not sampled): cut where
        the probed set changed, none shorter than `min_segment` (a short tail joins the one before it)."""
        rows = np.flatnonzero(~np.isnan(column))
        epochs = np.asarray(self._epochs)[rows]
        segments: list[list[int]] = [[]]
        for k, row in enumerate(rows):
            if k and epochs[k] != epochs[k - 1] and len(segments[-1]) >= self.min_segment:
                segments.append([])
            segments[-1].append(int(row))
        if len(segments) > 1 and len(segments[-1]) < self.min_segment:
            segments[-2].extend(segments.pop())
        return [np.array(s, dtype=np.int64) for s in segments]

    def _estimates(self) -> tuple[np.ndarray, ...]:
        """(mean, stderr, coef, spread): per site the inverse-variance-weighted mean of its segment
        means and its standard error; per sample the weight of that sample in its site's mean and the
        standard deviation of its segment."""
        if self._cache is not None and self._cache[0] == len(self._rows):
            return self._cache[1]
        x = self.samples
        n_sites = len(self.counts)
        mean, err = np.zeros(n_sites), np.full(n_sites, math.inf)
        coef, spread = np.zeros(x.shape), np.zeros(x.shape)
        for site in range(n_sites):
            if self.counts[site] == 0:
                continue
            segments = self._segments(x[:, site])
            values = [x[rows, site] for rows in segments]
            variances = np.array([v.var(ddof=1) if len(v) >= 2 else math.inf for v in values])
            if len(segments) > 1 and np.any(variances == 0):  # a noiseless design is exact: it alone counts
                segments = [rows for rows, v in zip(segments, variances) if v == 0]
                values = [x[rows, site] for rows in segments]
                variances = np.zeros(len(segments))
            sizes = np.array([len(v) for v in values], dtype=float)
            if len(segments) > 1 and np.all(variances > 0):
                weights = sizes / variances  # every segment has >= min_segment >= 2 samples: finite
                weights = weights / weights.sum()
            else:  # one segment, or only noiseless ones: the plain mean over them
                segments = [np.concatenate(segments)]
                values = [x[segments[0], site]]
                variances = np.array([values[0].var(ddof=1) if len(values[0]) >= 2 else math.inf])
                sizes, weights = np.array([float(len(values[0]))]), np.ones(1)
            mean[site] = float(sum(w * v.mean() for w, v in zip(weights, values)))
            if np.all(np.isfinite(variances)):
                err[site] = math.sqrt(float(np.sum(weights ** 2 * variances / sizes)))
            for w, rows, v, size in zip(weights, segments, variances, sizes):
                coef[rows, site] = w / size
                spread[rows, site] = math.sqrt(v) if np.isfinite(v) else 0.0
        self._cache = (len(self._rows), (mean, err, coef, spread))
        return self._cache[1]


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
