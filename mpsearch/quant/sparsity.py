"""Sparsity: a mask per weight, combinable with any quantizer (the weight used is mask * Q(W)).

Masking after quantization makes every pruned weight an exact zero whatever the quantizer's grid (a
codebook need not contain 0), and the integer export writes the zero code there. Masks are buffers,
recomputed by the training hooks on a schedule over the fine-tune and then held fixed:

- magnitude: gradual pruning (Zhu & Gupta 2017): the pruned fraction follows
  s(t) = s_f (1 - (1 - (t - t_start) / (t_end - t_start))^3), the smallest |W| of each tensor pruned,
  and once pruned a weight stays pruned.
- regrow: the same schedule with feedback (dynamic pruning, Lin et al. 2020): the forward uses the
  pruned weight, but the gradient reaches every weight straight through the mask
  (W <- W - lr * g(mask * W)), and each update re-ranks the dense |W|, so a pruned weight the loss keeps
  pushing grows back. The baseline compressed sensing has to beat: CSP differs from it only by its
  compression-error term.
- csp: compressed-sensing pruning (Zhen et al. 2021), as we read it: at each update an ISTA
  (L1-proximal, soft-thresholding) step X = S_theta(W) gives the sparse code of the weight, with theta
  chosen so that X has exactly the scheduled number of zeros; the support of X is the mask. Between
  updates the loss carries the compression-error term rho/2 ||W - X||^2, which pulls pruned weights to
  zero and shrinks the survivors by theta unless the task loss holds them up, and every weight, pruned
  or not, gets the task gradient taken at the sparse point (straight through the mask, as ISTA's
  gradient step), so a pruned weight the loss needs grows back: the weights zero at the end are those
  this L1-proximal dynamics drives to zero, not the smallest magnitudes of the baseline. Kept weights
  are used at their trained value (W, not the shrunk X), as in debiased compressed-sensing recovery.
  Once the schedule ends the support is fixed, the term dropped and the mask applied plainly.
- nm: N:M structured sparsity: in every group of M consecutive weights along the input dimension (dim 1;
  a Conv1d's groups run over input channels at each kernel tap) the N largest |W| are kept, from the first
  step on, recomputed every `sparsity_every` steps until the schedule ends.

Options (in QuantConfig.options, beside the quantizer's): `sparsity_every` (steps between mask updates),
`sparsity_start` / `sparsity_end` (fractions of training where the schedule starts and reaches the target),
`csp_rho` (weight of CSP's compression-error term).
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor, nn

from mpsearch.errors import PolicyError
from mpsearch.quant.config import SPARSIFIERS, QuantConfig, SparsityConfig
from mpsearch.quant.options import check_number
from mpsearch.quant.scheduled import ScheduledMethod

SPARSITY_OPTIONS: dict[str, Any] = {"sparsity_every": 20, "sparsity_start": 0.0, "sparsity_end": 0.75,
                                    "csp_rho": 0.05}


def check_sparsity_options(cfg: QuantConfig) -> None:
    """Raise a PolicyError for a sparsity option with an invalid value."""
    options = {**SPARSITY_OPTIONS, **{k: v for k, v in cfg.options.items() if k in SPARSITY_OPTIONS}}
    check_number("sparsity_every", options["sparsity_every"], 1, integer=True)
    check_number("sparsity_start", options["sparsity_start"], 0.0, 1.0)
    check_number("sparsity_end", options["sparsity_end"], 0.0, 1.0)
    check_number("csp_rho", options["csp_rho"], 0.0)
    if options["sparsity_end"] < options["sparsity_start"]:
        raise PolicyError(f"The option 'sparsity_end' ({options['sparsity_end']}) must not be before "
                          f"'sparsity_start' ({options['sparsity_start']}).")


def check_sparsity_shape(shape: tuple[int, ...] | torch.Size, sparsity: SparsityConfig) -> None:
    """Raise a PolicyError if a weight of `shape` cannot take `sparsity` (N:M: m must divide dim 1)."""
    if sparsity.method != "nm":
        return
    if len(shape) < 2 or shape[1] % sparsity.m:
        width = shape[1] if len(shape) >= 2 else None
        raise PolicyError(f"N:M sparsity {sparsity.n}:{sparsity.m} groups the input dimension in blocks of "
                          f"{sparsity.m}, but it has size {width}; choose an m that divides it, or another "
                          "sparsity for this site.")


class Sparsifier(ScheduledMethod, nn.Module):
    """A mask buffer (True: kept) applied as mask * x, and the schedule that updates it."""

    def __init__(self, weight: Tensor, sparsity: SparsityConfig, every: int = 20, start: float = 0.0,
                 end: float = 0.75) -> None:
        super().__init__()
        check_sparsity_shape(weight.shape, sparsity)
        self.config = sparsity
        self.every, self.start, self.end = int(every), float(start), float(end)
        self.register_buffer("mask", torch.ones_like(weight, dtype=torch.bool))

    @property
    def target(self) -> float:
        """The fraction of zeros at the end of the schedule."""
        return 1.0 - self.config.density

    @property
    def sparsity(self) -> float:
        """The fraction of weights the mask prunes now."""
        return 1.0 - float(self.mask.float().mean())

    def forward(self, x: Tensor) -> Tensor:
        return x * self.mask

    def update(self, weight: Tensor, fraction: float | None = None) -> None:
        """Recompute the mask for `fraction` of zeros (default: the target)."""
        raise NotImplementedError

    def schedule_steps(self, total_steps: int) -> tuple[int, int]:
        """The steps where the schedule starts and where it reaches the target (at least step 1)."""
        end = max(1, math.ceil(self.end * total_steps))
        return min(math.floor(self.start * total_steps), end), end

    def fraction_at(self, step: int, total_steps: int) -> float:
        """Scheduled fraction of zeros after `step` steps: Zhu & Gupta's cubic ramp to the target."""
        start, end = self.schedule_steps(total_steps)
        if step >= end:
            return self.target
        if step <= start:
            return 0.0
        done = (step - start) / (end - start)
        return self.target * (1.0 - (1.0 - done) ** 3)

    def on_step(self, weight: Tensor, step: int, total_steps: int) -> None:
        _, end = self.schedule_steps(total_steps)
        if (step < end and step % self.every == 0) or step == end:
            self.update(weight, self.fraction_at(step, total_steps))

    def on_finish(self, weight: Tensor) -> None:
        if abs(self.sparsity - self.target) > 0.5 / max(self.mask.numel(), 1):
            self.update(weight)

    def extra_repr(self) -> str:
        return f"{self.config}, sparsity={self.sparsity:.3f}"


