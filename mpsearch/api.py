"""The Python API: search mixed precision for your own model, without a study YAML.

    import mpsearch.api as mp

    result = mp.search_model(
        model_factory=load_my_trained_model,          # () -> the trained float nn.Module
        train_step=lambda model, step: my_loss(model, next(batches)),   # one batch's loss (no backward)
        evaluate=lambda model: {"wer": my_wer(model)},                  # the error objective, lower is better
        space={"groups": {"all": {"sites": "*", "weight_bits": [4, 6, 8]}}},
        trials=20, finetune_steps=50, output_dir="runs/my-model")
    print(result.front)                 # a DataFrame of the non-dominated trials
    result.policy(result.knee()).save("policy.json")

It runs the study flow of `mpsearch search` (`Study.run`: SQLite storage in `output_dir`, warm start
with the uniform policies, resumable by calling it again, the front and its knee policy written there)
with a trial of: `quant.apply` (fake quantization, or `emulation="nna"` for models the NNA converter
knows), calibration with `train_step` under no_grad (negative steps), the study's fine-tune with
`train_step` (the one training loop: AdamW, warm-up then cosine decay, an optional time limit, seeded),
then `evaluate` and the hardware latency model.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from mpsearch.config import StudyConfig
from mpsearch.errors import ConfigError

if TYPE_CHECKING:
    import optuna
    import pandas as pd

    from mpsearch.quant import Policy
    from mpsearch.search.pareto import FrontTable
    from mpsearch.search.pick import PickedTrial

log = logging.getLogger(__name__)


@dataclass
class SearchResult:
    study: optuna.Study
    table: FrontTable
    picked_knee: PickedTrial | None = None

    @property
    def front(self) -> pd.DataFrame:
        return self.table.frame[self.table.frame["on_front"]].reset_index(drop=True)

    def knee(self) -> int:
        """The trial number at the knee of the front."""
        from mpsearch.search.pick import pick_trial

        return (self.picked_knee or pick_trial(self.table, pick="knee")).number

    def policy(self, trial: int) -> Policy:
        from mpsearch.search.pick import pick_trial

        return pick_trial(self.table, trial=trial).policy


def search_model(model_factory: Callable[[], nn.Module], train_step: Callable[[nn.Module, int], torch.Tensor],
                 evaluate: Callable[[nn.Module], Mapping[str, float]], space: Mapping[str, Any] | str | Path,
                 *, trials: int = 20, finetune_steps: int = 50, lr: float = 1e-4, calibration_steps: int = 4,
                 objectives: tuple[str, ...] = ("wer", "latency_ms"), profile: str = "nna-int8",
                 workload: Mapping[str, float] | None = None, emulation: str = "none", sampler: str = "nsga2",
                 name: str = "model-search", output_dir: str | Path = "runs/model-search",
                 storage: str | None = None, seed: int = 0, progress: bool = True,
                 finetune: Mapping[str, Any] | None = None, workers: int | str = "auto") -> SearchResult:
    """Search per-site bit widths (and methods, sparsity) for any nn.Module; see the module docstring.

    `evaluate` must return every objective that is not a hardware metric (latency_ms, size_bytes,
    avg_weight_bits come from the latency model of `profile` and `workload`). `finetune` sets more of
    the fine-tune's fields (`search.finetune` of a study: warmup_steps, max_minutes, weight_decay, ...).
    `workers` trials run at once (`search.workers`: auto, one per free core; 1 repeats a search exactly)."""
    from mpsearch.search.pareto import load_front_table
    from mpsearch.study import Study
    from mpsearch.training.user import UserModel

    from_file = isinstance(space, (str, Path))
    cfg = StudyConfig.from_dict(
        {"name": name, "output_dir": str(output_dir), "model": {"name": "user"},
         "hardware": {"profile": profile, "workload": dict(workload or {})},
         "search": {"space": str(space) if from_file else None, "objectives": list(objectives), "trials": trials,
                    "workers": workers, "sampler": sampler,
                    "storage": storage, "seed": seed, "emulation": emulation, "calibration_batches": calibration_steps,
                    "warm_start": {"ilp": 0, "supernet": False},
                    "finetune": {"max_steps": finetune_steps, "lr": lr, "warmup_steps": 0, **dict(finetune or {})}}},
        source="search_model()")
    user = UserModel(model_factory, train_step, evaluate, space=None if from_file else dict(space))
    study = Study(cfg, progress=progress, user=user)
    if not study.sites():
        raise ConfigError("The model has no quantisable sites (Linear, Conv1d, Embedding, LSTM); nothing to search.")
    result = study.run()
    if result.front is not None:
        return SearchResult(result.trials, result.front, result.knee)
    return SearchResult(result.trials, load_front_table(cfg))

