"""A one-shot search ends with its front confirmed: each front policy fine-tuned and scored as a
`finetune` trial is, so what the user exports was really trained. The confirmed scores are kept in the
study's user attribute `confirmed` (per float baseline, then per trial number), written after each
confirmation so a kill loses at most the one in flight; the front, export and report show them beside
the one-shot scores the search ranked by."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

from mpsearch.errors import TrialError

if TYPE_CHECKING:
    import optuna

    from mpsearch.quant import Policy
    from mpsearch.search.objective import TrialRunner

log = logging.getLogger(__name__)

CONFIRMED_ATTR = "confirmed"
# what a confirmation keeps of the fine-tuned trial's metrics (its per-utterance record stays out)
CONFIRMED_FIELDS = ("wer", "wer_ci_low", "wer_ci_high", "cer", "test_wer", "test_wer_ci_low", "test_wer_ci_high",
                    "test_cer", "perplexity", "test_perplexity", "finetune", "seconds")


def confirmations(study: optuna.Study, baseline: str | None) -> dict[int, dict[str, Any]]:
    """Trial number -> confirmed (fine-tuned) scores, of the trials scored on `baseline`."""
    stored = study.user_attrs.get(CONFIRMED_ATTR) or {}
    return {int(number): scores for number, scores in (stored.get(baseline or "") or {}).items()}


def confirm_front(study: optuna.Study, numbers: Iterable[int], policy_of: Callable[[int], Policy],
                  runner: TrialRunner, baseline: str | None) -> dict[int, dict[str, Any]]:
    """Fine-tune and score each trial of `numbers` (the front) not yet confirmed on `baseline`, with
    `runner` (a fine-tuning TrialRunner); returns every confirmation of `baseline`."""
    done = confirmations(study, baseline)
    todo = [n for n in numbers if n not in done]
    for i, number in enumerate(todo):
        log.info("confirming front trial %d with a fine-tuned trial (%d of %d)", number, i + 1, len(todo))
        try:
            metrics = runner.run(policy_of(number))
            scores = {k: metrics[k] for k in CONFIRMED_FIELDS if k in metrics}
        except TrialError as exc:
            scores = {"error": str(exc)}
        done[number] = scores
        stored = dict(study.user_attrs.get(CONFIRMED_ATTR) or {})
        stored[baseline or ""] = {str(n): s for n, s in sorted(done.items())}
        study.set_user_attr(CONFIRMED_ATTR, stored)
    return done
