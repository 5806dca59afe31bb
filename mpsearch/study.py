"""The study: one straight flow from a StudyConfig to artefacts in the study folder.

Each stage writes its artefact atomically, keyed by a hash of the config it came from, so a re-run
skips finished stages and a kill loses at most the work in flight.
"""

from __future__ import annotations

import hashlib
import logging
import os
import time
from functools import cached_property
from pathlib import Path

import torch

from mpsearch.artifacts import cached, read_json, write_json, write_text
from mpsearch.config import StudyConfig, config_hash
from mpsearch.data.pipeline import SpeechData
from mpsearch.data.tokenizer import CharTokenizer

log = logging.getLogger(__name__)


class Study:
    def __init__(self, cfg: StudyConfig, progress: bool = True):
        self.cfg = cfg
        self.dir = cfg.study_dir
        self.progress = progress
        self._baseline: tuple | None = None  # (checkpoint, metrics), made or loaded once per process
        self.dir.mkdir(parents=True, exist_ok=True)
        write_text(self.dir / "study.yaml.json", cfg.model_dump_json(indent=2))

    # --- data -------------------------------------------------------------------------------------------
    @cached_property
    def tokenizer(self) -> CharTokenizer:
        path = self.dir / "tokenizer.json"
        if path.is_file():
            return CharTokenizer.load(path)
        tokenizer = CharTokenizer()
        tokenizer.save(path)
        return tokenizer

    @cached_property
    def manifests(self) -> dict[str, Path]:
        from mpsearch.data.corpus import resolve_manifests

        return resolve_manifests(self.cfg.data, self.dir, self.progress)

    @cached_property
    def data(self) -> SpeechData:
        from mpsearch.data.pipeline import load_speech_data

        return load_speech_data(self.cfg.data, self.manifests, self.dir / "features", self.tokenizer, self.progress)

    # --- models -----------------------------------------------------------------------------------------
    def new_model(self) -> torch.nn.Module:
        from mpsearch.models import build_model

        torch.manual_seed(self.cfg.train.seed)
        return build_model(self.cfg.model, vocab_size=self.tokenizer.vocab_size, n_mels=self.cfg.data.features.n_mels)

    def task(self, model: torch.nn.Module, augment: bool | None = None):
        from mpsearch.models import model_kind
        from mpsearch.training.tasks import LanguageModelTask, SpeechTask

        if model_kind(model) == "lm":
            return LanguageModelTask(model, self.data)
        augment = self.cfg.train.augment if augment is None else augment
        return SpeechTask(model, self.data, self.cfg.data.max_batch_frames,
                          augment=augment and self.cfg.data.features.specaugment is not None)

    def sites(self):
        from mpsearch.quant import find_sites

        return find_sites(self.new_model())

    def search_space(self):
        """The study's SearchSpace (`search.space`), checked against the model's sites."""
        from mpsearch.errors import ConfigError
        from mpsearch.search.space import SearchSpace

        if not self.cfg.search.space:
            raise ConfigError(f"The study '{self.cfg.name}' has no search.space; set it to a search space YAML "
                              "such as search_spaces/rnnt_groups.yaml.")
        return SearchSpace.from_yaml(self.cfg.search.space, self.sites())

    def latency_model(self):
        """The study's hardware profile and workload as a RooflineLatencyModel."""
        from mpsearch.hardware import RooflineLatencyModel, Workload, load_profile

        workload = Workload.from_dict(self.cfg.hardware.workload, source="hardware.workload")
        return RooflineLatencyModel(load_profile(self.cfg.hardware.profile), workload)

    @property
    def baseline_dir(self) -> Path:
        return self.dir / "baseline"

    @cached_property
    def manifest_digests(self) -> dict[str, str]:
        from mpsearch.errors import DataError

        missing = [path for path in self.manifests.values() if not path.is_file()]
        if missing:
            raise DataError(f"Manifest '{missing[0]}' does not exist; create it with `mpsearch data synth` or "
                            "`mpsearch data librispeech`.")
        return {split: hashlib.sha256(path.read_bytes()).hexdigest() for split, path in self.manifests.items()}

    @cached_property
    def checkpoint_path(self) -> Path | None:
        """The file `baseline.checkpoint` names (checked to exist), or None when the study trains its own."""
        from mpsearch.training.checkpoint import resolve_checkpoint

        spec = self.cfg.baseline.checkpoint
        return resolve_checkpoint(spec) if spec else None

    @cached_property
    def checkpoint_sha256(self) -> str:
        from mpsearch.training.checkpoint import file_sha256

        return file_sha256(self.checkpoint_path)

    @cached_property
    def baseline_key(self) -> str:
        """What the float baseline depends on: the checkpoint's contents, or the data, model and training
        settings; and the manifests' contents (a new corpus version, or a user's edited manifest, makes a
        new baseline instead of reusing a stale one)."""
        if self.checkpoint_path is not None:
            return config_hash(self.cfg.data, self.cfg.model, {"checkpoint": self.checkpoint_sha256},
                               self.manifest_digests)
        # how the run is watched and how many threads it uses do not change the model it trains
        recipe = self.cfg.train.model_dump(mode="json", exclude={"threads", "eval_every", "checkpoint_every"})
        return config_hash(self.cfg.data, self.cfg.model, recipe, self.manifest_digests)

    def baseline(self) -> tuple[torch.nn.Module, dict]:
        """The float baseline and its metrics: loaded from `baseline.checkpoint` and evaluated, or trained
        once from the `train` section; reused while its key holds, set aside and redone when it changed
        or its files are unreadable. Each call returns a fresh model with the baseline's weights."""
        if self._baseline is None:
            metrics_path, model_path = self.baseline_dir / "metrics.json", self.baseline_dir / "model.pt"
            make = self._evaluate_checkpoint if self.checkpoint_path is not None else self._train_baseline
            # a training checkpoint stays: the trainer resumes it only when its key matches
            self._baseline = cached(metrics_path, self.baseline_key, make, self._load_baseline,
                                    files=(metrics_path, model_path))
        checkpoint, metrics = self._baseline
        model = self.new_model()
        model.load_state_dict(checkpoint.state_dict)
        return model, metrics

    def _load_baseline(self, metrics_path: Path) -> tuple[str | None, tuple | None]:
        """(key, (checkpoint, metrics)) of a finished baseline; its model is read only when the key holds."""
        from mpsearch.training.checkpoint import load_checkpoint

        metrics = read_json(metrics_path)
        if not isinstance(metrics, dict):
            raise TypeError(f"{metrics_path} is not a JSON object")
        if metrics.get("config_hash") != self.baseline_key:
            return metrics.get("config_hash"), None
        model_path = self.checkpoint_path or self.baseline_dir / "model.pt"
        return metrics["config_hash"], (load_checkpoint(model_path), metrics)

    def _evaluate_checkpoint(self):
        from mpsearch.training.checkpoint import check_matches, load_checkpoint

        path = self.checkpoint_path
        checkpoint = load_checkpoint(path)
        check_matches(checkpoint, f"baseline.checkpoint {self.cfg.baseline.checkpoint}", self.cfg.model,
                      self.cfg.data.features, self.tokenizer)
        model = self.new_model()
        model.load_state_dict(checkpoint.state_dict)
        log.info("evaluating the float baseline from %s", path)
        start = time.monotonic()
        metrics = {
            "config_hash": self.baseline_key,
            "checkpoint": self.cfg.baseline.checkpoint,
            "checkpoint_sha256": self.checkpoint_sha256,
            "source": checkpoint.source,
            "model": self.cfg.model.name,
            "parameters": sum(p.numel() for p in model.parameters()),
            "train_steps": 0,
            "train_seconds": 0.0,
            **self._evaluate(model),
        }
        metrics["eval_seconds"] = round(time.monotonic() - start, 1)
        write_json(self.baseline_dir / "metrics.json", metrics)
        return checkpoint, metrics

    def _evaluate(self, model: torch.nn.Module) -> dict:
        """dev and test scores; a speech model's WER with its 95% bootstrap interval over utterances."""
        from mpsearch.models import model_kind

        task = self.task(model)
        if model_kind(model) == "lm":
            return {"dev": task.evaluate("dev"), "test": task.evaluate("test")}
        from mpsearch.eval.bootstrap import wer_interval
        from mpsearch.eval.wer import error_rates, utterance_errors

        scores = {}
        for split in ("dev", "test"):
            refs, hyps = task.transcribe(self.data.split(split))
            interval = wer_interval(*utterance_errors(refs, hyps))
            scores[split] = {**error_rates(refs, hyps), "wer_ci_low": interval.low, "wer_ci_high": interval.high,
                             "utterances": len(refs)}
        return scores

    def _train_baseline(self):
        import datetime
        import platform

        from mpsearch import __version__
        from mpsearch.training.checkpoint import ModelCheckpoint, save_checkpoint
        from mpsearch.training.trainer import train

        model = self.new_model()
        task = self.task(model)
        self.baseline_dir.mkdir(parents=True, exist_ok=True)
        log.info("training the float baseline (%s, %.2fM parameters)", self.cfg.model.name,
                 sum(p.numel() for p in model.parameters()) / 1e6)
        result = train(task, self.cfg.train, checkpoint=self.baseline_dir / "checkpoint.pt",
                       checkpoint_key=self.baseline_key, progress=self.progress)
        start = time.monotonic()
        metrics = {
            "config_hash": self.baseline_key,
            "model": self.cfg.model.name,
            "parameters": sum(p.numel() for p in model.parameters()),
            "train_steps": result.steps,
            "train_seconds": round(result.seconds, 1),
            "final_train_loss": result.final_loss,
            "threads": torch.get_num_threads(),
            **self._evaluate(model),
            "history": result.history,
        }
        metrics["eval_seconds"] = round(time.monotonic() - start, 1)
        source = {
            "study": self.cfg.name, "config_hash": self.baseline_key, "data": self.cfg.data.to_dict(),
            "train": self.cfg.train.to_dict(), "manifests": self.manifest_digests,
            "train_steps": result.steps, "train_seconds": round(result.seconds, 1),
            "threads": torch.get_num_threads(), "dev": metrics["dev"], "test": metrics["test"],
            "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "machine": f"{platform.machine()}, {os.cpu_count()} cores, {platform.python_implementation()} "
                       f"{platform.python_version()}",
            "mpsearch": __version__, "torch": str(torch.__version__),
        }
        checkpoint = ModelCheckpoint(self.cfg.model, self.cfg.data.features, self.tokenizer.alphabet,
                                     {k: v.detach().clone() for k, v in model.state_dict().items()}, source)
        save_checkpoint(self.baseline_dir / "model.pt", checkpoint)
        write_json(self.baseline_dir / "metrics.json", metrics)
        return checkpoint, metrics
