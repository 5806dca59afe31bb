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

It runs the same Optuna backend as `mpsearch search` (SQLite storage in `output_dir`, warm start with
the uniform policies, resumable by calling it again) with a trial of: `quant.apply` (fake quantization,
or `emulation="nna"` for models the NNA converter knows), calibration with `train_step` under no_grad,
a short AdamW fine-tune with `train_step`, then `evaluate` and the hardware latency model.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from mpsearch.config import SearchConfig, StudyConfig, TrainConfig
from mpsearch.errors import ConfigError, TrialError

if TYPE_CHECKING:
    import optuna
    import pandas as pd

    from mpsearch.quant import Policy
    from mpsearch.search.pareto import FrontTable

log = logging.getLogger(__name__)


@dataclass
class SearchResult:
    study: optuna.Study
    table: FrontTable

    @property
    def front(self) -> pd.DataFrame:
        return self.table.frame[self.table.frame["on_front"]].reset_index(drop=True)

    def knee(self) -> int:
        """The trial number at the knee of the front."""
        from mpsearch.search.pick import pick_trial

        return pick_trial(self.table, pick="knee").number

    def policy(self, trial: int) -> Policy:
        from mpsearch.search.pick import pick_trial

        return pick_trial(self.table, trial=trial).policy


def search_model(model_factory: Callable[[], nn.Module], train_step: Callable[[nn.Module, int], torch.Tensor],
                 evaluate: Callable[[nn.Module], Mapping[str, float]], space: Mapping[str, Any] | str | Path,
                 *, trials: int = 20, finetune_steps: int = 50, lr: float = 1e-4, calibration_steps: int = 4,
                 objectives: tuple[str, ...] = ("wer", "latency_ms"), profile: str = "nna-int8",
                 workload: Mapping[str, float] | None = None, emulation: str = "none", sampler: str = "nsga2",
                 name: str = "model-search", output_dir: str | Path = "runs/model-search",
                 storage: str | None = None, seed: int = 0, progress: bool = True) -> SearchResult:
    """Search per-site bit widths (and methods, sparsity) for any nn.Module; see the module docstring.

    `evaluate` must return every objective that is not a hardware metric (latency_ms, size_bytes,
    avg_weight_bits come from the latency model of `profile` and `workload`)."""
    from mpsearch.hardware import RooflineLatencyModel, Workload, load_profile
    from mpsearch.quant import find_sites
    from mpsearch.search.optuna_backend import run_optuna
    from mpsearch.search.pareto import FrontTable
    from mpsearch.search.space import SearchSpace
    from mpsearch.search.warm_start import uniform_starts

    search = SearchConfig.from_dict(
        {"objectives": list(objectives), "trials": trials, "sampler": sampler, "storage": storage, "seed": seed,
         "emulation": emulation, "finetune": {"max_steps": finetune_steps, "lr": lr, "warmup_steps": 0},
         "calibration_batches": calibration_steps}, source="search_model()")
    cfg = StudyConfig.from_dict({"name": name, "output_dir": str(output_dir), "model": {"name": "user"},
                                 "hardware": {"profile": profile, "workload": dict(workload or {})},
                                 "search": search.to_dict()}, source="search_model()")
    sites = find_sites(model_factory())
    if not sites:
        raise ConfigError("The model has no quantisable sites (Linear, Conv1d, Embedding, LSTM); nothing to search.")
    if isinstance(space, (str, Path)):
        space = SearchSpace.from_yaml(space, sites)
    else:
        space = SearchSpace.from_dict(dict(space), sites, source="search_model(space=...)")
    latency_model = RooflineLatencyModel(load_profile(profile), Workload.from_dict(dict(workload or {})))
    trial = _UserTrial(model_factory, train_step, evaluate, search, latency_model, sites, profile)
    study = run_optuna(cfg, space, uniform_starts(space), trial, trials=trials, progress=progress)
    return SearchResult(study, FrontTable.from_study(study, objectives, search.reference_point))


@dataclass
class _UserTrial:
    model_factory: Callable[[], nn.Module]
    train_step: Callable[[nn.Module, int], torch.Tensor]
    evaluate: Callable[[nn.Module], Mapping[str, float]]
    search: SearchConfig
    latency_model: Any
    sites: list
    profile: str

    def __call__(self, policy: Policy) -> dict[str, Any]:
        start = time.monotonic()
        metrics: dict[str, Any] = dict(self.latency_model(self.sites, policy).metrics())
        model = self.quantized(policy)
        metrics["finetune_seconds"] = round(self.finetune(model, self.search.finetune), 2)
        model.eval()
        with torch.no_grad():
            scores = dict(self.evaluate(model))
        bad = {k: v for k, v in scores.items() if not math.isfinite(float(v))}
        if bad:
            raise TrialError(f"evaluate() returned non-finite {bad}")
        metrics.update({k: float(v) for k, v in scores.items()})
        metrics["seconds"] = round(time.monotonic() - start, 2)
        return metrics

    def quantized(self, policy: Policy) -> nn.Module:
        from mpsearch.search.objective import calibrated_model

        steps = range(-self.search.calibration_batches, 0)  # negative steps: calibration, not training
        return calibrated_model(self.model_factory(), policy, self.search.emulation, self.profile, steps,
                                forward=self.train_step)

    def finetune(self, model: nn.Module, cfg: TrainConfig) -> float:
        from mpsearch.quant.methods.hooks import training_hooks

        start = time.monotonic()
        torch.manual_seed(cfg.seed)
        model.train()
        params = [p for p in model.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
        hooks = training_hooks(model, total_steps=cfg.max_steps)
        for step in range(cfg.max_steps):
            loss = self.train_step(model, step)
            if hooks.extra_loss is not None:
                loss = loss + hooks.extra_loss()
            if not torch.isfinite(loss):
                raise TrialError(f"training loss became {float(loss.detach())} at step {step}; lower lr")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
            optimizer.step()
            hooks.after_step(step + 1)
        hooks.finish()
        return time.monotonic() - start
