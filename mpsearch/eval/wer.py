"""Word and character error rates over a whole test set (errors / reference length)."""

from __future__ import annotations

import jiwer

from mpsearch.errors import MpsearchError


def error_rates(references: list[str], hypotheses: list[str]) -> dict[str, float]:
    """Corpus-level ``{"wer": ..., "cer": ...}``; empty hypotheses count as all deletions.

    Whitespace is collapsed and stripped; no other normalisation is done, so pass text normalised the
    way the tokenizer normalises it. If every reference is empty the rate is 0.0 when every
    hypothesis is empty too and inf otherwise.
    """
    if len(references) != len(hypotheses):
        raise MpsearchError(f"error_rates got {len(references)} references but {len(hypotheses)} hypotheses; "
                            "pass one hypothesis per reference.")
    if not references:
        raise MpsearchError("error_rates got no utterances; pass at least one reference and hypothesis.")
    refs = [" ".join(r.split()) for r in references]
    hyps = [" ".join(h.split()) for h in hypotheses]
    words = jiwer.process_words(refs, hyps)
    chars = jiwer.process_characters(refs, hyps)
    return {"wer": _rate(words, sum(len(r.split()) for r in refs)),
            "cer": _rate(chars, sum(len(r) for r in refs))}


def _rate(output, reference_units: int) -> float:
    errors = output.substitutions + output.deletions + output.insertions
    if reference_units == 0:
        return 0.0 if errors == 0 else float("inf")
    return errors / reference_units


def utterance_errors(references: list[str], hypotheses: list[str]) -> tuple[list[int], list[int]]:
    """Per utterance: word errors (substitutions + deletions + insertions) and reference words, the
    counts a bootstrap over utterances resamples (their sums give exactly `error_rates`' WER)."""
    if len(references) != len(hypotheses):
        raise MpsearchError(f"utterance_errors got {len(references)} references but {len(hypotheses)} "
                            "hypotheses; pass one hypothesis per reference.")
    errors, words = [], []
    for ref, hyp in zip(references, hypotheses):
        ref, hyp = " ".join(ref.split()), " ".join(hyp.split())
        n = len(ref.split())
        if not ref:
            errors.append(len(hyp.split()))
        elif not hyp:
            errors.append(n)
        else:
            out = jiwer.process_words(ref, hyp)
            errors.append(out.substitutions + out.deletions + out.insertions)
        words.append(n)
    return errors, words
