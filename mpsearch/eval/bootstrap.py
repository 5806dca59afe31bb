"""Confidence intervals for corpus error rates by bootstrap over utterances.

A corpus WER is sum(errors) / sum(words) over utterances, so utterances (not words) are the units that
are resampled: errors within one utterance are correlated. Two systems scored on the same utterances
are compared by a paired bootstrap (Koehn 2004; Bisani and Ney 2004): each resample draws one set of
utterances and takes the difference of both systems' WER on it, which cancels the variation that comes
from which utterances happen to be hard, so its interval is far tighter than comparing two intervals.

Resamples are drawn from a fixed seed: the same counts always give the same interval.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from mpsearch.errors import MpsearchError

RESAMPLES = 2000
CONFIDENCE = 0.95


@dataclass(frozen=True)
class Interval:
    """A point estimate with its two-sided confidence interval."""

    value: float
    low: float
    high: float

    @property
    def excludes_zero(self) -> bool:
        return self.low > 0 or self.high < 0


def _counts(errors: Sequence[int], words: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
    e, w = np.asarray(errors, dtype=np.int64), np.asarray(words, dtype=np.int64)
    if e.shape != w.shape or e.ndim != 1 or len(e) == 0:
        raise MpsearchError(f"bootstrap needs one error count and one word count per utterance; got "
                            f"{e.shape} errors and {w.shape} words.")
    if w.sum() == 0:
        raise MpsearchError("bootstrap needs at least one reference word; every utterance given is empty.")
    return e, w


def _resample_index(n: int, resamples: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, n, size=(resamples, n))


def _percentiles(samples: np.ndarray, confidence: float) -> tuple[float, float]:
    tail = 100 * (1 - confidence) / 2
    low, high = np.percentile(samples, [tail, 100 - tail])
    return float(low), float(high)


def _rates(errors: np.ndarray, words: np.ndarray, index: np.ndarray) -> np.ndarray:
    # a resample that drew only empty references has no words; its rate counts as its errors alone
    return errors[index].sum(axis=1) / np.maximum(words[index].sum(axis=1), 1)


def wer_interval(errors: Sequence[int], words: Sequence[int], resamples: int = RESAMPLES,
                 confidence: float = CONFIDENCE, seed: int = 0) -> Interval:
    """Corpus WER of per-utterance `errors` over `words`, with its percentile bootstrap interval."""
    e, w = _counts(errors, words)
    index = _resample_index(len(e), resamples, seed)
    low, high = _percentiles(_rates(e, w, index), confidence)
    return Interval(float(e.sum() / w.sum()), low, high)


def paired_delta(errors: Sequence[int], reference_errors: Sequence[int], words: Sequence[int],
                 resamples: int = RESAMPLES, confidence: float = CONFIDENCE, seed: int = 0) -> Interval:
    """WER(errors) - WER(reference_errors) on the same utterances, with its paired bootstrap interval."""
    if len(errors) != len(reference_errors):
        raise MpsearchError(f"a paired comparison needs both systems scored on the same utterances; got "
                            f"{len(errors)} and {len(reference_errors)}.")
    e, w = _counts(errors, words)
    r, _ = _counts(reference_errors, words)
    index = _resample_index(len(e), resamples, seed)
    low, high = _percentiles(_rates(e - r, w, index), confidence)
    return Interval(float((e.sum() - r.sum()) / w.sum()), low, high)