def _prune_smallest(scores: Tensor, fraction: float) -> Tensor:
    """A mask pruning exactly round(fraction * n) entries: those of least score (ties by position)."""
    count = round(fraction * scores.numel())
    keep = torch.ones(scores.numel(), dtype=torch.bool, device=scores.device)
    if count:
        keep[torch.argsort(scores.reshape(-1), stable=True)[:count]] = False
    return keep.reshape(scores.shape)


class FeedbackSparsifier(Sparsifier):
    """While the schedule runs, the forward is mask * x but the gradient reaches x unmasked; the support is
    final (and the mask applied plainly) once the schedule reaches the target."""

    def __init__(self, weight: Tensor, sparsity: SparsityConfig, every: int = 20, start: float = 0.0,
                 end: float = 0.75) -> None:
        super().__init__(weight, sparsity, every, start, end)
        self.register_buffer("active", torch.ones((), dtype=torch.bool, device=weight.device))

    def forward(self, x: Tensor) -> Tensor:
        if not bool(self.active):
            return x * self.mask
        return x + (x * self.mask - x).detach()

    def on_step(self, weight: Tensor, step: int, total_steps: int) -> None:
        super().on_step(weight, step, total_steps)
        if step >= self.schedule_steps(total_steps)[1]:
            self.active.fill_(False)

    def on_finish(self, weight: Tensor) -> None:
        super().on_finish(weight)
        self.active.fill_(False)


