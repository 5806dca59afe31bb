"""The study: one straight flow from a StudyConfig to the front and its knee policy.

`Study.run()` owns the path: data -> baseline -> sites -> sensitivity -> candidates (ILP, supernet) ->
trials -> front and knee. Each stage is a function of explicit inputs that returns its artefact and
writes it atomically into the study folder, keyed by a hash of what it came from, so a re-run skips
finished stages and a kill loses at most the work in flight. The study builds what the stages share
once per process: the data, the model (its weights become the baseline's), the sites, the search space
and the latency model.
"""

from __future__ import annotations

import copy
import hashlib
import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from mpsearch.artifacts import write_text
from mpsearch.config import StudyConfig, config_hash
from mpsearch.data.pipeline import SpeechData
from mpsearch.data.tokenizer import CharTokenizer
from mpsearch.errors import ConfigError

if TYPE_CHECKING:
    import optuna

    from mpsearch.search.objective import TrialRunner
    from mpsearch.search.pareto import FrontTable
    from mpsearch.search.pick import PickedTrial
    from mpsearch.sensitivity.report import SensitivityReport
    from mpsearch.space import SearchSpace
    from mpsearch.supernet.search import SupernetCandidate
    from mpsearch.training.tasks import TaskAdapter
    from mpsearch.training.user import UserModel

log = logging.getLogger(__name__)

# What `run(until=...)` can stop after; each runs only the stages it needs.
STAGES = ("baseline", "sensitivity", "supernet", "trials", "front")


@dataclass
class StudyResult:
    """What `Study.run` made: the baseline's metrics, then whichever later artefacts were asked for."""

    baseline: dict[str, Any]
    sensitivity: SensitivityReport | None = None
    supernet: list[SupernetCandidate] | None = None
    trials: optuna.Study | None = None
    complete: int = 0  # distinct complete points of the trials
    wanted: int = 0  # the points asked for (at most the space's size)
    front: FrontTable | None = None  # written only when the trials asked for completed
    front_files: list[Path] | None = None
    knee: PickedTrial | None = None
    knee_policy: Path | None = None


