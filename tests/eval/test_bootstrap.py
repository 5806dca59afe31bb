"""Bootstrap intervals of corpus WER and paired differences, against hand computations."""

import numpy as np
import pytest

from mpsearch.errors import MpsearchError
from mpsearch.eval.bootstrap import paired_delta, wer_interval
from mpsearch.eval.wer import error_rates, utterance_errors


def test_utterance_counts_sum_to_the_corpus_wer():
    refs = ["turn on the light", "set a timer", "play music now", ""]
    hyps = ["turn the light on", "set a timer", "", "hello"]
    errors, words = utterance_errors(refs, hyps)
    assert words == [4, 3, 3, 0]
    assert errors[1] == 0 and errors[2] == 3 and errors[3] == 1
    assert sum(errors) / sum(words) == pytest.approx(error_rates(refs[:3], hyps[:3])["wer"] + 1 / 10)


def test_no_errors_give_a_zero_width_interval_at_zero():
    interval = wer_interval([0, 0, 0], [5, 3, 7])
    assert (interval.value, interval.low, interval.high) == (0.0, 0.0, 0.0)


def test_two_utterances_match_the_enumerated_bootstrap():
    # resamples of {A: 1 error in 1 word, B: 0 in 1}: AA -> 1 (p 1/4), AB/BA -> 0.5 (1/2), BB -> 0 (1/4),
    # so the 2.5th percentile is 0 and the 97.5th is 1; the point estimate is 1/2
    interval = wer_interval([1, 0], [1, 1], resamples=4000)
    assert (interval.value, interval.low, interval.high) == (0.5, 0.0, 1.0)


def test_interval_matches_the_normal_approximation_for_many_utterances():
    rng = np.random.default_rng(1)
    words = rng.integers(3, 12, size=2000)
    errors = rng.binomial(words, 0.1)
    interval = wer_interval(errors, words)
    # ratio estimator: var ~ sum((e - r w)^2) / W^2
    rate = errors.sum() / words.sum()
    se = np.sqrt(((errors - rate * words) ** 2).sum()) / words.sum()
    assert interval.low == pytest.approx(rate - 1.96 * se, abs=0.15 * se)
    assert interval.high == pytest.approx(rate + 1.96 * se, abs=0.15 * se)


def test_a_trial_against_itself_differs_by_exactly_zero():
    errors, words = [3, 0, 1, 7, 2], [10, 4, 5, 12, 6]
    delta = paired_delta(errors, errors, words)
    assert (delta.value, delta.low, delta.high) == (0.0, 0.0, 0.0)


def test_paired_interval_is_tighter_than_the_two_intervals():
    rng = np.random.default_rng(2)
    words = rng.integers(3, 12, size=300)
    base = rng.binomial(words, 0.2)
    other = base + rng.binomial(1, 0.1, size=300)  # one extra error on a tenth of the utterances
    delta = paired_delta(other, base, words)
    a, b = wer_interval(other, words), wer_interval(base, words)
    assert delta.low > 0  # resolved by pairing ...
    assert a.low < b.high  # ... though the two intervals overlap
    assert delta.value == pytest.approx((other.sum() - base.sum()) / words.sum())


def test_mismatched_inputs_are_errors():
    with pytest.raises(MpsearchError, match="same utterances"):
        paired_delta([1, 2], [1, 2, 3], [3, 3])
    with pytest.raises(MpsearchError, match="one error count"):
        wer_interval([1, 2], [3])
