"""Per-site Hessian traces by Hutchinson's method, every site from the same Hessian-vector products.

For a Rademacher probe v over all site weights at once, E[v_l . (H v)_l] = tr(H_ll) for every site l,
so one Hessian-vector product (HVP) gives one sample of every site's trace.

How the HVPs are computed: reverse-over-reverse. Each batch's loss is differentiated once with
create_graph=True and that first-order graph is kept; each probe is then one more backward pass through
it (retain_graph=True), so the forward pass and the first backward are paid once per batch, not once per
probe. Alternatives measured on CPU, one thread (RNN-T and Conformer of the default configs, 8
utterances of 200 frames):
  - torch.func forward-over-reverse (jvp of grad) re-runs forward and backward for every probe: 3.3x
    slower per probe on the Conformer (0.66 s vs 0.20 s), and it fails on the RNN-T (oneDNN's LSTM
    has no forward-mode derivative, the RNN-T loss's autograd.Function no jvp rule).
  - Batching 4 probes with vmap (autograd.grad's is_grads_batched, or torch.func.vmap over it) was
    7-8x slower per probe than the loop on the RNN-T: the batched backward expands and copies.

Probes are drawn independently for each batch, and one "probe" of the estimator is one HVP on each
batch: its sample is the mean over batches of v_i . (H_i v_i), an unbiased sample of the trace of the
mean Hessian, with up to B times less variance than one probe shared by all B batches.

A site's sample v_l . (H v)_l carries cross terms v_l . H_lm v_m with every other probed site m: zero
mean, but noise that can dominate a site of low curvature next to one of high curvature. So a site
whose relative standard error is under the tolerance (after `min_probes`) stops being probed: its
probe entries become zero, its estimate is final, and it no longer adds noise to the others. The
remaining sites' later, quieter samples are weighted by their own variance (`SampleLog`'s segments),
so the early noise does not stay in their error.

Deflation (Hutch++, Meyer, Musco, Musco & Woodruff 2021, taken to block traces): a probe's noise comes
mostly from the few directions of largest curvature. When the first `min_probes` say that many more
probes are needed, each batch's Hessian H is sketched once: Q = orth(H S) for k random signs S (k HVPs),
then HQ (k more). With P = QQ^T, a site's trace splits into parts known exactly from Q and HQ,
tr_l(HP) + tr_l(PH) - tr_l(PHP), plus tr_l((I-P) H (I-P)), which later probes estimate with v_l . r_l,
r = (I-P) H (I-P) v. On the trained quickstart RNN-T (one batch, k=24) the per-probe variance of the
sites fell 1.6-9x (median ~3x); the 2k HVPs count against the probe budget.
"""

from __future__ import annotations

import itertools
import logging
import math
import time
from collections.abc import Iterable
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from mpsearch.config import SensitivityConfig
from mpsearch.quant.sites import Site
from mpsearch.sensitivity.estimate import SampleLog, TraceEstimate, finish_report
from mpsearch.sensitivity.loss import (
    LossFn,
    SensitivityError,
    batch_loss,
    not_twice_differentiable,
    scalar_loss,
    second_order_mode,
    site_weights,
)
from mpsearch.sensitivity.report import SensitivityReport

log = logging.getLogger(__name__)


def hessian_traces(model: nn.Module, batches: Iterable[Any], cfg: SensitivityConfig | None = None, *,
                   sites: list[Site] | None = None, loss_fn: LossFn = batch_loss,
                   progress: bool = False) -> SensitivityReport:
    """Per-site Hessian traces of the model's loss, with standard errors and the Omega table.

    Args:
        model: any nn.Module whose loss is twice differentiable (double backward); a Conformer with a
            CTC head needs `ctc_impl="pure"`, since torch's CTC kernel has no second derivative on CPU.
        batches: the first `cfg.batches` items are used; each is passed to `loss_fn`.
        cfg: probes, tolerance, seed, and the methods and bit widths of the Omega table.
        sites: the sites to score; default `find_sites(model)`. Only their weights are probed.
        loss_fn: (model, batch) -> scalar loss; default: the model's forward on a speech Batch or on a
            tuple / mapping of forward arguments. The models' losses ignore padding, so padding a batch
            more does not change the traces.
        progress: show a progress bar over probes.

    Probes continue until every site's relative standard error is below `cfg.tol` (checked once
    `cfg.min_probes` are in) or `cfg.max_probes` are spent. The model's weights are not changed; it is
    put in eval mode (no dropout) while its Hessian is taken and restored after. The first-order graphs
    of all batches are held at once: lower `cfg.batches` or the batch size if memory runs short.
    """
    cfg = cfg or SensitivityConfig()
    started = time.monotonic()
    estimate = estimate_traces(model, batches, cfg, sites=sites, loss_fn=loss_fn, progress=progress)
    return finish_report(model, estimate, cfg, "hutchinson", started)


