"""A user's own model as a task: `train_step(model, step)` gives one batch's loss and `evaluate(model)`
the scores, so it trains with the one training loop (warm-up, cosine decay, time limit, seeding) and is
searched through the same study flow as the built-in speech models."""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from mpsearch.errors import TrialError


@dataclass(frozen=True)
class UserModel:
    """`factory()` builds the trained float model; `train_step(model, step)` returns one batch's loss
    (no backward); `evaluate(model)` returns the error objectives, lower is better. `space`: the search
    space as a mapping (as a search space YAML holds it), when it is not in a file."""

    factory: Callable[[], nn.Module]
    train_step: Callable[[nn.Module, int], torch.Tensor]
    evaluate: Callable[[nn.Module], Mapping[str, float]]
    space: Mapping[str, Any] | None = None

    def task(self, model: nn.Module, augment: bool = False) -> UserTask:
        return UserTask(model, self)

    def calibration_batches(self, count: int) -> list[int]:
        """Negative steps: `train_step` sees calibration apart from training."""
        return list(range(-count, 0))

    def scores(self, model: nn.Module) -> dict[str, float]:
        """`evaluate(model)` in eval mode without gradients, as floats; non-finite scores are a TrialError."""
        was_training = model.training
        model.eval()
        try:
            with torch.no_grad():
                scores = {k: float(v) for k, v in dict(self.evaluate(model)).items()}
        finally:
            model.train(was_training)
        bad = {k: v for k, v in scores.items() if not math.isfinite(v)}
        if bad:
            raise TrialError(f"evaluate() returned non-finite {bad}")
        return scores


class UserTask:
    """The trainer's view of a user's model: a batch is the step number handed to `train_step`."""

    def __init__(self, model: nn.Module, user: UserModel):
        self.model = model
        self.user = user

    def loss(self, step: int) -> torch.Tensor:
        return self.user.train_step(self.model, step)

    def train_batches(self, seed: int) -> Iterator[int]:
        return itertools.count()

    def evaluate(self, split: str) -> dict[str, float]:
        return self.user.scores(self.model)
