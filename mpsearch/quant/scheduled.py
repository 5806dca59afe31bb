"""What a quantizer or sparsifier implements to take part in training beyond its forward pass.

`methods.hooks.training_hooks` finds every ScheduledMethod (quantizer or sparsifier) in a quantized model and calls these with the
weight the method is attached to, so the trainer itself stays generic.
"""

from __future__ import annotations

import math

from torch import Tensor


class ScheduledMethod:
    """Mixin: a loss term, per-step updates on a schedule over `total_steps`, and an end-of-training step."""

    def loss_term(self, weight: Tensor) -> Tensor | None:
        """This method's addition to the training loss for `weight` (None: nothing this step)."""
        return None

    def on_step(self, weight: Tensor, step: int, total_steps: int) -> None:
        """Called once before training (step 0) and after every optimiser step (step = steps done)."""

    def on_finish(self, weight: Tensor) -> None:
        """Bring the method to its end state (hard assignment, target sparsity), whatever step training
        stopped at."""


def has_loss_term(method: object) -> bool:
    return isinstance(method, ScheduledMethod) and type(method).loss_term is not ScheduledMethod.loss_term


class RecoveryPhase(ScheduledMethod):
    """A method whose fine-tune ends with a recovery phase: its last `recovery` fraction of the steps
    trained on the deployed grid (ADMM, S8BQAT). `on_step` sets `recovering`, since the forward does not
    see the step."""

    recovery: float
    recovering: bool

    def recovery_start(self, total_steps: int) -> int:
        """The step at which the recovery phase starts (total_steps when there is none)."""
        return total_steps - math.floor(self.recovery * total_steps)

    def in_recovery(self, step: int, total_steps: int) -> bool:
        return self.recovery > 0 and step >= self.recovery_start(total_steps)
