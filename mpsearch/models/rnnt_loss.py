"""RNN-T (transducer) negative log-likelihood in pure PyTorch.

Autograd differentiates the lattice recursion; only the log_softmax-and-gather step has a
hand-written backward, to avoid (B, T, U+1, V) temporaries.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor

from mpsearch.errors import MpsearchError

Reduction = Literal["none", "sum", "mean", "token_mean"]
REDUCTIONS = ("none", "sum", "mean", "token_mean")

# A finite stand-in for log(0): logaddexp(-inf, -inf) has a NaN gradient, and unreachable lattice
# cells would otherwise poison the backward pass through the multiplication by a zero gradient.
_LOG_ZERO = -1e30


def rnnt_loss(
    logits: Tensor,
    targets: Tensor,
    logit_lengths: Tensor,
    target_lengths: Tensor,
    blank: int = 0,
    reduction: Reduction = "mean",
    fused_log_softmax: bool = True,
) -> Tensor:
    """Transducer loss -log P(targets | inputs), summed over all monotonic alignments.

    Args:
        logits: (B, T, U+1, V) joiner outputs; unnormalised scores when ``fused_log_softmax`` is
            True (log_softmax is applied here), else log-probabilities.
        targets: (B, U) int64 labels, padded past ``target_lengths`` with any value.
        logit_lengths: (B,) valid encoder frames per utterance, each in [1, T].
        target_lengths: (B,) valid labels per utterance, each in [0, U].
        blank: index of the blank symbol.
        reduction: "none" gives the (B,) per-utterance losses; "sum" their sum; "mean" their mean
            over utterances; "token_mean" their sum divided by the total number of target tokens
            (each utterance counted at least once), which keeps the scale independent of length.
        fused_log_softmax: apply log_softmax over V inside (set False to pass log-probabilities).

    Returns:
        The per-utterance losses (reduction "none") or a scalar. Computed in at least float32.
    """
    _check_inputs(logits, targets, logit_lengths, target_lengths, blank, reduction)
    if logits.dtype in (torch.float16, torch.bfloat16):
        logits = logits.float()
    batch = logits.shape[0]
    logit_lengths = logit_lengths.to(device=logits.device, dtype=torch.long)
    target_lengths = target_lengths.to(device=logits.device, dtype=torch.long)

    blank_lp, label_lp = _gather_log_probs(logits, targets, target_lengths, blank, fused_log_softmax)
    alpha_end = _forward_variables_at_end(blank_lp, label_lp, logit_lengths, target_lengths)
    batch_index = torch.arange(batch, device=logits.device)
    losses = -(alpha_end + blank_lp[batch_index, logit_lengths - 1, target_lengths])

    if reduction == "none":
        return losses
    if reduction == "sum":
        return losses.sum()
    if reduction == "mean":
        return losses.mean()
    return losses.sum() / target_lengths.clamp(min=1).sum()


def _gather_log_probs(logits: Tensor, targets: Tensor, target_lengths: Tensor, blank: int,
                      fused_log_softmax: bool) -> tuple[Tensor, Tensor]:
    """(B, T, U+1) blank log-probs and (B, T, U) next-label log-probs; V is dropped here."""
    batch, max_t, n_states, _ = logits.shape
    max_u = n_states - 1
    # Padding labels may be -1 or out of range; any valid index will do, those cells are never read.
    valid = torch.arange(max_u, device=logits.device)[None, :] < target_lengths[:, None]
    safe_targets = torch.where(valid, targets.to(logits.device), blank).long()
    next_label = torch.nn.functional.pad(safe_targets, (0, 1), value=blank)  # none after the last
    index = torch.stack([torch.full_like(next_label, blank), next_label], dim=-1)
    index = index[:, None].expand(batch, max_t, n_states, 2)
    if fused_log_softmax:
        picked = _PickNormalized.apply(logits, index)
    else:
        picked = logits.gather(-1, index)
    return picked[..., 0], picked[..., 1][:, :, :max_u]


class _PickNormalized(torch.autograd.Function):
    """log_softmax(logits).gather(-1, index) without materialising log_softmax.

    Autograd through logsumexp + gather allocates and fills several (B, T, U+1, V) tensors in the
    backward pass; here the gradient is built in a single buffer, which halves the loss's time.
    """

    @staticmethod
    def forward(ctx, logits: Tensor, index: Tensor) -> Tensor:
        norm = logits.logsumexp(dim=-1, keepdim=True)
        ctx.save_for_backward(logits, norm, index)
        return logits.gather(-1, index) - norm

    @staticmethod
    def backward(ctx, grad_picked: Tensor):
        logits, norm, index = ctx.saved_tensors
        picked_total = grad_picked.sum(dim=-1, keepdim=True)
        if torch.is_grad_enabled():
            # create_graph (Hessian-vector products): the saved norm has no graph back to logits,
            # so recompute it, and stay out of place.
            probs = torch.softmax(logits, dim=-1)
            return (probs * -picked_total).scatter_add(-1, index, grad_picked), None
        probs = torch.exp(logits - norm)
        probs.mul_(-picked_total)
        return probs.scatter_add_(-1, index, grad_picked), None


def _forward_variables_at_end(blank_lp: Tensor, label_lp: Tensor, logit_lengths: Tensor,
                              target_lengths: Tensor) -> Tensor:
    """alpha(T_b - 1, U_b) per utterance, by the forward recursion over anti-diagonals.

    Every cell on the diagonal t + u = n depends only on diagonal n - 1, so each step is one
    vectorised update over (B, U+1); the loop runs T + U - 1 times. Diagonal n is stored indexed by u
    (cell (n - u, u)), which makes "one more blank" the same u and "one more label" u - 1.
    """
    batch, max_t, n_states = blank_lp.shape
    device, dtype = blank_lp.device, blank_lp.dtype
    n_diagonals = int((logit_lengths - 1 + target_lengths).max().item()) + 1

    # skew[:, n, u] = lattice[:, n - u, u]; cells outside 0 <= t < T read log(0).
    u_index = torch.arange(n_states, device=device)
    t_index = torch.arange(n_diagonals, device=device)[:, None] - u_index[None, :]
    inside = (t_index >= 0) & (t_index < max_t)
    t_clamped = t_index.clamp(0, max_t - 1)
    blank_skew = blank_lp[:, t_clamped, u_index[None, :]].masked_fill(~inside, _LOG_ZERO)
    label_padded = torch.nn.functional.pad(label_lp, (1, 0), value=_LOG_ZERO)  # label into u from u-1
    label_skew = label_padded[:, t_clamped, u_index[None, :]].masked_fill(~inside, _LOG_ZERO)

    alpha = torch.full((batch, n_states), _LOG_ZERO, device=device, dtype=dtype)
    alpha = torch.cat([torch.zeros_like(alpha[:, :1]), alpha[:, 1:]], dim=1)
    diagonals = [alpha]
    log_zero_column = alpha.new_full((batch, 1), _LOG_ZERO)
    # unbind once: indexing inside the loop would give each step a full-size zero gradient buffer.
    blank_steps, label_steps = blank_skew.unbind(1), label_skew.unbind(1)
    for n in range(1, n_diagonals):
        from_blank = alpha + blank_steps[n - 1]
        from_label = torch.cat([log_zero_column, alpha[:, :-1]], dim=1) + label_steps[n]
        alpha = _log_add(from_blank, from_label)
        diagonals.append(alpha)

    alphas = torch.stack(diagonals, dim=1)  # (B, N, U+1)
    batch_index = torch.arange(batch, device=device)
    return alphas[batch_index, logit_lengths - 1 + target_lengths, target_lengths]


def _log_add(a: Tensor, b: Tensor) -> Tensor:
    """log(exp(a) + exp(b)), twice differentiable without overflow.

    torch.logaddexp's gradient divides by 1 + exp(b - a), whose own derivative is inf / inf = NaN
    once |a - b| passes ~88 (float32), which breaks Hessian-vector products through the loss. The
    shift m cancels exactly, so detaching it leaves the value and every derivative unchanged.
    """
    m = torch.maximum(a, b).detach()
    return m + torch.log(torch.exp(a - m) + torch.exp(b - m))


def _check_inputs(logits: Tensor, targets: Tensor, logit_lengths: Tensor, target_lengths: Tensor,
                  blank: int, reduction: str) -> None:
    if reduction not in REDUCTIONS:
        raise MpsearchError(f"rnnt_loss reduction {reduction!r} is unknown; "
                            f"use one of {', '.join(REDUCTIONS)}.")
    if logits.dim() != 4:
        raise MpsearchError(f"rnnt_loss logits must be (B, T, U+1, V); got shape {tuple(logits.shape)}; "
                            "pass the joiner output over every (frame, label) pair.")
    batch, max_t, n_states, vocab = logits.shape
    if targets.dim() != 2 or targets.shape[0] != batch or targets.shape[1] + 1 != n_states:
        raise MpsearchError(f"rnnt_loss targets must be (B, U) = ({batch}, {n_states - 1}) to match logits "
                            f"{tuple(logits.shape)}; got {tuple(targets.shape)}; "
                            "pass the labels the predictor was fed.")
    if logit_lengths.shape != (batch,) or target_lengths.shape != (batch,):
        raise MpsearchError(f"rnnt_loss lengths must have shape ({batch},); got {tuple(logit_lengths.shape)} "
                            f"and {tuple(target_lengths.shape)}; pass one length per utterance.")
    if not 0 <= blank < vocab:
        raise MpsearchError(f"rnnt_loss blank index {blank} is outside the vocabulary [0, {vocab}); "
                            "pass the tokenizer's blank.")
    if logit_lengths.min() < 1 or logit_lengths.max() > max_t:
        raise MpsearchError(f"rnnt_loss logit_lengths must lie in [1, {max_t}]; "
                            f"got {logit_lengths.tolist()}; drop utterances with no encoder frames.")
    if target_lengths.min() < 0 or target_lengths.max() > n_states - 1:
        raise MpsearchError(f"rnnt_loss target_lengths must lie in [0, {n_states - 1}]; "
                            f"got {target_lengths.tolist()}; pass the unpadded label counts.")
    positions = torch.arange(n_states - 1, device=targets.device)
    labels = targets[positions[None, :] < target_lengths.to(targets.device)[:, None]]
    if labels.numel() and (labels.min() < 0 or labels.max() >= vocab or (labels == blank).any()):
        raise MpsearchError(f"rnnt_loss targets must be labels in [0, {vocab}) other than blank {blank}; "
                            f"got values in [{int(labels.min())}, {int(labels.max())}]; "
                            "fix the tokenizer's ids.")
