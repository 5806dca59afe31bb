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
