"""Optional backend and cross-check: Hessian traces from PyHessian (`pip install 'mpsearch[hessian]'`).

PyHessian's source headers say GPL-3.0 (its setup says MIT), so it stays an optional extra, imported
only here and only when used. It calls `criterion(model(inputs), targets)`; a speech model's forward
already returns its loss, so the model is wrapped in a module whose forward is the loss and the
criterion returns its input. PyHessian probes every parameter that requires grad; inside
`second_order_mode` only the site weights do, so its sums are comparable with ours.

PyHessian's trace stops when the running mean changes by less than `tol` (relative) between probes,
not on the standard error, and it estimates one trace per call; per-site traces therefore take one
run per site (HAWQ-V2's way), each probing that site's weights alone.
"""

from __future__ import annotations

import itertools
import time
import warnings
from collections.abc import Iterable
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from mpsearch.config import SensitivityConfig
from mpsearch.quant.sites import Site
from mpsearch.sensitivity.estimate import SampleLog, TraceEstimate, finish_report
from mpsearch.sensitivity.loss import LossFn, SensitivityError, batch_loss, second_order_mode, site_weights
from mpsearch.sensitivity.report import SensitivityReport

INSTALL_HINT = ("PyHessian is not installed; install the optional extra with `pip install 'mpsearch[hessian]'` "
                "(PyHessian's source headers say GPL-3.0 while its setup says MIT: check that its license "
                "suits you), or use sensitivity.backend: hutchinson.")


def import_pyhessian():
    """The pyhessian module, or a SensitivityError with the install hint."""
    try:
        import pyhessian
    except ImportError:
        raise SensitivityError(INSTALL_HINT) from None
    return pyhessian


class _LossModule(nn.Module):
    """model(inputs) for PyHessian: the wrapped model's loss on the batch carried by `inputs`."""

    def __init__(self, model: nn.Module, loss_fn: LossFn) -> None:
        super().__init__()
        self.model = model
        self.loss_fn = loss_fn

    def forward(self, inputs: _BatchInputs) -> Tensor:
        return self.loss_fn(self.model, inputs.batch)


class _BatchInputs:
    """A batch as PyHessian's loops handle inputs: `size(0)` is 1 so batches weigh equally (each loss is
    already a mean over its utterances, as in our estimator); moving it is a no-op."""

    def __init__(self, batch: Any) -> None:
        self.batch = batch

    def size(self, dim: int = 0) -> int:
        return 1

    def to(self, device: Any) -> _BatchInputs:
        return self

    def cuda(self) -> _BatchInputs:
        return self


def _loss_is_criterion(loss: Tensor, targets: Tensor) -> Tensor:
    return loss


def _run_trace(model: nn.Module, batches: list[Any], loss_fn: LossFn, max_probes: int, tol: float,
               seed: int) -> list[float]:
    """PyHessian's trace samples over every parameter that currently requires grad."""
    pyhessian = import_pyhessian()
    wrapped = _LossModule(model, loss_fn)
    cuda = next(model.parameters()).is_cuda
    dummy = torch.zeros(1)
    with torch.random.fork_rng(devices=[]), warnings.catch_warnings():
        torch.manual_seed(seed)  # PyHessian draws its probes from the global generator
        # PyHessian calls backward(create_graph=True); second_order_mode resets .grad, breaking the cycle.
        warnings.filterwarnings("ignore", message="Using backward\\(\\) with create_graph=True")
        if len(batches) == 1:  # one batch: PyHessian keeps the first-order graph for every probe
            data = (_BatchInputs(batches[0]), dummy)
            engine = pyhessian.hessian(wrapped, _loss_is_criterion, data=data, cuda=cuda)
        else:
            loader = [(_BatchInputs(b), dummy) for b in batches]
            engine = pyhessian.hessian(wrapped, _loss_is_criterion, dataloader=loader, cuda=cuda)
        samples = engine.trace(maxIter=max_probes, tol=tol)
    del engine
    return [float(s) for s in samples]


def pyhessian_total_trace(model: nn.Module, batches: Iterable[Any], *, sites: list[Site] | None = None,
                          loss_fn: LossFn = batch_loss, n_batches: int = 1, max_probes: int = 100,
                          tol: float = 1e-3, seed: int = 0, native_rnn: bool = False) -> tuple[float, float, int]:
    """PyHessian's whole-model trace over all site weights together: (mean, standard error, probes).

    `tol` is PyHessian's own stopping rule (relative change of the running mean, divided by the mean
    itself, so a negative mean can stop it at once); pass -math.inf to run exactly `max_probes` probes.
    `native_rnn` picks native instead of oneDNN kernels (our estimator's choice); otherwise PyHessian
    runs with torch's defaults.
    """
    sites, weights = site_weights(model, sites)
    params = list({id(w): w for w in weights}.values())
    batches = list(itertools.islice(batches, n_batches))
    if not batches:
        raise SensitivityError("No batches to estimate the Hessian on; pass at least one batch.")
    with second_order_mode(model, params, native_rnn=native_rnn):
        samples = _run_trace(model, batches, loss_fn, max_probes, tol, seed)
    stats = _stats(samples)
    return float(stats.mean[0]), float(stats.stderr[0]), int(stats.counts[0])


def pyhessian_traces(model: nn.Module, batches: Iterable[Any], cfg: SensitivityConfig | None = None, *,
                     sites: list[Site] | None = None, loss_fn: LossFn = batch_loss,
                     progress: bool = False) -> SensitivityReport:
    """Per-site traces from PyHessian, one run per site (up to `cfg.max_probes` probes each, PyHessian's
    own `tol` rule), as a SensitivityReport like `hessian_traces` gives."""
    cfg = cfg or SensitivityConfig()
    started = time.monotonic()
    import_pyhessian()
    sites, weights = site_weights(model, sites)
    batches = list(itertools.islice(batches, cfg.batches))
    if not batches:
        raise SensitivityError("No batches to estimate the Hessian on; pass at least one batch.")
    from tqdm.auto import tqdm

    traces, errors, probes = [], [], []
    done: dict[int, tuple[float, float, int]] = {}
    for site, weight in tqdm(list(zip(sites, weights)), desc="PyHessian sites", disable=not progress, leave=False):
        if id(weight) not in done:  # tied weights are one Hessian block
            with second_order_mode(model, [weight], native_rnn=False):
                stats = _stats(_run_trace(model, batches, loss_fn, cfg.max_probes, cfg.tol, cfg.seed))
            done[id(weight)] = (float(stats.mean[0]), float(stats.stderr[0]), int(stats.counts[0]))
        trace, error, count = done[id(weight)]
        traces.append(trace)
        errors.append(error)
        probes.append(count)
    rel = [e / abs(t) if t else (0.0 if e == 0 else np.inf) for t, e in zip(traces, errors)]
    # Each site had its own probes, so the errors of the sum add in quadrature (tied weights twice).
    total = float(np.sqrt(np.sum(np.square(errors))))
    estimate = TraceEstimate(sites=sites, traces=traces, stderrs=errors, probes=probes, total_stderr=total,
                             batches=len(batches), converged=bool(all(r < cfg.tol for r in rel)))
    return finish_report(model, estimate, cfg, "pyhessian", started)


def _stats(samples: list[float]) -> SampleLog:
    stats = SampleLog(1)
    for s in samples:
        stats.add(np.array([s]))
    return stats
