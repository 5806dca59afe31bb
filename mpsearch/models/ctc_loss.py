"""CTC negative log-likelihood in pure PyTorch, twice differentiable.

`torch.nn.functional.ctc_loss` has no second derivative on CPU, and Hessian-based sensitivity needs
Hessian-vector products through the loss. This is the log-space forward recursion over the extended
label sequence (blank, l1, blank, l2, ..., blank), vectorised over the batch and the label axis with
a loop over time; autograd differentiates it (any order). Same arguments and values as
`F.ctc_loss`; use that one for training, where it is faster.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor

from mpsearch.errors import MpsearchError

Reduction = Literal["none", "sum", "mean"]
REDUCTIONS = ("none", "sum", "mean")

# A finite stand-in for log(0): -inf gives NaN gradients in log-add and in the second derivative.
_LOG_ZERO = -1e30
# Any loss this large came from an alignment that does not exist (too few frames for the labels).
_IMPOSSIBLE = -_LOG_ZERO / 2


def ctc_loss(
    log_probs: Tensor,
    targets: Tensor,
    input_lengths: Tensor,
    target_lengths: Tensor,
    blank: int = 0,
    reduction: Reduction = "mean",
    zero_infinity: bool = False,
) -> Tensor:
    """CTC loss -log P(targets | inputs), as `torch.nn.functional.ctc_loss` computes it.

    Args:
        log_probs: (T, B, C) log-probabilities over C classes (log_softmax output).
        targets: (B, S) int labels, padded past ``target_lengths`` with any value.
        input_lengths: (B,) valid frames per utterance, each in [1, T].
        target_lengths: (B,) valid labels per utterance, each in [0, S].
        blank: index of the blank class.
        reduction: "none" gives (B,) losses; "sum" their sum; "mean" the mean over utterances of each
            loss divided by its target length (at least 1), as torch does.
        zero_infinity: replace the infinite loss of an impossible alignment (and its gradient) by 0.

    The gradient with respect to ``log_probs`` is the true one; torch's native kernel returns one
    that is only right after the log_softmax before it, so compare gradients through a log_softmax.
    """
    _check_inputs(log_probs, targets, input_lengths, target_lengths, blank, reduction)
    max_t, batch, _ = log_probs.shape
    device = log_probs.device
    input_lengths = input_lengths.to(device=device, dtype=torch.long)
    target_lengths = target_lengths.to(device=device, dtype=torch.long)
    n_labels = targets.shape[1]
    n_states = 2 * n_labels + 1

    valid = torch.arange(n_labels, device=device)[None, :] < target_lengths[:, None]
    labels = torch.where(valid, targets.to(device).long(), blank)
    extended = torch.full((batch, n_states), blank, dtype=torch.long, device=device)
    extended[:, 1::2] = labels
    # A label state may be entered from two states back unless that state holds the same label.
    may_skip = torch.zeros(batch, n_states, dtype=torch.bool, device=device)
    may_skip[:, 3::2] = labels[:, 1:] != labels[:, :-1]

    emissions = log_probs.gather(2, extended[None].expand(max_t, batch, n_states))  # (T, B, 2S+1)
    state = torch.arange(n_states, device=device)
    alpha = emissions[0].masked_fill(state[None, :] > 1, _LOG_ZERO)
    log_zero = alpha.new_full((batch, 1), _LOG_ZERO)
    log_zero2 = alpha.new_full((batch, 2), _LOG_ZERO)
    running = input_lengths[:, None] > torch.arange(max_t, device=device)[None, :]  # (B, T)
    for t in range(1, max_t):
        stay = alpha
        advance = torch.cat([log_zero, alpha], dim=1)[:, :n_states]
        skip = torch.cat([log_zero2, alpha], dim=1)[:, :n_states].masked_fill(~may_skip, _LOG_ZERO)
        step = _log_add3(stay, advance, skip) + emissions[t]
        # An utterance that has ended keeps its last forward variables.
        alpha = torch.where(running[:, t, None], step, alpha)

    rows = torch.arange(batch, device=device)
    end = 2 * target_lengths
    last_blank = alpha[rows, end]
    last_label = torch.where(target_lengths > 0, alpha[rows, (end - 1).clamp(min=0)], _LOG_ZERO)
    losses = -_log_add3(last_blank, last_label, torch.full_like(last_blank, _LOG_ZERO))
    impossible = losses > _IMPOSSIBLE
    losses = torch.where(impossible, 0.0 if zero_infinity else float("inf"), losses)

    if reduction == "none":
        return losses
    if reduction == "sum":
        return losses.sum()
    return (losses / target_lengths.clamp(min=1).to(losses.dtype)).mean()


def _log_add3(a: Tensor, b: Tensor, c: Tensor) -> Tensor:
    """log(exp(a) + exp(b) + exp(c)), twice differentiable without overflow.

    The shift m cancels exactly, so detaching it changes no value and no derivative; it only keeps
    the exponentials in range (torch.logsumexp's double backward turns -inf into NaN).
    """
    m = torch.maximum(torch.maximum(a, b), c).detach()
    return m + torch.log(torch.exp(a - m) + torch.exp(b - m) + torch.exp(c - m))


def _check_inputs(log_probs: Tensor, targets: Tensor, input_lengths: Tensor, target_lengths: Tensor,
                  blank: int, reduction: str) -> None:
    if reduction not in REDUCTIONS:
        raise MpsearchError(f"ctc_loss reduction {reduction!r} is unknown; use one of {', '.join(REDUCTIONS)}.")
    if log_probs.dim() != 3:
        raise MpsearchError(f"ctc_loss log_probs must be (T, B, C); got shape {tuple(log_probs.shape)}.")
    max_t, batch, classes = log_probs.shape
    if targets.dim() != 2 or targets.shape[0] != batch:
        raise MpsearchError(f"ctc_loss targets must be (B, S) with B = {batch}; got {tuple(targets.shape)}; "
                            "pass padded label rows.")
    if input_lengths.shape != (batch,) or target_lengths.shape != (batch,):
        raise MpsearchError(f"ctc_loss lengths must have shape ({batch},); got {tuple(input_lengths.shape)} "
                            f"and {tuple(target_lengths.shape)}; pass one length per utterance.")
    if not 0 <= blank < classes:
        raise MpsearchError(f"ctc_loss blank index {blank} is outside the classes [0, {classes}).")
    if input_lengths.min() < 1 or input_lengths.max() > max_t:
        raise MpsearchError(f"ctc_loss input_lengths must lie in [1, {max_t}]; got {input_lengths.tolist()}.")
    if target_lengths.min() < 0 or target_lengths.max() > targets.shape[1]:
        raise MpsearchError(f"ctc_loss target_lengths must lie in [0, {targets.shape[1]}]; "
                            f"got {target_lengths.tolist()}.")
