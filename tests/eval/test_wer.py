import pytest

from mpsearch.errors import MpsearchError
from mpsearch.eval.wer import error_rates


def test_known_strings():
    rates = error_rates(["the cat sat", "hello world"], ["the cat sat", "helo world"])
    assert rates["wer"] == pytest.approx(1 / 5)
    assert rates["cer"] == pytest.approx(1 / 22)


def test_empty_hypothesis_counts_as_deletions():
    rates = error_rates(["a b c", "d e"], ["a b", ""])
    assert rates == pytest.approx({"wer": 3 / 5, "cer": 5 / 8})


def test_extra_whitespace_is_not_an_error():
    assert error_rates(["a  b "], [" a b"]) == {"wer": 0.0, "cer": 0.0}


def test_empty_references():
    assert error_rates([""], [""]) == {"wer": 0.0, "cer": 0.0}
    assert error_rates([""], ["x"])["wer"] == float("inf")


def test_mismatched_lists_are_rejected():
    with pytest.raises(MpsearchError, match="2 references but 1 hypotheses"):
        error_rates(["a", "b"], ["a"])