class Study:
    """The study of `cfg`, in `cfg.study_dir`. With `user`, the float model is the user's own (its
    factory, training step and scores) instead of one trained or loaded from the study's data."""

    def __init__(self, cfg: StudyConfig, progress: bool = True, user: UserModel | None = None):
        self.cfg = cfg
        self.dir = cfg.study_dir
        self.progress = progress
        self.user = user
        self._baseline: tuple | None = None  # (checkpoint, metrics), made or loaded once per process
        self.dir.mkdir(parents=True, exist_ok=True)
        write_text(self.dir / "study.yaml.json", cfg.model_dump_json(indent=2))

    # --- the flow ---------------------------------------------------------------------------------------
    def run(self, until: str = "front", *, backend: str | None = None, trials: int | None = None,
            workers: int | str | None = None, address: str | None = None,
            sensitivity_backend: str | None = None) -> StudyResult:
        """Run the study up to and including the stage `until` (one of STAGES), reusing finished stages.
        The keywords override the study's `search.backend`, `search.trials`, `search.workers`,
        `search.address` and `sensitivity.backend`."""
        if until not in STAGES:
            raise ConfigError(f"Unknown study stage '{until}'; valid choices: {', '.join(STAGES)}.")
        search = self.cfg.search
        searching = STAGES.index(until) >= STAGES.index("trials")
        backend, address = backend or search.backend, address or search.address
        self.check_model()
        if searching:  # what the user may have got wrong, before minutes to hours of work
            from mpsearch.search.engine import check_before_work

            check_before_work(self.cfg, self.search_space(), backend, address)
        elif until == "supernet":
            self.search_space()
        result = StudyResult(baseline=self.baseline()[1])
        if until == "sensitivity" or (searching and search.warm_start.ilp > 0):
            result.sensitivity = self.sensitivity(sensitivity_backend)
        if until == "supernet" or (searching and search.warm_start.supernet):
            result.supernet = self.supernet()
        if not searching:
            return result
        from mpsearch.search.engine import run_trials
        from mpsearch.search.optuna_backend import distinct_complete_count
        from mpsearch.search.warm_start import warm_starts

        space = self.search_space()
        if search.trial_mode == "oneshot":
            self.shared_weights()  # before the trials, so every worker (Ray's too) loads them
        starts = warm_starts(space, search.warm_start, sites=self.sites(), latency_model=self.latency_model(),
                             sensitivity=result.sensitivity, supernet=result.supernet)
        trials = trials or search.trials
        result.trials = run_trials(self.cfg, space, starts, self.trial_runner, backend=backend, trials=trials,
                                   workers=workers or search.workers, address=address, progress=self.progress)
        result.complete = distinct_complete_count(result.trials)
        result.wanted = min(trials, space.size())
        if until == "front" and result.complete >= result.wanted:
            self._front(result)
        return result

    def _front(self, result: StudyResult) -> None:
        """front.csv, front.png, front.json and the knee's policy (knee-policy.json) in the study folder."""
        from mpsearch.search.front_files import KNEE_POLICY, write_front
        from mpsearch.search.pick import pick_trial

        if self.cfg.search.trial_mode == "oneshot":
            from mpsearch.search.confirm import confirm_front
            from mpsearch.search.pareto import load_front_table
            from mpsearch.search.record import scoring_key

            table = load_front_table(self.cfg)
            confirm_front(result.trials, table.front_numbers(), table.policy, self.trial_runner("finetune"),
                          scoring_key(self.cfg, self.baseline_key))
        result.front, result.front_files = write_front(self.cfg)
        result.knee = pick_trial(result.front, pick="knee")
        result.knee_policy = self.dir / KNEE_POLICY
        result.knee.policy.save(result.knee_policy)

    # --- data -------------------------------------------------------------------------------------------
    @cached_property
    def tokenizer(self) -> CharTokenizer:
        from mpsearch.artifacts import cached

        path = self.dir / "tokenizer.json"

        def make() -> CharTokenizer:
            tokenizer = CharTokenizer()
            tokenizer.save(path)
            return tokenizer

        # the alphabet is fixed, so a tokenizer file cut short is set aside and written again
        return cached(path, "CharTokenizer", make, lambda stored: ("CharTokenizer", CharTokenizer.load(stored)))

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
        """A newly built model of the study's architecture (its initial weights seeded by `train.seed`)."""
        if self.user is not None:
            return self.user.factory()
        from mpsearch.models import build_model

        torch.manual_seed(self.cfg.train.seed)
        return build_model(self.cfg.model, vocab_size=self.tokenizer.vocab_size, n_mels=self.cfg.data.features.n_mels)

    @cached_property
    def _model(self) -> torch.nn.Module:
        # built once: the sites are read from it, and baseline() gives it the baseline's weights
        return self.new_model()

    @cached_property
    def adapter(self) -> TaskAdapter | None:
        """The study's `task.adapter` (how a speech batch becomes a loss and a transcript), or None for
        the built-in contract."""
        if self.cfg.task.adapter is None:
            return None
        from mpsearch.training.tasks import load_adapter

        return load_adapter(self.cfg.task.adapter)

    def check_model(self) -> None:
        """Build the model and load the task adapter now, so a bad `model` or `task` section is one line
        before any long work."""
        model, adapter = self._model, self.adapter
        if self.cfg.model.factory is not None and adapter is None and not callable(getattr(model, "greedy_decode", None)):
            raise ConfigError(f"model.factory '{self.cfg.model.factory}' builds a {type(model).__name__} without "
                              "greedy_decode(feats, feat_lens), so the study cannot score it; add one (and a forward "
                              "that returns the loss), or name a task.adapter.")

    def task(self, model: torch.nn.Module, augment: bool | None = None, max_batch_frames: int | None = None):
        """The task that trains and scores `model`; `augment` defaults to `train.augment`."""
        if self.user is not None:
            return self.user.task(model)
        from mpsearch.models import model_kind
        from mpsearch.training.tasks import LanguageModelTask, SpeechTask

        # a user's factory model is a speech model unless it says otherwise; a registered one must say
        kind = getattr(model, "kind", None) if self.cfg.model.factory is not None else model_kind(model)
        if kind == "lm" and self.adapter is None:
            return LanguageModelTask(model, self.data)
        augment = self.cfg.train.augment if augment is None else augment
        return SpeechTask(model, self.data, max_batch_frames or self.cfg.data.max_batch_frames,
                          augment=augment and self.cfg.data.features.specaugment is not None, adapter=self.adapter)

    def unaugmented_batches(self, model: torch.nn.Module,
                            max_batch_frames: int | None = None) -> Callable[[int], Iterator[Any]]:
        """seed -> one epoch of training batches without augmentation, in a seeded shuffled order (the
        first batches in length order would hold only the shortest utterances), as `model`'s task's loss
        takes them: what sensitivity, the supernet and calibration read."""
        return self.task(model, augment=False, max_batch_frames=max_batch_frames).train_batches

    def sites(self):
        """The model's quantisable sites (built once)."""
        if "_sites" not in self.__dict__:
            from mpsearch.quant import find_sites

            self.__dict__["_sites"] = find_sites(self._model)
        return self.__dict__["_sites"]

    def search_space(self) -> SearchSpace:
        """The study's SearchSpace (`search.space`), checked against the model's sites (built once)."""
        if "_space" not in self.__dict__:
            from mpsearch.space import SearchSpace

            if self.user is not None and self.user.space is not None:
                space = SearchSpace.from_dict(dict(self.user.space), self.sites(), source="search_model(space=...)")
            else:
                space = SearchSpace.from_yaml(self.space_path, self.sites())
            self.__dict__["_space"] = space
        return self.__dict__["_space"]

    @property
    def space_path(self) -> Path:
        if not self.cfg.search.space:
            raise ConfigError(f"search.space is not set in the study '{self.cfg.name}'; set it to a search space "
                              "YAML such as search_spaces/rnnt_groups.yaml.")
        return Path(self.cfg.search.space)

    def latency_model(self):
        """The study's hardware profile and workload as a RooflineLatencyModel (built once)."""
        if "_latency_model" not in self.__dict__:
            from mpsearch.hardware import RooflineLatencyModel, Workload, load_profile

            workload = Workload.from_dict(self.cfg.hardware.workload, source="hardware.workload")
            self.__dict__["_latency_model"] = RooflineLatencyModel(load_profile(self.cfg.hardware.profile), workload)
        return self.__dict__["_latency_model"]

    # --- baseline ---------------------------------------------------------------------------------------
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
    def baseline_key(self) -> str | None:
        """What the float baseline depends on: the checkpoint's contents, or the data, model and training
        settings; and the manifests' contents (a new corpus version, or a user's edited manifest, makes a
        new baseline instead of reusing a stale one). None for a user's own model, which is not stored."""
        if self.user is not None:
            return None
        # an adapter changes how the model is trained and scored; without one the keys read as they always have
        task = (self.cfg.task,) if self.cfg.task.adapter is not None else ()
        if self.checkpoint_path is not None:
            return config_hash(self.cfg.data, self.cfg.model, {"checkpoint": self.checkpoint_sha256},
                               self.manifest_digests, *task)
        # how the run is watched and how many threads it uses do not change the model it trains
        recipe = self.cfg.train.model_dump(mode="json", exclude={"threads", "eval_every", "checkpoint_every"})
        return config_hash(self.cfg.data, self.cfg.model, recipe, self.manifest_digests, *task)

    def baseline(self) -> tuple[torch.nn.Module, dict]:
        """The float baseline and its metrics: loaded from `baseline.checkpoint` and evaluated, or trained
        once from the `train` section; reused while its key holds, set aside and redone when it changed
        or its files are unreadable. The model is the study's one instance: copy it before changing it."""
        if self._baseline is None:
            if self.user is not None:
                self._baseline = (None, {"model": "user", "parameters": sum(p.numel() for p in
                                                                           self._model.parameters())})
            else:
                from mpsearch.training.baseline import MODEL_FILE, ensure_baseline, load_weights

                self._baseline = ensure_baseline(
                    self.baseline_dir, self.baseline_key, self._model, self.task, lambda: self.data, self.cfg,
                    self.tokenizer, self.manifest_digests, self.checkpoint_path,
                    self.checkpoint_sha256 if self.checkpoint_path is not None else "", self.progress)
                where = self.cfg.baseline.checkpoint or str(self.baseline_dir / MODEL_FILE)
                load_weights(self._model, self._baseline[0].state_dict, where)
        return self._model, self._baseline[1]

    # --- the stages after the baseline ------------------------------------------------------------------
    @property
    def loss_fn(self) -> Callable[[torch.nn.Module, Any], torch.Tensor] | None:
        """(model, batch) -> loss for the stages that differentiate the float model outside a task (the
        sensitivity's Hessian, the supernet): the adapter's loss, or None for the model's own forward."""
        return self.adapter.loss if self.adapter is not None else None

    def sensitivity(self, backend: str | None = None) -> SensitivityReport:
        """The sensitivity report of the float baseline (`backend` overrides `sensitivity.backend`)."""
        from mpsearch.sensitivity.backends import BACKENDS
        from mpsearch.sensitivity.stage import ensure_sensitivity

        cfg = self.cfg.sensitivity
        if backend is not None:
            BACKENDS.get(backend)
            cfg = cfg.model_copy(update={"backend": backend})
        model, _ = self.baseline()
        return ensure_sensitivity(self.dir, model, self.unaugmented_batches(model, cfg.max_batch_frames), cfg,
                                  progress=self.progress, loss_fn=self.loss_fn)

    def supernet(self) -> list[SupernetCandidate]:
        """The supernet's candidates over the study's search space, one per lambda."""
        from mpsearch.supernet.stage import ensure_supernet, supernet_key

        space = self.search_space()
        model, _ = self.baseline()
        cfg = self.cfg.supernet
        key = supernet_key(cfg, self.space_path, self.cfg.hardware, self.baseline_key)
        return ensure_supernet(self.dir, model, space, self.latency_model(), cfg, key,
                               self.unaugmented_batches(model, cfg.max_batch_frames), space_path=self.space_path,
                               threads=self.cfg.train.threads, progress=self.progress, loss_fn=self.loss_fn)

    def shared_weights(self) -> dict[str, torch.Tensor]:
        """The one-shot shared weights over the study's search space (`search.oneshot`), a state dict of
        the float model."""
        from mpsearch.search.record import oneshot_key
        from mpsearch.supernet.oneshot import ensure_shared_weights

        search = self.cfg.search
        model, _ = self.baseline()
        if self.user is not None:
            raise ConfigError("search.trial_mode 'oneshot' trains shared weights with the study's own model and "
                              "data; with search_model use trial_mode 'finetune'.")
        train = search.shared_training
        return ensure_shared_weights(self.dir, oneshot_key(self.cfg, self.baseline_key), model, self.search_space(),
                                     lambda m: self.task(m, augment=train.augment), train,
                                     search.oneshot.random_policies, progress=self.progress)

    def trial_runner(self, mode: str | None = None) -> TrialRunner:
        """What every trial shares, built once per mode (default `search.trial_mode`): a copy of the float
        baseline (and, one-shot, of the shared weights), its calibration batches, the sites, the latency
        model, and how a trial trains and is scored. One-shot trials are scored on the eval split alone;
        the fine-tuned confirmation of the front scores test too."""
        mode = mode or self.cfg.search.trial_mode
        if f"_runner_{mode}" not in self.__dict__:
            import itertools

            from mpsearch.search.objective import TrialRunner, trial_scores

            cfg = self.cfg.search
            model = copy.deepcopy(self.baseline()[0])
            if mode == "oneshot":  # its trials start from the shared weights alone: one copy of the model
                model.load_state_dict(self.shared_weights())
            if self.user is not None:
                calibration, evaluate = self.user.calibration_batches(cfg.calibration_batches), self.user.scores
            else:
                batches = self.unaugmented_batches(model)(cfg.seed + 7919)  # a fixed draw apart from training's
                calibration = list(itertools.islice(batches, cfg.calibration_batches))
                evaluate = lambda trained: trial_scores(self.task(trained, augment=False), self.data, cfg,
                                                        test=mode != "oneshot")
            from mpsearch.search.record import scoring_key

            scored_on = scoring_key(self.cfg, self.baseline_key, mode)
            self.__dict__[f"_runner_{mode}"] = TrialRunner(
                model, cfg, self.cfg.hardware.profile, self.sites(), self.latency_model(),
                lambda trained, augment: self.task(trained, augment=augment), calibration, evaluate,
                baseline=scored_on, shared_model=model if mode == "oneshot" else None)
        return self.__dict__[f"_runner_{mode}"]