def estimate_traces(model: nn.Module, batches: Iterable[Any], cfg: SensitivityConfig, *,
                    sites: list[Site] | None = None, loss_fn: LossFn = batch_loss,
                    progress: bool = False) -> TraceEstimate:
    """The Hutchinson estimate alone (no Omega table); see `hessian_traces`."""
    sites, weights = site_weights(model, sites)
    # Sites sharing one tensor (tied embeddings) are one block of the Hessian and share its trace.
    unique: dict[int, int] = {}
    slot = [unique.setdefault(id(w), len(unique)) for w in weights]
    params = list({id(w): w for w in weights}.values())

    with second_order_mode(model, params):
        graphs = _first_order_graphs(model, batches, cfg.batches, params, loss_fn)
        n_batches = len(graphs)
        generator = torch.Generator().manual_seed(cfg.seed)
        stats = SampleLog(len(params), min_segment=cfg.min_probes)
        live = np.ones(len(params), dtype=bool)  # weights still being probed
        deflations: list[_Deflation] | None = None
        rounds = 0  # Hessian-vector products per batch so far, deflation's included
        bar = tqdm(total=cfg.max_probes, desc="Hessian probes", unit="HVP", disable=not progress, leave=False)
        try:
            while rounds < cfg.max_probes and live.any():
                if deflations is None and _deflation_pays(stats, live, rounds, cfg):
                    deflations = [_deflate(model, grads, params, cfg.deflation_rank, generator) for grads in graphs]
                    rounds += 2 * cfg.deflation_rank
                    bar.update(2 * cfg.deflation_rank)
                    stats.new_segment()  # same expectation, other variance: weighted apart
                    continue
                if deflations is None:
                    per_batch = [_probe_sample(model, grads, params, live, generator) for grads in graphs]
                else:
                    per_batch = [d.sample(model, grads, params, live, generator) for d, grads in zip(deflations, graphs)]
                stats.add(np.mean(per_batch, axis=0), live)
                rounds += 1
                bar.update(1)
                if rounds >= cfg.min_probes:
                    live &= ~stats.converged(cfg.tol, cfg.min_probes)
        finally:
            bar.close()
            del graphs

    done = stats.converged(cfg.tol, cfg.min_probes)
    worst = float(np.max(stats.rel_stderr))
    log.info("Hessian traces of %d sites from %d HVPs x %d batches%s: worst relative error %.1f%% (%s)",
             len(sites), rounds, n_batches,
             f" ({2 * cfg.deflation_rank} of them deflating)" if deflations else "", 100 * worst,
             "converged" if done.all() else f"budget spent before tol {cfg.tol:g}")
    traces, errors = stats.mean, stats.stderr
    return TraceEstimate(sites=sites, traces=[float(traces[k]) for k in slot],
                         stderrs=[float(errors[k]) for k in slot], probes=[int(stats.counts[k]) for k in slot],
                         total_stderr=_total_stderr(stats, slot), batches=n_batches, converged=bool(done.all()))


def _total_stderr(stats: SampleLog, slot: list[int]) -> float:
    """Error of the summed site traces; a tied weight counts once per site that holds it."""
    return (stats if len(set(slot)) == len(slot) else stats.columns(slot)).total_stderr()


def _first_order_graphs(model: nn.Module, batches: Iterable[Any], n_batches: int, params: list[Tensor],
                        loss_fn: LossFn) -> list[tuple[Tensor | None, ...]]:
    """Per batch, the gradient of its loss with respect to `params`, with its graph kept for HVPs.

    A gradient that does not depend on the weights (a site the loss is linear in) is None: its Hessian
    rows are zero.
    """
    graphs = []
    for index, batch in enumerate(itertools.islice(batches, n_batches)):
        loss = scalar_loss(loss_fn, model, batch, index)
        grads = torch.autograd.grad(loss, params, create_graph=True, allow_unused=True)
        graphs.append(tuple(g if g is not None and g.requires_grad else None for g in grads))
    if not graphs:
        raise SensitivityError("No batches to estimate the Hessian on; pass at least one batch.")
    if len(graphs) < n_batches:
        log.warning("sensitivity asked for %d batches but only %d were available", n_batches, len(graphs))
    return graphs


def _probe_sample(model: nn.Module, grads: tuple[Tensor | None, ...], params: list[Tensor], live: np.ndarray,
                  generator: torch.Generator) -> np.ndarray:
    """v_l . (H v)_l for every live weight l (0 elsewhere), for one fresh Rademacher probe v on the live
    weights (zero on the others)."""
    probed = [i for i, g in enumerate(grads) if g is not None and live[i]]
    samples = np.zeros(len(params))
    if not probed:
        return samples
    probes = [_rademacher(params[i], generator) for i in probed]
    hv = _hvp(model, [grads[i] for i in probed], [params[i] for i in probed], probes)
    zero = params[0].new_zeros(())
    values = torch.stack([(v * h).sum() if h is not None else zero for v, h in zip(probes, hv)])
    samples[probed] = values.double().cpu().numpy()
    return samples


