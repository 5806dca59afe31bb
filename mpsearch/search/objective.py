"""One trial: Policy -> quant.apply (NNA emulation) -> calibrate -> QAT fine-tune from the float baseline
-> scores on the eval split (test WER recorded too) + modelled latency, size and average bits.

`TrialRunner` holds what every trial shares, built once per process by the study (the float baseline,
calibration batches, the sites and the latency model); `run(policy)` is the whole trial and raises
TrialError when it cannot finish (NaN loss, a policy the chip cannot run), which the backends record as
failed.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING, Any

import torch

from mpsearch.errors import MpsearchError, TrialError
from mpsearch.quant import Policy

if TYPE_CHECKING:
    from mpsearch.config import SearchConfig
    from mpsearch.data.pipeline import SpeechData
    from mpsearch.quant.sites import Site
    from mpsearch.training.tasks import Task

log = logging.getLogger(__name__)

TaskFactory = Callable[[torch.nn.Module, bool], "Task"]  # (model, augment) -> the task training it


class TrialRunner:
    """`float_model` is the runner's own (it is put in eval mode); `make_task(model, augment)` the task that
    fine-tunes a model, `calibration` the batches that set activation ranges (run through the task's
    loss), `evaluate(model)` the trial's scores, `baseline` the float baseline's key recorded with them.
    With `shared_model` (one-shot weights of the float model's architecture) a trial quantizes those and
    scores them without a fine-tune of its own."""

    def __init__(self, float_model: torch.nn.Module, cfg: SearchConfig, profile: str, sites: Sequence[Site],
                 latency_model: Any, make_task: TaskFactory, calibration: list,
                 evaluate: Callable[[torch.nn.Module], dict[str, Any]], baseline: str | None = None,
                 shared_model: torch.nn.Module | None = None):
        self.float_model = float_model.eval()
        self.cfg = cfg
        self.profile = profile
        self.sites = list(sites)
        self.latency_model = latency_model
        self.make_task = make_task
        self.calibration = calibration
        self.evaluate = evaluate
        self.baseline = baseline
        self.shared_model = shared_model.eval() if shared_model is not None else None

    def quantized_model(self, policy: Policy, model: torch.nn.Module | None = None) -> torch.nn.Module:
        """The float baseline (or another float `model` of its architecture) under `policy`, calibrated and
        ready to fine-tune."""
        return calibrated_model(model or self.float_model, policy, self.cfg.emulation, self.profile, self.calibration,
                                forward=lambda model, batch: self.make_task(model, False).loss(batch))

    def finetune(self, model: torch.nn.Module, steps: int | None = None, progress: bool = False) -> dict[str, Any]:
        from mpsearch.quant.methods.hooks import training_hooks
        from mpsearch.training.trainer import train

        cfg = self.cfg.finetune if steps is None else self.cfg.finetune.model_copy(update={"max_steps": steps})
        result = train(self.make_task(model, cfg.augment), cfg, training_hooks(model, total_steps=cfg.max_steps),
                       progress=progress)
        return {"steps": result.steps, "final_loss": result.final_loss, "seconds": round(result.seconds, 1)}

    def hardware_metrics(self, policy: Policy) -> dict[str, float]:
        return self.latency_model(self.sites, policy).metrics()

    def run(self, policy: Policy, progress: bool = False) -> dict[str, Any]:
        """The whole trial; returns its metrics or raises TrialError."""
        start = time.monotonic()
        try:
            metrics = dict(self.hardware_metrics(policy))
            if self.shared_model is not None:
                model = self.quantized_model(policy, model=self.shared_model)
                metrics["trial_mode"] = "oneshot"
            else:
                model = self.quantized_model(policy)
                metrics["finetune"] = self.finetune(model, progress=progress)
            metrics.update(self.evaluate(model))
        except TrialError:
            raise
        except MpsearchError as exc:
            raise TrialError(str(exc)) from exc
        except (RuntimeError, ValueError, FloatingPointError) as exc:
            raise TrialError(f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}") from exc
        bad = [k for k, v in metrics.items() if isinstance(v, float) and not math.isfinite(v)]
        if bad:
            raise TrialError(f"the trial's {', '.join(bad)} came out non-finite")
        metrics["seconds"] = round(time.monotonic() - start, 1)
        metrics["threads"] = torch.get_num_threads()
        if self.baseline is not None:
            metrics["baseline"] = self.baseline  # which float model the trial was scored from
        return metrics


def trial_scores(task: Task, data: SpeechData, cfg: SearchConfig, test: bool = True) -> dict[str, Any]:
    """Scores on the eval split (its seeded subset when `search.eval_utterances` is set) and, with `test`,
    on test: WER with its interval and the per-utterance record of a speech task, perplexity of a
    language model."""
    from mpsearch.eval.bootstrap import wer_interval
    from mpsearch.eval.wer import error_rates, utterance_errors

    splits = (("", cfg.eval_split), ("test_", "test")) if test else (("", cfg.eval_split),)
    if not hasattr(task, "transcribe"):
        return {prefix + "perplexity": task.evaluate(split)["perplexity"] for prefix, split in splits}
    scores: dict[str, Any] = {}
    for prefix, split in splits:
        subset = data.split(split).subset(cfg.eval_utterances, seed=cfg.seed)
        refs, hyps = task.transcribe(subset)
        for name, value in error_rates(refs, hyps).items():
            scores[prefix + name] = value
        errors, words = utterance_errors(refs, hyps)
        interval = wer_interval(errors, words)
        scores[prefix + "wer_ci_low"], scores[prefix + "wer_ci_high"] = interval.low, interval.high
        if not prefix:  # what paired comparisons against another trial need (see eval/bootstrap.py)
            scores["utterances"] = utterance_record(split, refs, errors, words)
    return scores


def calibrated_model(float_model: torch.nn.Module, policy: Policy, emulation: str, profile: str,
                     batches: Iterable[Any], forward: Callable[[torch.nn.Module, Any], Any] | None = None,
                     ) -> torch.nn.Module:
    """`quant.apply(float_model, policy)` under `emulation` ("nna": the chip's integers from `profile`), its
    activation ranges set by `forward(model, batch)` (default `model(*batch)`) on `batches`, no gradients."""
    from mpsearch.quant import apply
    from mpsearch.quant.apply import calibrating

    forward = forward or (lambda model, batch: model(*batch))
    if emulation == "nna":
        from mpsearch.hardware import load_profile
        from mpsearch.quant.nna import NNANumerics, calibrate_nna

        numerics = NNANumerics.from_profile(load_profile(profile))
        model = apply(float_model, policy, emulation="nna", numerics=numerics)
        with torch.no_grad():
            calibrate_nna(model, batches, forward=forward)
        return model
    model = apply(float_model, policy)
    with torch.no_grad(), calibrating(model):
        for batch in batches:
            forward(model, batch)
    return model


def utterance_record(split: str, references: list[str], errors: list[int], words: list[int]) -> dict[str, Any]:
    """A trial's per-utterance word errors, compact: two lists of small ints in the scored order, and a
    digest of the references so two trials are paired only when they scored the same utterances."""
    import hashlib

    digest = hashlib.sha256("\n".join(references).encode()).hexdigest()[:16]
    return {"split": split, "references": digest, "errors": errors, "words": words}
