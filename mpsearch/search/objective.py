"""One trial: Policy -> quant.apply (NNA emulation) -> calibrate -> QAT fine-tune from the float baseline
-> WER on the eval split (test WER recorded too) + modelled latency, size and average bits.

`TrialRunner` builds what every trial shares once per process (the float baseline, calibration
batches, the eval subset, the latency model); `run(policy)` is the whole trial and raises TrialError
when it cannot finish (NaN loss, a policy the chip cannot run), which the backends record as failed.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

import torch

from mpsearch.errors import MpsearchError, TrialError
from mpsearch.quant import Policy

if TYPE_CHECKING:
    from mpsearch.study import Study

log = logging.getLogger(__name__)


class TrialRunner:
    def __init__(self, study: Study):
        self.study = study
        self.cfg = study.cfg.search
        self.float_model, self.baseline_metrics = study.baseline()
        self.float_model.eval()
        self.sites = study.sites()
        self.latency_model = study.latency_model()
        self._calibration_batches: list | None = None

    @property
    def is_speech(self) -> bool:
        return getattr(self.float_model, "kind", None) != "lm"

    def calibration_batches(self) -> list:
        """A fixed seeded draw of train batches, without augmentation, as the model's forward takes them."""
        if self._calibration_batches is None:
            task = self.study.task(self.float_model, augment=False)
            batches = []
            for batch in task.train_batches(self.cfg.seed + 7919):
                batches.append(_as_args(batch))
                if len(batches) >= self.cfg.calibration_batches:
                    break
            self._calibration_batches = batches
        return self._calibration_batches

    def quantized_model(self, policy: Policy) -> torch.nn.Module:
        """The float baseline under `policy`, calibrated and ready to fine-tune."""
        return calibrated_model(self.float_model, policy, self.cfg.emulation, self.study.cfg.hardware.profile,
                                self.calibration_batches())

    def finetune(self, model: torch.nn.Module, steps: int | None = None, progress: bool = False) -> dict[str, Any]:
        from mpsearch.quant.methods.hooks import training_hooks
        from mpsearch.training.trainer import train

        cfg = self.cfg.finetune if steps is None else self.cfg.finetune.model_copy(update={"max_steps": steps})
        task = self.study.task(model, augment=cfg.augment)
        hooks = training_hooks(model, total_steps=cfg.max_steps)
        result = train(task, cfg, progress=progress, extra_loss=hooks.extra_loss, after_step=hooks.after_step)
        hooks.finish()
        return {"steps": result.steps, "final_loss": result.final_loss, "seconds": round(result.seconds, 1)}

    def evaluate(self, model: torch.nn.Module) -> dict[str, float]:
        """Scores on the eval split (its seeded subset when `search.eval_utterances` is set) and on test."""
        from mpsearch.eval.bootstrap import wer_interval
        from mpsearch.eval.wer import error_rates, utterance_errors

        task = self.study.task(model, augment=False)
        if not self.is_speech:
            dev, test = task.evaluate(self.cfg.eval_split), task.evaluate("test")
            return {"perplexity": dev["perplexity"], "test_perplexity": test["perplexity"]}
        data = self.study.data
        scores: dict[str, Any] = {}
        for prefix, split in (("", self.cfg.eval_split), ("test_", "test")):
            subset = data.split(split).subset(self.cfg.eval_utterances, seed=self.cfg.seed)
            refs, hyps = task.transcribe(subset)
            for name, value in error_rates(refs, hyps).items():
                scores[prefix + name] = value
            errors, words = utterance_errors(refs, hyps)
            interval = wer_interval(errors, words)
            scores[prefix + "wer_ci_low"], scores[prefix + "wer_ci_high"] = interval.low, interval.high
            if not prefix:  # what paired comparisons against another trial need (see eval/bootstrap.py)
                scores["utterances"] = utterance_record(split, refs, errors, words)
        return scores

    def hardware_metrics(self, policy: Policy) -> dict[str, float]:
        return self.latency_model(self.sites, policy).metrics()

    def run(self, policy: Policy, progress: bool = False) -> dict[str, Any]:
        """The whole trial; returns its metrics or raises TrialError."""
        start = time.monotonic()
        try:
            metrics = dict(self.hardware_metrics(policy))
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
        metrics["baseline"] = self.study.baseline_key  # which float model the trial was scored from
        return metrics


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


def _as_args(batch: Any) -> tuple:
    """A task batch as the positional arguments of the model's forward."""
    if hasattr(batch, "feats"):
        return (batch.feats, batch.feat_lens, batch.targets, batch.target_lens)
    return tuple(batch)
