"""The supernet stage: supernet.json (and one policy file per lambda) in the study folder, reused while
the supernet settings, the search space file, the hardware section and the baseline are unchanged."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import torch

from mpsearch.artifacts import cached, read_json, write_json
from mpsearch.config import HardwareConfig, SupernetConfig, config_hash
from mpsearch.sensitivity.loss import LossFn, batch_loss
from mpsearch.space import SearchSpace
from mpsearch.supernet.search import SupernetCandidate, search

log = logging.getLogger(__name__)

SWEEP_FILE = "supernet.json"
POLICY_FOLDER = "supernet"
SWEEP_TYPE = "mpsearch.SupernetSweep"


def policy_path(study_dir: Path, lam: float) -> Path:
    return Path(study_dir) / POLICY_FOLDER / f"lambda-{lam:g}.policy.json"


def supernet_key(cfg: SupernetConfig, space_path: str | Path, hardware: HardwareConfig, baseline_key: str) -> str:
    """Hash of the supernet settings, the search space file's text, the hardware section and the baseline."""
    return config_hash(cfg, Path(space_path).read_text(), hardware, baseline_key)


def ensure_supernet(folder: str | Path, model: torch.nn.Module, space: SearchSpace, latency_model: Any,
                    cfg: SupernetConfig, key: str, batches: Callable[[int], Iterable[Any]], *,
                    space_path: str | Path = "", threads: int | None = None, progress: bool = False,
                    loss_fn: LossFn | None = None) -> list[SupernetCandidate]:
    """The supernet candidates of the float `model` (left unchanged), one per lambda, in `folder`: loaded
    when their `key` (supernet_key) matches, else searched over `space` with `batches(seed)` (one epoch of
    unaugmented training batches, as `loss_fn(model, batch)` takes them; default the model's forward) on
    `threads` torch threads, and written atomically."""
    path = Path(folder) / SWEEP_FILE

    def compute() -> list[SupernetCandidate]:
        if threads:
            torch.set_num_threads(threads)
        start = time.monotonic()
        candidates = search(model, space, latency_model, cfg, batches=batches, progress=progress,
                            loss_fn=loss_fn or batch_loss)
        for candidate in candidates:
            candidate.policy.save(policy_path(Path(folder), candidate.lam))
        write_json(path, {"_type": SWEEP_TYPE, "config_hash": key, "space": str(space_path),
                          "seconds": round(time.monotonic() - start, 1),
                          "candidates": [c.to_dict() for c in candidates]})
        log.info("wrote %s (%d candidates)", path, len(candidates))
        return candidates

    return cached(path, key, compute, _load_sweep)


def _load_sweep(path: Path) -> tuple[str, list[SupernetCandidate]]:
    data = read_json(path)
    if data.get("_type") != SWEEP_TYPE:
        raise ValueError(f"{path} is not a supernet sweep (no '_type: {SWEEP_TYPE}')")
    return data["config_hash"], [SupernetCandidate.from_dict(c, source=str(path)) for c in data["candidates"]]
