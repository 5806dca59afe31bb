"""The baseline stage: the float model every trial starts from, with its dev and test scores, in
`baseline/` of the study folder (metrics.json written last, model.pt), keyed by what it depends on.

It comes from a trained checkpoint (`baseline.checkpoint`: checked against the study, then evaluated)
or is trained from the study's `train` section, resuming an interrupted training."""

from __future__ import annotations

import datetime
import logging
import os
import platform
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from mpsearch.artifacts import cached, read_json, write_json
from mpsearch.config import StudyConfig
from mpsearch.data.pipeline import SpeechData
from mpsearch.data.tokenizer import CharTokenizer
from mpsearch.training.checkpoint import (
    CheckpointError,
    ModelCheckpoint,
    check_matches,
    load_checkpoint,
    save_checkpoint,
)

log = logging.getLogger(__name__)

METRICS_FILE = "metrics.json"
MODEL_FILE = "model.pt"


def ensure_baseline(folder: Path, key: str, model: nn.Module, make_task: Callable[[nn.Module], Any],
                    data: Callable[[], SpeechData], cfg: StudyConfig, tokenizer: CharTokenizer,
                    manifests: dict[str, str], checkpoint: Path | None = None, checkpoint_sha256: str = "",
                    progress: bool = False) -> tuple[ModelCheckpoint, dict[str, Any]]:
    """(checkpoint, metrics) of the float baseline under `key`: reused while the key holds, else made
    from `checkpoint` (its file, named by `baseline.checkpoint`) or by training `model` in place with
    `make_task(model)` on `cfg.train`. `data()` gives the scored splits; `manifests` are their digests."""
    folder = Path(folder)
    metrics_path, model_path = folder / METRICS_FILE, folder / MODEL_FILE

    def load(path: Path) -> tuple[Any, tuple | None]:
        metrics = read_json(path)
        if not isinstance(metrics, dict):
            raise TypeError(f"{path} is not a JSON object")
        if metrics.get("config_hash") != key:
            return metrics.get("config_hash"), None  # its model is read only when the key holds
        return key, (load_checkpoint(checkpoint or model_path), metrics)

    def evaluate(trained: nn.Module) -> dict[str, Any]:
        return baseline_scores(make_task(trained), data())

    def from_checkpoint() -> tuple[ModelCheckpoint, dict[str, Any]]:
        stored = load_checkpoint(checkpoint)
        where = f"baseline.checkpoint {cfg.baseline.checkpoint}"
        check_matches(stored, where, cfg.model, cfg.data.features, tokenizer)
        load_weights(model, stored.state_dict, where)
        log.info("evaluating the float baseline from %s", checkpoint)
        start = time.monotonic()
        metrics = {"config_hash": key, "checkpoint": cfg.baseline.checkpoint, "checkpoint_sha256": checkpoint_sha256,
                   "source": stored.source, "model": cfg.model.label, "parameters": _parameters(model),
                   "train_steps": 0, "train_seconds": 0.0, **evaluate(model)}
        metrics["eval_seconds"] = round(time.monotonic() - start, 1)
        write_json(metrics_path, metrics)
        return stored, metrics

    def trained() -> tuple[ModelCheckpoint, dict[str, Any]]:
        from mpsearch import __version__
        from mpsearch.training.trainer import train

        folder.mkdir(parents=True, exist_ok=True)
        log.info("training the float baseline (%s, %.2fM parameters)", cfg.model.label, _parameters(model) / 1e6)
        result = train(make_task(model), cfg.train, checkpoint=folder / "checkpoint.pt", checkpoint_key=key,
                       progress=progress)
        start = time.monotonic()
        metrics = {"config_hash": key, "model": cfg.model.label, "parameters": _parameters(model),
                   "train_steps": result.steps, "train_seconds": round(result.seconds, 1),
                   "final_train_loss": result.final_loss, "threads": torch.get_num_threads(), **evaluate(model),
                   "history": result.history}
        metrics["eval_seconds"] = round(time.monotonic() - start, 1)
        source = {
            "study": cfg.name, "config_hash": key, "data": cfg.data.to_dict(), "task": cfg.task.to_dict(),
            "train": cfg.train.to_dict(),
            "manifests": manifests, "train_steps": result.steps, "train_seconds": round(result.seconds, 1),
            "threads": torch.get_num_threads(), "dev": metrics["dev"], "test": metrics["test"],
            "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "machine": f"{platform.machine()}, {os.cpu_count()} cores, {platform.python_implementation()} "
                       f"{platform.python_version()}",
            "mpsearch": __version__, "torch": str(torch.__version__),
        }
        made = ModelCheckpoint(cfg.model, cfg.data.features, tokenizer.alphabet,
                               {k: v.detach().clone() for k, v in model.state_dict().items()}, source)
        save_checkpoint(model_path, made)
        write_json(metrics_path, metrics)
        return made, metrics

    # a training checkpoint in the folder stays: the trainer resumes it only when its key matches
    return cached(metrics_path, key, from_checkpoint if checkpoint is not None else trained, load,
                  files=(metrics_path, model_path))


def baseline_scores(task: Any, data: SpeechData) -> dict[str, Any]:
    """dev and test scores; a speech model's WER with its 95% bootstrap interval over utterances."""
    if not hasattr(task, "transcribe"):
        return {"dev": task.evaluate("dev"), "test": task.evaluate("test")}
    from mpsearch.eval.bootstrap import wer_interval
    from mpsearch.eval.wer import error_rates, utterance_errors

    scores = {}
    for split in ("dev", "test"):
        refs, hyps = task.transcribe(data.split(split))
        interval = wer_interval(*utterance_errors(refs, hyps))
        scores[split] = {**error_rates(refs, hyps), "wer_ci_low": interval.low, "wer_ci_high": interval.high,
                         "utterances": len(refs)}
    return scores


def load_weights(model: nn.Module, state_dict: dict[str, torch.Tensor], where: str) -> None:
    """`model.load_state_dict(state_dict)`; weights that do not fit (a factory whose code changed since the
    checkpoint was written) are one CheckpointError naming the first difference."""
    try:
        model.load_state_dict(state_dict)
    except RuntimeError as exc:
        detail = next((line.strip() for line in str(exc).splitlines()[1:] if line.strip()), str(exc).splitlines()[0])
        raise CheckpointError(f"{where}: its weights do not fit the model the study builds ({detail.rstrip('.')}); "
                              "build the model as it was when the checkpoint was written, or name another "
                              "checkpoint.") from None


def _parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