@SPARSIFIERS.register("magnitude")
class MagnitudeSparsifier(Sparsifier):
    """Gradual magnitude pruning: the smallest |W| of the tensor, pruned weights stay pruned."""

    @torch.no_grad()
    def update(self, weight: Tensor, fraction: float | None = None) -> None:
        fraction = self.target if fraction is None else fraction
        # Scoring the masked weight keeps earlier pruning (zeros rank first) as the fraction grows.
        self.mask.copy_(_prune_smallest((weight.detach() * self.mask).abs(), fraction))


@SPARSIFIERS.register("regrow")
class RegrowSparsifier(FeedbackSparsifier):
    """Gradual magnitude pruning with feedback: pruned weights keep their gradient and return if they grow."""

    @torch.no_grad()
    def update(self, weight: Tensor, fraction: float | None = None) -> None:
        fraction = self.target if fraction is None else fraction
        # The dense weight is ranked, not the masked one: a pruned weight that grew competes again.
        self.mask.copy_(_prune_smallest(weight.detach().abs(), fraction))


@SPARSIFIERS.register("csp")
class CompressedSensingSparsifier(FeedbackSparsifier):
    """CSP: ISTA soft-thresholding picks the support; a compression-error term drives the dynamics.

    While the support is open, pruned weights still get the task gradient (taken at the sparse point, as
    ISTA's gradient step is): the loss can revive a weight the pull is driving to zero.
    """

    def __init__(self, weight: Tensor, sparsity: SparsityConfig, every: int = 20, start: float = 0.0,
                 end: float = 0.75, rho: float = 0.05) -> None:
        super().__init__(weight, sparsity, every, start, end)
        self.rho = float(rho)
        self.register_buffer("code", weight.detach().clone())  # X, the sparse code (dense until pruning)

    @torch.no_grad()
    def update(self, weight: Tensor, fraction: float | None = None) -> None:
        fraction = self.target if fraction is None else fraction
        w = weight.detach()
        keep = _prune_smallest(w.abs(), fraction)
        # Still our reading of the paper, whose method section we could not check: the threshold theta
        # comes from the sparsity schedule (the largest pruned magnitude, so exactly the scheduled
        # entries are zero) rather than from an L1 weight, and the compression error enters the loss as
        # rho/2 ||W - X||^2 between updates.
        theta = w.abs()[~keep].max() if bool((~keep).any()) else w.new_zeros(())
        self.code.copy_(torch.where(keep, torch.sign(w) * (w.abs() - theta).clamp_min(0.0), 0.0))
        self.mask.copy_(keep)

    def compression_error(self, weight: Tensor) -> Tensor:
        """||W - X||^2 between the weight and its sparse code."""
        return (weight - self.code).pow(2).sum()

    def loss_term(self, weight: Tensor) -> Tensor | None:
        if not bool(self.active) or self.rho == 0:
            return None
        return 0.5 * self.rho * self.compression_error(weight)


@SPARSIFIERS.register("nm")
class NMSparsifier(Sparsifier):
    """N:M: the N largest |W| of every M consecutive weights along dim 1, at the target from the start."""

    def fraction_at(self, step: int, total_steps: int) -> float:
        return self.target

    @torch.no_grad()
    def update(self, weight: Tensor, fraction: float | None = None) -> None:
        n, m = self.config.n, self.config.m
        scores = weight.detach().abs().movedim(1, -1)
        blocks = scores.reshape(-1, m)
        keep = torch.zeros_like(blocks, dtype=torch.bool).scatter_(1, blocks.topk(n, dim=1).indices, True)
        self.mask.copy_(keep.reshape(scores.shape).movedim(-1, 1))


def make_sparsifier(cfg: QuantConfig, weight: Tensor) -> Sparsifier | None:
    """The sparsifier `cfg.sparsity` asks for, built for `weight` (None when it asks for none)."""
    if cfg.sparsity is None:
        return None
    check_sparsity_options(cfg)
    options = {**SPARSITY_OPTIONS, **{k: v for k, v in cfg.options.items() if k in SPARSITY_OPTIONS}}
    schedule = (options["sparsity_every"], options["sparsity_start"], options["sparsity_end"])
    cls = SPARSIFIERS.get(cfg.sparsity.method)
    if cls is CompressedSensingSparsifier:
        return cls(weight, cfg.sparsity, *schedule, rho=options["csp_rho"])
    return cls(weight, cfg.sparsity, *schedule)
