"""One-shot shared weights: quantization-aware training of every width of the search space at once, so
that any policy of the space runs well without its own fine-tune; a one-shot trial is then calibrate +
evaluate.

Each step draws points of the space by the sandwich rule of once-for-all and BatchQuant-style supernets:
the widest point (every choice set at its most precise, densest candidate), the narrowest, and
`random_policies` points drawn uniformly per choice set; the step's loss is their mean, so one
backward pass carries the gradient of every drawn policy. The float weight of a site is shared by its
candidates; its quantizer state is per width (one weight quantizer per width in MixedPrecisionWeight,
so a learned part such as LSQ's step is learned per width). Activations stay float during this
training, as in the supernet search: under NNA emulation they are 8-bit for every policy, so they do
not tell the policies apart, and the LSTMs keep their fused kernel.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from mpsearch.supernet.network import ChoiceSet, Supernet

if TYPE_CHECKING:
    from mpsearch.config import TrainConfig
    from mpsearch.space import SearchSpace
    from mpsearch.training.tasks import Task

log = logging.getLogger(__name__)

SHARED_TYPE = "mpsearch.oneshot_weights"
SHARED_DIR = "oneshot"


def choice_cost(choice_set: ChoiceSet, index: int) -> float:
    """Bits kept per weight by candidate `index`: its width times the fraction of weights it keeps."""
    choice = choice_set.choices[index]
    sparsity = choice.sparsity_config
    if sparsity is None:
        return float(choice.weight_bits)
    kept = sparsity.n / sparsity.m if sparsity.method == "nm" else 1.0 - sparsity.fraction
    return choice.weight_bits * kept


def sandwich(choice_sets: Sequence[ChoiceSet], random_policies: int) -> list[list[int]]:
    """The candidate indices of one step's policies: the widest, the narrowest, then `random_policies`
    drawn uniformly per choice set from torch's global generator (which the trainer seeds, also when it
    resumes, so the draws are a function of the seed and the step)."""
    costs = [[choice_cost(cs, i) for i in range(len(cs.choices))] for cs in choice_sets]
    widest = [max(range(len(c)), key=c.__getitem__) for c in costs]
    narrowest = [min(range(len(c)), key=c.__getitem__) for c in costs]
    draws = [widest, narrowest]
    for _ in range(random_policies):
        draws.append([int(torch.randint(len(cs.choices), (1,))) for cs in choice_sets])
    return draws


class SandwichTask:
    """A task whose loss is the mean of `task`'s loss over one step's sandwich of policies of `supernet`
    (`task.model` must be `supernet.model`); batches and evaluation (at the widest point) are `task`'s."""

    def __init__(self, task: Task, supernet: Supernet, random_policies: int) -> None:
        self.task = task
        self.supernet = supernet
        self.model = supernet.model
        self.random_policies = random_policies

    def loss(self, batch: Any) -> torch.Tensor:
        draws = sandwich(self.supernet.choice_sets, self.random_policies)
        total = None
        for indices in draws:
            self.supernet.set_probs(self.supernet.one_hot(indices))
            loss = self.task.loss(batch)
            total = loss if total is None else total + loss
        return total / len(draws)

    def train_batches(self, seed: int) -> Iterator:
        return self.task.train_batches(seed)

    def evaluate(self, split: str) -> dict[str, float]:
        widest = sandwich(self.supernet.choice_sets, 0)[0]
        self.supernet.set_probs(self.supernet.one_hot(widest))
        return self.task.evaluate(split)


def train_shared_weights(float_model: nn.Module, space: SearchSpace, make_task: Callable[[nn.Module], Task],
                         cfg: TrainConfig, random_policies: int, checkpoint: Path | None = None,
                         checkpoint_key: str | None = None, progress: bool = False) -> tuple[dict[str, torch.Tensor], Any]:
    """Train the shared weights of `float_model` (untouched) over `space`; returns (the float model's state
    dict with the shared weights, the TrainResult). `make_task(model)` gives the task that trains a model;
    `checkpoint`/`checkpoint_key` make the training resumable after a kill, as the baseline's is."""
    from mpsearch.training.trainer import train

    supernet = Supernet(float_model, space)
    task = SandwichTask(make_task(supernet.model), supernet, random_policies)
    result = train(task, cfg, checkpoint=checkpoint, checkpoint_key=checkpoint_key, progress=progress)
    return shared_float_state(supernet, float_model), result


def shared_float_state(supernet: Supernet, float_model: nn.Module) -> dict[str, torch.Tensor]:
    """The supernet's shared weights under the float model's parameter names (quantizer state dropped:
    a trial calibrates its own)."""
    trained = supernet.model.state_dict()
    missing = [name for name in float_model.state_dict() if name not in trained]
    if missing:
        raise KeyError(f"the supernet lost the float model's entries {missing[:4]}")
    return {name: trained[name].detach().clone() for name in float_model.state_dict()}


def ensure_shared_weights(folder: str | Path, key: str, float_model: nn.Module, space: SearchSpace,
                          make_task: Callable[[nn.Module], Task], train: TrainConfig, random_policies: int,
                          progress: bool = False) -> dict[str, torch.Tensor]:
    """The shared weights (a state dict of `float_model`, which is left unchanged) in `folder`/oneshot/:
    loaded when their `key` (search.record.oneshot_key) matches, else trained, resuming from the training checkpoint
    beside them after a kill, and written atomically."""
    from mpsearch.artifacts import atomic_path, cached

    directory = Path(folder) / SHARED_DIR
    path = directory / "shared.pt"

    def compute() -> dict[str, torch.Tensor]:
        directory.mkdir(parents=True, exist_ok=True)
        log.info("training the one-shot shared weights (%d steps, %d policies a step)", train.max_steps,
                 2 + random_policies)
        state, result = train_shared_weights(float_model, space, make_task, train, random_policies,
                                             checkpoint=directory / "checkpoint.pt", checkpoint_key=key,
                                             progress=progress)
        with atomic_path(path) as tmp:
            torch.save({"_type": SHARED_TYPE, "_version": 1, "key": key, "state_dict": state, "steps": result.steps,
                        "seconds": round(result.seconds, 1), "final_loss": result.final_loss}, tmp)
        log.info("wrote %s (%d steps, %.0f s)", path, result.steps, result.seconds)
        return state

    def load(stored: Path) -> tuple[str, dict[str, torch.Tensor]]:
        data = torch.load(stored, weights_only=True)
        if not isinstance(data, dict) or data.get("_type") != SHARED_TYPE:
            raise ValueError(f"{stored} is not one-shot shared weights (no '_type: {SHARED_TYPE}')")
        return data["key"], data["state_dict"]

    return cached(path, key, compute, load)
