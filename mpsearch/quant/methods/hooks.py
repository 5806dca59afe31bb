"""training_hooks: every method's loss terms and scheduled updates, as the trainer's two callbacks.

    train(task, cfg, training_hooks(model, total_steps=cfg.max_steps))
    # train() ends with hooks.finish(): end states (hard GQ assignment, target sparsity), whatever step
    # training stopped at

Methods take part through `ScheduledMethod` (quant.scheduled): GQ anneals its temperature, S8BQAT adds
MRACos and hard-compresses every K steps, ADMM adds its penalty and updates Z and U every K steps, the
sparsifiers follow their mask schedules and CSP adds its compression-error term.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import torch
from torch import Tensor, nn

from mpsearch.errors import ConfigError
from mpsearch.quant.modules import QuantModule
from mpsearch.quant.scheduled import ScheduledMethod, has_loss_term


class ScheduledSite(NamedTuple):
    method: ScheduledMethod
    module: nn.Module
    param: str

    @property
    def weight(self) -> Tensor:
        # Looked up on every call, not held: a load_state_dict or a swapped parameter stays visible.
        return getattr(self.module, self.param)


def scheduled_sites(model: nn.Module) -> list[ScheduledSite]:
    """Every quantizer and sparsifier of `model` (made by quant.apply) that takes part in training."""
    found = []
    for module in model.modules():
        if not isinstance(module, QuantModule):
            continue
        for table in (module.weight_quantizers, module.weight_sparsifiers):
            for param, method in table.items():
                if isinstance(method, ScheduledMethod):
                    found.append(ScheduledSite(method, module, param))
    return found


class StepHooks:
    """`after_step(step)` for the trainer: each method's update for the step; `finish()` for the end state."""

    def __init__(self, sites: list[ScheduledSite], total_steps: int) -> None:
        self.sites = sites
        self.total_steps = total_steps

    def __call__(self, step: int) -> None:
        for site in self.sites:
            site.method.on_step(site.weight, step, self.total_steps)

    def finish(self) -> None:
        for site in self.sites:
            site.method.on_finish(site.weight)


class TrainingHooks(NamedTuple):
    """(extra_loss or None, after_step): unpacks into the trainer's two callbacks."""

    extra_loss: Callable[[], Tensor] | None
    after_step: StepHooks

    def finish(self) -> None:
        """Put every method in its end state; call after training (a time budget may stop it early)."""
        self.after_step.finish()


def training_hooks(model: nn.Module, total_steps: int) -> TrainingHooks:
    """The trainer callbacks that drive every method of `model` over a fine-tune of `total_steps` steps.

    Schedules start now (step 0: GQ's initial temperature, the initial masks) and are functions of the
    step count, so a run resumed from a checkpoint continues them. `extra_loss` is None when no method
    adds to the loss.
    """
    if isinstance(total_steps, bool) or not isinstance(total_steps, int) or total_steps < 1:
        raise ConfigError(f"training_hooks needs the fine-tune's total step count, a positive integer; "
                          f"got {total_steps!r}.")
    sites = scheduled_sites(model)
    after_step = StepHooks(sites, total_steps)
    after_step(0)
    with_loss = [site for site in sites if has_loss_term(site.method)]

    def extra_loss() -> Tensor:
        total = None
        for site in with_loss:
            term = site.method.loss_term(site.weight)
            if term is not None:
                total = term if total is None else total + term
        return total if total is not None else torch.zeros(())

    return TrainingHooks(extra_loss if with_loss else None, after_step)
