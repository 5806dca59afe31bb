"""The study's supernet stage: supernet.json (and one policy file per lambda) in the study folder, reused
while the supernet settings, the search space file, the hardware section and the baseline are unchanged."""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from mpsearch.artifacts import cached, read_json, write_json
from mpsearch.config import config_hash
from mpsearch.errors import ConfigError
from mpsearch.quant import find_sites
from mpsearch.search.space import SearchSpace
from mpsearch.supernet.search import SupernetCandidate, search

if TYPE_CHECKING:  # the study sits above this package; only its interface is used here
    from mpsearch.study import Study

log = logging.getLogger(__name__)

SWEEP_FILE = "supernet.json"
POLICY_FOLDER = "supernet"
SWEEP_TYPE = "mpsearch.SupernetSweep"


def policy_path(study_dir: Path, lam: float) -> Path:
    return Path(study_dir) / POLICY_FOLDER / f"lambda-{lam:g}.policy.json"


def supernet_key(study: Study) -> str:
    """Hash of the supernet settings, the search space file's text, the hardware section and the baseline."""
    return config_hash(study.cfg.supernet, _space_path(study).read_text(), study.cfg.hardware, study.baseline_key)


def ensure_supernet(study: Study) -> list[SupernetCandidate]:
    """The study's supernet candidates, one per lambda: loaded when their key matches, else searched from
    the float baseline (trained first if needed) and written atomically."""
    path = Path(study.dir) / SWEEP_FILE
    space_path = _space_path(study)
    key = supernet_key(study)

    def compute() -> list[SupernetCandidate]:
        model, _ = study.baseline()
        space = SearchSpace.from_yaml(space_path, find_sites(model))
        cfg = study.cfg.supernet
        threads = getattr(study.cfg.train, "threads", None)
        if threads:
            torch.set_num_threads(threads)
        start = time.monotonic()
        candidates = search(model, space, study.latency_model(), cfg, batches=_batches(study, model),
                            progress=getattr(study, "progress", False))
        for candidate in candidates:
            candidate.policy.save(policy_path(study.dir, candidate.lam))
        write_json(path, {"_type": SWEEP_TYPE, "config_hash": key, "space": str(space_path),
                          "seconds": round(time.monotonic() - start, 1),
                          "candidates": [c.to_dict() for c in candidates]})
        log.info("wrote %s (%d candidates)", path, len(candidates))
        return candidates

    return cached(path, key, compute, _load_sweep)


def _space_path(study: Study) -> Path:
    space = study.cfg.search.space
    if not space:
        raise ConfigError("search.space is not set; the supernet searches a search space: set search.space to a "
                          "file in search_spaces/ (e.g. search_spaces/rnnt_groups.yaml).")
    path = Path(space)
    if not path.is_file():
        raise ConfigError(f"Search space '{path}' does not exist; point search.space at a file in search_spaces/.")
    return path


def _load_sweep(path: Path) -> tuple[str, list[SupernetCandidate]]:
    data = read_json(path)
    if data.get("_type") != SWEEP_TYPE:
        raise ValueError(f"{path} is not a supernet sweep (no '_type: {SWEEP_TYPE}')")
    return data["config_hash"], [SupernetCandidate.from_dict(c, source=str(path)) for c in data["candidates"]]


def _batches(study: Study, model: torch.nn.Module) -> Any:
    """seed -> one epoch of unaugmented training batches."""
    if getattr(model, "kind", None) == "lm":
        return study.task(model, augment=False).train_batches
    frames = study.cfg.supernet.max_batch_frames or study.cfg.data.max_batch_frames
    return lambda seed: study.data.train.batches(frames, shuffle=True, seed=seed)
