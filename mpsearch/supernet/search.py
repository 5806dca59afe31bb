"""The supernet search: alternate weight and logit updates under an annealed temperature, one run per
lambda, each deriving a Policy by argmax per ChoiceSet.

A step takes two batches of one stream: the first updates the shared float weights (AdamW) on the task
loss, the mixing probabilities held constant; the second updates the logits (Adam) on the task loss
plus lambda times the normalised expected latency (and `size_weight` times the normalised expected
size), the weights held constant. The temperature falls geometrically from `temperature_start` to
`temperature_end`. Mixing uses Gumbel-softmax samples when `gumbel` (noise from a generator seeded by
`seed`); the expected costs always use the noise-free softmax at the same temperature, so they are the
cost of the distribution the logits describe.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from mpsearch.config import SupernetConfig
from mpsearch.errors import DataError, TrialError
from mpsearch.quant import Policy
from mpsearch.sensitivity.loss import batch_loss as model_loss
from mpsearch.space import SearchSpace
from mpsearch.supernet.cost import ExpectedCost, LatencySource, as_latency_model
from mpsearch.supernet.network import Supernet

log = logging.getLogger(__name__)

LossFn = Callable[[nn.Module, Any], Tensor]
Batches = Callable[[int], Iterable[Any]] | Iterable[Any]


@dataclass(frozen=True)
class SupernetCandidate:
    """One lambda's result: the derived point of the search space and its modelled cost.

    expected_*: under the final softmax probabilities; latency_ms and size_bytes: the latency model on
    the derived policy. choices: ChoiceSet prefix -> chosen candidate ("4b", "4b 2:4");
    probabilities: prefix -> candidate -> final probability."""

    lam: float
    params: dict[str, int | str]
    policy: Policy
    expected_latency_ms: float
    latency_ms: float
    expected_size_bytes: float = math.nan
    size_bytes: int = 0
    choices: dict[str, str] = field(default_factory=dict)
    probabilities: dict[str, dict[str, float]] = field(default_factory=dict)
    final_loss: float = math.nan
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return {"lambda": self.lam, "params": dict(self.params), "policy": self.policy.to_dict(),
                "expected_latency_ms": self.expected_latency_ms, "latency_ms": self.latency_ms,
                "expected_size_bytes": self.expected_size_bytes, "size_bytes": self.size_bytes,
                # Pairs, not a mapping: JSON files are written with sorted keys, and the order is the space's.
                "choices": [[prefix, label] for prefix, label in self.choices.items()],
                "probabilities": self.probabilities,
                "final_loss": self.final_loss, "seconds": self.seconds}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], source: str = "<supernet candidate>") -> SupernetCandidate:
        choices = dict(data.get("choices", []))
        probabilities = dict(data.get("probabilities", {}))
        probabilities = {p: probabilities[p] for p in choices if p in probabilities} or probabilities
        return cls(lam=float(data["lambda"]), params=dict(data["params"]),
                   policy=Policy.from_dict(data["policy"], source=source),
                   expected_latency_ms=float(data["expected_latency_ms"]), latency_ms=float(data["latency_ms"]),
                   expected_size_bytes=float(data.get("expected_size_bytes", math.nan)),
                   size_bytes=int(data.get("size_bytes", 0)), choices=choices, probabilities=probabilities,
                   final_loss=float(data.get("final_loss", math.nan)), seconds=float(data.get("seconds", 0.0)))


def batch_stream(batches: Batches, seed: int) -> Iterator[Any]:
    """Endless batches: `batches(seed * 1000 + epoch)` epoch after epoch (as the trainer draws them), or
    a re-iterable collection cycled."""
    epoch = 0
    while True:
        seen = 0
        for batch in (batches(seed * 1000 + epoch) if callable(batches) else batches):
            seen += 1
            yield batch
        if seen == 0:
            raise DataError("The supernet's batches are empty (or a one-shot iterator already used up); pass "
                            "a list of batches or a function seed -> batches of one epoch.")
        epoch += 1


class SupernetTrainer:
    """The two optimisers and the two kinds of step of one supernet run at one lambda."""

    def __init__(self, supernet: Supernet, cost: ExpectedCost, cfg: SupernetConfig, lam: float,
                 loss_fn: LossFn = model_loss) -> None:
        self.supernet, self.cost, self.cfg, self.lam, self.loss_fn = supernet, cost, cfg, float(lam), loss_fn
        self.weights = supernet.weight_parameters()
        self.weight_optimizer = torch.optim.AdamW(self.weights, lr=cfg.weight_lr, weight_decay=0.0)
        self.arch_optimizer = torch.optim.Adam(supernet.arch_parameters(), lr=cfg.arch_lr)
        self.generator = torch.Generator().manual_seed(cfg.seed)

    def temperature(self, step: int) -> float:
        start, end = self.cfg.temperature_start, self.cfg.temperature_end
        return start * (end / start) ** (step / max(self.cfg.steps - 1, 1))

    def _mixing(self, temperature: float) -> list[Tensor]:
        return self.supernet.probabilities(temperature, self.generator, gumbel=self.cfg.gumbel)

    def weight_step(self, batch: Any, step: int) -> float:
        """One AdamW update of the shared weights on the task loss; returns the loss."""
        self.supernet.model.train()
        with torch.no_grad():
            self.supernet.set_probs(self._mixing(self.temperature(step)))
        loss = self._task_loss(batch, step)
        self.weight_optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.weights, self.cfg.grad_clip)
        self.weight_optimizer.step()
        return float(loss.detach())

    def arch_step(self, batch: Any, step: int) -> dict[str, float]:
        """One Adam update of the logits on task loss + lambda * latency penalty (+ size penalty)."""
        self.supernet.model.train()
        temperature = self.temperature(step)
        self.supernet.set_probs(self._mixing(temperature))
        # The weights are constants here: no gradient is computed for them.
        for p in self.weights:
            p.requires_grad_(False)
        try:
            task = self._task_loss(batch, step)
        finally:
            for p in self.weights:
                p.requires_grad_(True)
        probs = self.supernet.probabilities(temperature)
        loss = task
        latency = self.cost.latency_ms(probs)
        if self.lam:
            loss = loss + self.lam * self.cost.normalised_latency(latency)
        if self.cfg.size_weight:
            loss = loss + self.cfg.size_weight * self.cost.size_penalty(probs)
        self.arch_optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.arch_optimizer.step()
        return {"task_loss": float(task.detach()), "expected_latency_ms": float(latency.detach())}

    def _task_loss(self, batch: Any, step: int) -> Tensor:
        loss = self.loss_fn(self.supernet.model, batch)
        if not isinstance(loss, Tensor) or loss.dim() != 0:
            raise TrialError("The supernet's loss must be a scalar tensor (the model's forward should return its "
                             "mean loss); pass a loss_fn that returns one.")
        if not torch.isfinite(loss):
            raise TrialError(f"The supernet's loss became {float(loss.detach())} at step {step}; lower "
                             "supernet.weight_lr or check the model.")
        return loss

    def run(self, batches: Batches, progress: bool = False, desc: str = "supernet") -> float:
        """`cfg.steps` steps; returns the last weight-step loss."""
        stream = batch_stream(batches, self.cfg.seed)
        loss = math.nan
        bar = tqdm(range(self.cfg.steps), disable=not progress, desc=desc, unit="step", dynamic_ncols=True)
        for step in bar:
            loss = self.weight_step(next(stream), step)
            if step >= self.cfg.warmup_steps:
                arch = self.arch_step(next(stream), step)
                bar.set_postfix(loss=f"{loss:.3f}", latency=f"{arch['expected_latency_ms']:.2f}ms",
                                tau=f"{self.temperature(step):.2f}")
        bar.close()
        return loss

    def candidate(self, final_loss: float = math.nan, seconds: float = 0.0) -> SupernetCandidate:
        """The derived policy (argmax per ChoiceSet) with its expected and exact modelled cost."""
        with torch.no_grad():
            probs = self.supernet.probabilities(self.temperature(self.cfg.steps - 1))
            expected_latency = float(self.cost.latency_ms(probs))
            expected_size = float(self.cost.size_bytes(probs))
        indices = self.supernet.argmax()
        params, policy = self.supernet.derive(indices)
        report = self.cost.latency_model(self.supernet.sites, policy)
        return SupernetCandidate(lam=self.lam, params=params, policy=policy,
                                 expected_latency_ms=expected_latency, latency_ms=report.latency_ms,
                                 expected_size_bytes=expected_size, size_bytes=report.memory_bytes,
                                 choices=self.supernet.labels(indices),
                                 probabilities=self.supernet.probability_table(probs),
                                 final_loss=final_loss, seconds=round(seconds, 2))


def search(model: nn.Module, space: SearchSpace, profile_or_latency_model: LatencySource,
           cfg: SupernetConfig | None = None, *, batches: Batches, loss_fn: LossFn = model_loss,
           progress: bool = False) -> list[SupernetCandidate]:
    """The differentiable mixed-precision search: one SupernetCandidate per lambda of `cfg.lambdas`.

    Every searched site of `space` (built for `model`'s sites) gets architecture logits over its group's
    weight_bits x sparsity choices (per tied group, or per site of an untied group); method and act_bits
    are the group's first choices. Each lambda starts afresh from `model` (untouched) with uniform
    logits, so the sweep is deterministic for a seed. `batches` is a function seed -> one epoch of
    training batches (e.g. `task.train_batches`) or a re-iterable collection; `loss_fn(model, batch)`
    returns the scalar task loss (default: the model's forward on the batch).
    """
    cfg = cfg or SupernetConfig()
    latency_model = as_latency_model(profile_or_latency_model)
    candidates = []
    for lam in cfg.lambdas:
        start = time.monotonic()
        torch.manual_seed(cfg.seed)  # dropout draws the same masks for every lambda
        supernet = Supernet(model, space, quantize_activations=cfg.quantize_activations)
        trainer = SupernetTrainer(supernet, ExpectedCost(supernet, latency_model), cfg, lam, loss_fn)
        loss = trainer.run(batches, progress, desc=f"supernet lambda={lam:g}")
        candidate = trainer.candidate(loss, time.monotonic() - start)
        log.info("lambda %g: expected %.3f ms, exact %.3f ms, %s", lam, candidate.expected_latency_ms,
                 candidate.latency_ms, ", ".join(f"{k}={v}" for k, v in candidate.choices.items()))
        candidates.append(candidate)
    return candidates
