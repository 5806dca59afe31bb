"""A model's loss on one batch, and the model state second derivatives are taken in.

Shared by every sensitivity backend so they all differentiate the same function of the same weights.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import torch
from torch import Tensor, nn

from mpsearch.errors import MpsearchError
from mpsearch.quant.sites import Site, find_sites

log = logging.getLogger(__name__)

LossFn = Callable[[nn.Module, Any], Tensor]


class SensitivityError(MpsearchError):
    """The Hessian of a model's loss cannot be estimated."""


def batch_loss(model: nn.Module, batch: Any) -> Tensor:
    """The model's scalar loss on `batch`: a speech Batch, a tuple of forward arguments or a mapping."""
    if hasattr(batch, "feats") and hasattr(batch, "target_lens"):  # mpsearch.data.pipeline.Batch
        return model(batch.feats, batch.feat_lens, batch.targets, batch.target_lens)
    if isinstance(batch, Mapping):
        return model(**batch)
    if isinstance(batch, (tuple, list)):
        return model(*batch)
    return model(batch)


def site_weights(model: nn.Module, sites: list[Site] | None = None) -> tuple[list[Site], list[nn.Parameter]]:
    """The model's sites (found when not given) and the weight tensor of each."""
    sites = find_sites(model) if sites is None else sites
    if not sites:
        raise SensitivityError(f"{type(model).__name__} has no quantisable sites (Linear, Conv1d, Embedding, "
                               "LSTM); there is nothing to score.")
    modules = dict(model.named_modules())
    return sites, [getattr(modules[s.module], s.param) for s in sites]


def scalar_loss(loss_fn: LossFn, model: nn.Module, batch: Any, index: int) -> Tensor:
    """loss_fn(model, batch), checked to be a finite scalar."""
    loss = loss_fn(model, batch)
    if not isinstance(loss, Tensor) or loss.dim() != 0:
        raise SensitivityError(f"The loss of batch {index} must be a scalar tensor (the model's forward should "
                               f"return its mean loss); got {type(loss).__name__} "
                               f"{tuple(loss.shape) if isinstance(loss, Tensor) else ''}.")
    if not torch.isfinite(loss):
        raise SensitivityError(f"The loss of batch {index} is {loss.item()}; the Hessian of a non-finite loss "
                               "is undefined (check the baseline model and the batch).")
    return loss


def not_twice_differentiable(model: nn.Module, exc: RuntimeError) -> SensitivityError:
    """The error to raise when double backward fails inside the model's loss."""
    first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return SensitivityError(
        f"The loss of {type(model).__name__} is not twice differentiable ({first}); Hessian traces need double "
        "backward through it: use a model whose loss supports it (a Conformer with a CTC head needs "
        "model.params.ctc_impl: pure; a task.adapter's CTC loss, mpsearch.models.ctc_loss.ctc_loss).")


@contextmanager
def second_order_mode(model: nn.Module, weights: list[nn.Parameter],
                      native_rnn: bool = True) -> Iterator[None]:
    """Grad mode on, eval mode (dropout off: the Hessian is of a deterministic function), gradients on
    `weights` only, and (with `native_rnn`) torch's native kernels instead of oneDNN's; everything, `.grad` included,
    is restored on exit.

    Only the site weights require grad, so the recorded graph holds nothing the site Hessian does not
    need. With oneDNN off, a Hessian-vector product of the quickstart RNN-T measured 15-25% faster on
    CPU (its fused LSTM layer's double backward is the slow part).
    """
    was_training = model.training
    saved = [(p, p.requires_grad, p.grad) for p in model.parameters()]
    wanted = {id(w) for w in weights}
    mkldnn = torch.backends.mkldnn.enabled
    model.eval()
    try:
        for p, _, _ in saved:
            p.requires_grad_(id(p) in wanted)
            p.grad = None
        torch.backends.mkldnn.enabled = mkldnn and not native_rnn
        with torch.enable_grad():  # a caller inside no_grad would otherwise get no graph to differentiate
            yield
    finally:
        torch.backends.mkldnn.enabled = mkldnn
        for p, flag, grad in saved:
            p.requires_grad_(flag)
            p.grad = grad
        model.train(was_training)
