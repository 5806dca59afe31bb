"""The study: one straight flow from a StudyConfig to artefacts in the study folder.

Each stage writes its artefact atomically, keyed by a hash of the config it came from, so a re-run
skips finished stages and a kill loses at most the work in flight.
"""

from __future__ import annotations

import hashlib
import logging
import shutil
import time
from functools import cached_property
from pathlib import Path

import torch

from mpsearch.artifacts import atomic_path, read_json, write_json, write_text
from mpsearch.config import StudyConfig, config_hash
from mpsearch.data.pipeline import SpeechData
from mpsearch.data.tokenizer import CharTokenizer

log = logging.getLogger(__name__)


class Study:
    def __init__(self, cfg: StudyConfig, progress: bool = True):
        self.cfg = cfg
        self.dir = cfg.study_dir
        self.progress = progress
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
    def baseline_key(self) -> str:
        """What the float baseline depends on: data, model and training settings, and the manifests'
        contents (a new corpus version, or a user's edited manifest, trains a new baseline)."""
        digests = {split: hashlib.sha256(path.read_bytes()).hexdigest() for split, path in self.manifests.items()}
        return config_hash(self.cfg.data, self.cfg.model, self.cfg.train, digests)

    def baseline(self) -> tuple[torch.nn.Module, dict]:
        """The float baseline: trained once, then loaded; retrained if its config changed."""
        metrics_path = self.baseline_dir / "metrics.json"
        if metrics_path.is_file():
            metrics = read_json(metrics_path)
            if metrics.get("config_hash") == self.baseline_key:
                model = self.new_model()
                model.load_state_dict(torch.load(self.baseline_dir / "model.pt"))
                log.info("reusing the float baseline in %s", self.baseline_dir)
                return model, metrics
            stale = self.dir / f"baseline-{metrics.get('config_hash', 'old')}"
            log.warning("the baseline's config changed; keeping the old one in %s and training anew", stale)
            shutil.move(str(self.baseline_dir), stale)
        return self._train_baseline()

    def _train_baseline(self) -> tuple[torch.nn.Module, dict]:
        from mpsearch.training.trainer import train

        model = self.new_model()
        task = self.task(model)
        self.baseline_dir.mkdir(parents=True, exist_ok=True)
        log.info("training the float baseline (%s, %.2fM parameters)", self.cfg.model.name,
                 sum(p.numel() for p in model.parameters()) / 1e6)
        result = train(task, self.cfg.train, checkpoint=self.baseline_dir / "checkpoint.pt", progress=self.progress)
        start = time.monotonic()
        metrics = {
            "config_hash": self.baseline_key,
            "model": self.cfg.model.name,
            "parameters": sum(p.numel() for p in model.parameters()),
            "train_steps": result.steps,
            "train_seconds": round(result.seconds, 1),
            "final_train_loss": result.final_loss,
            "threads": torch.get_num_threads(),
            "dev": task.evaluate("dev"),
            "test": task.evaluate("test"),
            "history": result.history,
        }
        metrics["eval_seconds"] = round(time.monotonic() - start, 1)
        with atomic_path(self.baseline_dir / "model.pt") as tmp:
            torch.save(model.state_dict(), tmp)
        write_json(self.baseline_dir / "metrics.json", metrics)
        return model, metrics