def _hvp(model: nn.Module, grads: list[Tensor], params: list[Tensor], vectors: list[Tensor]) -> tuple[Tensor | None, ...]:
    try:
        return torch.autograd.grad(grads, params, grad_outputs=vectors, retain_graph=True, allow_unused=True)
    except RuntimeError as exc:
        if "derivative for" in str(exc) or "not implemented" in str(exc).lower():
            raise not_twice_differentiable(model, exc) from None
        raise


def _deflation_pays(stats: SampleLog, live: np.ndarray, rounds: int, cfg: SensitivityConfig) -> bool:
    """After `min_probes`, deflate when plain probing would need more than the deflation's 2k HVPs to reach
    `tol` and the budget leaves `min_probes` deflated probes after paying for it."""
    cost = 2 * cfg.deflation_rank
    if not cost or rounds < cfg.min_probes or cfg.max_probes - rounds < cost + cfg.min_probes:
        return False
    counts, mean, err = stats.counts[live], np.abs(stats.mean[live]), stats.stderr[live]
    with np.errstate(divide="ignore", invalid="ignore"):
        needed = np.where(mean > 0, counts * (err / (cfg.tol * mean)) ** 2, math.inf) - counts
    return bool(np.max(needed, initial=0.0) > cost)


class _Deflation:
    """One batch's Hessian sketched on k directions: the exactly known part of every weight's trace, and
    the probe that estimates the rest (see the module docstring)."""

    def __init__(self, q: Tensor, exact: np.ndarray, spans: list[tuple[int, int]]) -> None:
        self.q, self.exact, self.spans = q, exact, spans

    def sample(self, model: nn.Module, grads: tuple[Tensor | None, ...], params: list[Tensor], live: np.ndarray,
               generator: torch.Generator) -> np.ndarray:
        """exact_l + v_l . r_l with r = (I-P) H (I-P) v, v Rademacher on the live weights, for every live l."""
        v = torch.cat([_rademacher(p, generator).flatten() if on else p.new_zeros(p.numel())
                       for p, on in zip(params, live)])
        residual = self._project_out(_flat_hvp(model, grads, params, self._project_out(v)))
        products = v * residual
        samples = np.zeros(len(params))
        for i, (start, end) in enumerate(self.spans):
            if live[i]:
                samples[i] = self.exact[i] + float(products[start:end].sum())
        return samples

    def _project_out(self, x: Tensor) -> Tensor:
        return x - self.q @ (self.q.T @ x)


def _deflate(model: nn.Module, grads: tuple[Tensor | None, ...], params: list[Tensor], rank: int,
             generator: torch.Generator) -> _Deflation:
    edges = np.cumsum([0] + [p.numel() for p in params])
    spans = [(int(a), int(b)) for a, b in zip(edges[:-1], edges[1:])]
    sketch = torch.stack([_flat_hvp(model, grads, params, torch.cat([_rademacher(p, generator).flatten() for p in params]))
                          for _ in range(rank)], dim=1)
    q = torch.linalg.qr(sketch).Q  # (n, min(n, k)) orthonormal
    hq = torch.stack([_flat_hvp(model, grads, params, q[:, j].contiguous()) for j in range(q.shape[1])], dim=1)
    small = q.T @ hq
    small = (small + small.T) / 2  # Q^T H Q is symmetric up to rounding
    # per coordinate i: the diagonals of HP + PH - PHP, i.e. 2 (HQ)_i . Q_i - Q_i (Q^T H Q) Q_i
    diagonal = 2 * (hq * q).sum(dim=1) - ((q @ small) * q).sum(dim=1)
    exact = np.array([float(diagonal[a:b].sum()) for a, b in spans])
    return _Deflation(q, exact, spans)


def _flat_hvp(model: nn.Module, grads: tuple[Tensor | None, ...], params: list[Tensor], vector: Tensor) -> Tensor:
    """H x for x flattened over `params` (zero rows for weights the loss is linear in)."""
    parts = torch.split(vector, [p.numel() for p in params])
    used = [i for i, g in enumerate(grads) if g is not None]
    out = [torch.zeros_like(part) for part in parts]
    if used:
        hv = _hvp(model, [grads[i] for i in used], [params[i] for i in used],
                  [parts[i].view_as(params[i]) for i in used])
        for i, h in zip(used, hv):
            if h is not None:
                out[i] = h.flatten()
    return torch.cat(out)


def _rademacher(like: Tensor, generator: torch.Generator) -> Tensor:
    v = torch.randint(0, 2, like.shape, generator=generator, dtype=like.dtype)
    return v.mul_(2).sub_(1).to(like.device)
