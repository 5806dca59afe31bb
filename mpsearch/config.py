"""StudyConfig: the validated form of a study YAML.

Validation happens here, where input enters: unknown keys and wrong types are errors that name the
file, the field, the rule and the value received.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from mpsearch.errors import ConfigError


class Section(BaseModel):
    """Base for every config section: frozen, and unknown keys are errors."""

    model_config = ConfigDict(extra="forbid", frozen=True, protected_namespaces=())

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json")

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str = "<dict>"):
        try:
            return cls.model_validate(data)
        except ValidationError as exc:
            raise ConfigError(format_validation_error(exc, source)) from None


class SpecAugmentConfig(Section):
    freq_masks: int = Field(2, ge=0)
    freq_width: int = Field(15, ge=0)
    time_masks: int = Field(2, ge=0)
    time_width: float = Field(0.05, ge=0, le=0.5, description="max width as a fraction of the utterance")


class FeatureConfig(Section):
    n_mels: int = Field(80, ge=8, le=256)
    normalize: Literal["utterance", "global"] = "utterance"
    specaugment: SpecAugmentConfig | None = None


class DataConfig(Section):
    corpus: Literal["builtin", "manifest", "librispeech"] = "builtin"
    utterances: int = Field(4000, ge=10, description="builtin: utterances synthesised in total")
    seed: int = 0
    voices: Literal["standard", "wide"] = Field(
        "standard", description="builtin: train/dev speakers, 14 voices (standard) or 25 (wide: unseen test voices "
                                "recognised far better, but training needs about twice the steps)")
    path: str | None = Field(None, description="builtin: corpus folder (default: beside the study folder, "
                                                  "corpus/builtin-v<version>[-wide]-seed<seed>-n<utterances>)")
    train: str | None = Field(None, description="manifest: train JSONL; librispeech: a LibriSpeech split folder")
    dev: str | None = None
    test: str | None = None
    features: FeatureConfig = FeatureConfig()
    max_batch_frames: int = Field(24000, ge=100, description="length-bucketed batches hold at most this many feature frames")


DOTTED_PATH = "'package.module:attribute'"


def check_dotted_path(value: str | None) -> str | None:
    """`package.module:attribute` (the form Python entry points use): checked for shape here; imported
    where the object is used."""
    if value is None:
        return value
    module, _, attribute = value.partition(":")
    parts = module.split(".") + attribute.split(".")
    if not module or not attribute or not all(p.isidentifier() for p in parts):
        raise ValueError(f"must be {DOTTED_PATH}, an importable module and a name in it (e.g. "
                         "'my_models:build_model')")
    return value


class ModelConfig(Section):
    """A registered model (`name`) or the user's own, built by `factory` (exactly one of the two)."""

    name: str | None = Field(None, description="a registered model (mpsearch.models.MODELS)")
    factory: str | None = Field(None, description="'package.module:function' returning an nn.Module, called with "
                                                  "params and, where it accepts them, n_mels and vocab_size")
    params: dict[str, Any] = Field(default_factory=dict)

    @field_validator("factory")
    @classmethod
    def _factory_form(cls, value: str | None) -> str | None:
        return check_dotted_path(value)

    @model_validator(mode="after")
    def _one_source(self) -> ModelConfig:
        if (self.name is None) == (self.factory is None):
            raise ValueError("needs exactly one of 'name' (a registered model: rnnt, conformer, transformer_lm) or "
                             f"'factory' ({DOTTED_PATH}, a function building your own model)")
        return self

    @property
    def label(self) -> str:
        """How logs and metrics name the model: its registry name or its factory."""
        return self.name or self.factory

    def to_dict(self) -> dict[str, Any]:
        # the unused source is left out, so configs (and the keys hashed from them) of registered models
        # read as they always have
        return self.model_dump(mode="json", exclude={k for k in ("name", "factory") if getattr(self, k) is None})


class TaskConfig(Section):
    """How the study's speech batches train and score the model. Default: the model's forward returns
    its loss and its `greedy_decode` the token ids (mpsearch.training.tasks.SpeechTask)."""

    adapter: str | None = Field(None, description="'package.module:Name' of a task adapter (loss(model, batch), "
                                                  "decode(model, batch); see mpsearch.training.tasks.TaskAdapter)")

    @field_validator("adapter")
    @classmethod
    def _adapter_form(cls, value: str | None) -> str | None:
        return check_dotted_path(value)


class TrainConfig(Section):
    max_steps: int = Field(2000, ge=1)
    max_minutes: float | None = Field(None, gt=0, description="stop training after this wall time")
    lr: float = Field(2e-3, gt=0)
    weight_decay: float = Field(1e-4, ge=0)
    warmup_steps: int = Field(200, ge=0)
    grad_clip: float = Field(5.0, gt=0)
    eval_every: int = Field(500, ge=1)
    checkpoint_every: int = Field(200, ge=1)
    augment: bool = Field(True, description="apply the data section's SpecAugment while training")
    threads: int | None = Field(None, ge=1, description="torch threads; default all cores")
    seed: int = 0


class BaselineConfig(Section):
    """Where the float baseline comes from: a trained checkpoint (`mpsearch train` writes the format), or
    trained by the study from its `train` section when no checkpoint is named."""

    checkpoint: str | None = Field(
        None, description="a model checkpoint written by `mpsearch train` (a path, or 'pretrained:<name>' for "
                          "one shipped with mpsearch); the study then never trains its float model")

    @field_validator("checkpoint")
    @classmethod
    def _checkpoint_names_something(cls, value: str | None) -> str | None:
        if value is not None and not value.strip():
            raise ValueError("must be a checkpoint path or 'pretrained:<name>'")
        return value


class SensitivityConfig(Section):
    """Per-site Hessian traces (mpsearch.sensitivity) and the HAWQ-V2 Omega table built from them."""

    backend: Literal["hutchinson", "pyhessian"] = "hutchinson"
    batches: int = Field(2, ge=1, description="train batches the Hessian is averaged over")
    max_batch_frames: int | None = Field(
        None, ge=100, description="frames per sensitivity batch; None: the data section's max_batch_frames")
    tol: float = Field(0.05, gt=0, lt=1,
                       description="stop when every site's relative standard error is below this")
    min_probes: int = Field(8, ge=2, description="Rademacher probes drawn before the tolerance is checked")
    max_probes: int = Field(200, ge=2, description="budget of Hessian-vector products per batch (a probe is "
                                                   "one; a deflation costs 2 x deflation_rank)")
    deflation_rank: int = Field(16, ge=0, description="directions of largest curvature whose part of each trace is "
                                                      "computed exactly once plain probing is seen to need more "
                                                      "HVPs than that costs; 0: never")
    seed: int = 0
    methods: tuple[str, ...] = Field(("uniform",), min_length=1,
                                     description="quantization methods whose Omega is tabulated")
    bits: tuple[int, ...] = Field((2, 3, 4, 5, 6, 8), min_length=1, description="candidate weight bit widths")

    @field_validator("bits")
    @classmethod
    def _bits_in_range(cls, value: tuple[int, ...]) -> tuple[int, ...]:
        bad = [b for b in value if not 2 <= b <= 8]
        if bad:
            raise ValueError(f"must hold bit widths in [2, 8] (found {bad})")
        return tuple(sorted(set(value)))

    @model_validator(mode="after")
    def _probe_budget_covers_minimum(self) -> SensitivityConfig:
        if self.max_probes < self.min_probes:
            raise ValueError(f"max_probes ({self.max_probes}) must be at least min_probes ({self.min_probes})")
        return self


class HardwareConfig(Section):
    profile: str = Field("nna-int8", description="a shipped profile name or a path to a profile YAML")
    workload: dict[str, Any] = Field(default_factory=dict, description="hardware.Workload fields: one utterance")


def _finetune_default() -> TrainConfig:
    return TrainConfig(max_steps=40, lr=1e-4, warmup_steps=0, eval_every=1_000_000, checkpoint_every=1_000_000,
                       augment=False)


class WarmStartConfig(Section):
    """Trials enqueued before the sampler's own. The uniform-precision policies are always enqueued:
    they are the reference every front must beat."""

    ilp: int = Field(4, ge=0, description="ILP candidates from a latency budget sweep over the sensitivity report")
    supernet: bool = Field(False, description="enqueue the supernet's lambda-sweep policies (`mpsearch supernet`)")


class OneShotConfig(Section):
    """`search.trial_mode: oneshot`: one set of shared float weights trained once for every width of the
    search space (mpsearch.supernet.oneshot), so a trial is calibrate + score, with no fine-tune of its
    own; the policies of the final front are then confirmed by the usual fine-tuned trial."""

    train: TrainConfig | None = Field(
        None, description="the shared weights' training, from the float baseline; default the trials' own "
                          "fine-tune (search.finetune), checkpointed four times (SearchConfig.shared_training)")
    random_policies: int = Field(1, ge=0, description="random policies per step beside the widest and narrowest")


OBJECTIVES = ("wer", "cer", "perplexity", "latency_ms", "size_bytes", "avg_weight_bits")


class SearchConfig(Section):
    """The trials: a search space, a sampler, and how each trial fine-tunes and is scored."""

    space: str | None = Field(None, description="search space YAML (see search_spaces/)")
    backend: Literal["optuna", "ray"] = "optuna"
    sampler: Literal["nsga2", "tpe", "random", "gp"] = "nsga2"
    objectives: tuple[str, ...] = Field(("wer", "latency_ms"), min_length=2, description="all minimised")
    trials: int = Field(20, ge=1, description="complete trials wanted, warm-start trials included")
    workers: Annotated[int, Field(ge=1)] | Literal["auto"] = Field(
        "auto", description="trials run at once; auto: one one-thread trial per core free at start (at most "
                            "4 on the optuna backend, whose trials are threads of one process), one per "
                            "cluster CPU on ray")
    storage: str | None = Field(None, description="SQLAlchemy URL; default sqlite:///<study dir>/optuna.db")
    address: str | None = Field(None, description="ray backend: a running Ray cluster; default a local Ray")
    emulation: Literal["nna", "none"] = Field("nna", description="nna: the chip's integer arithmetic in training")
    finetune: TrainConfig = Field(default_factory=_finetune_default,
                                  description="QAT fine-tune of each trial from the float baseline")
    trial_mode: Literal["finetune", "oneshot"] = Field(
        "finetune", description="finetune: each trial fine-tunes its policy from the float baseline; oneshot: "
                                "each trial scores its policy on shared weights trained once (search.oneshot)")
    oneshot: OneShotConfig = OneShotConfig()
    calibration_batches: int = Field(4, ge=1, description="train batches that set the activation ranges")
    eval_split: Literal["dev", "test"] = "dev"
    eval_utterances: int | None = Field(None, ge=1, description="score trials on a fixed seeded subset of the "
                                                                "eval split; default all of it")
    seed: int = 0
    warm_start: WarmStartConfig = WarmStartConfig()
    reference_point: dict[str, float] = Field(
        default_factory=dict, description="hypervolume reference per objective; default: WER 1.0, the others "
                                          "1.1 x the uniform 8-bit policy's")
    heartbeat_seconds: int = Field(60, ge=1, description="a trial silent this long is stale and re-run")

    @property
    def shared_training(self) -> TrainConfig:
        """The one-shot shared weights' training: `oneshot.train`, else the budget of one fine-tuned trial
        (`finetune`'s steps, learning rate and augmentation), each step spent on the sandwich's policies
        at once. One-shot WER then stands in for fine-tuned WER: on the quickstart the two have the same
        mean over random policies and rank them alike (Kendall tau 0.91, analysis/bench_oneshot.py), where
        ten times the steps at twice the learning rate rank them worse (0.70), its weights a better-trained
        model than any trial's. Four checkpoints, so a killed run resumes it."""
        if self.oneshot.train is not None:
            return self.oneshot.train
        return self.finetune.model_copy(update={"checkpoint_every": max(1, self.finetune.max_steps // 4)})

    @field_validator("objectives")
    @classmethod
    def _known_objectives(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        bad = [o for o in value if o not in OBJECTIVES]
        if bad or len(set(value)) != len(value):
            raise ValueError(f"must be distinct names from {', '.join(OBJECTIVES)}")
        return value

    @field_validator("storage")
    @classmethod
    def _storage_is_a_url(cls, value: str | None) -> str | None:
        if value is None:
            return value
        from sqlalchemy.engine import make_url
        from sqlalchemy.exc import ArgumentError

        forms = "must be a SQLAlchemy URL such as sqlite:////abs/path/optuna.db or postgresql://user@host/db"
        try:
            url = make_url(value)
            url.get_dialect()
        except ArgumentError as exc:  # unparsable, or a database kind SQLAlchemy does not know
            raise ValueError(f"{forms} ({str(exc).splitlines()[0]})") from None
        if url.get_backend_name() == "sqlite" and (url.host or url.port or url.username):
            raise ValueError(f"{forms} (a SQLite URL has three slashes before a relative path, four before an "
                             "absolute one)")
        return value

    @field_validator("reference_point")
    @classmethod
    def _reference_names_objectives(cls, value: dict[str, float]) -> dict[str, float]:
        bad = [o for o in value if o not in OBJECTIVES]
        if bad:
            raise ValueError(f"keys must be objectives ({', '.join(OBJECTIVES)})")
        return value


class SupernetConfig(Section):
    """The differentiable mixed-precision supernet (mpsearch.supernet): one short search per lambda.

    Each lambda prices the expected latency in units of task loss per the search space's whole latency
    range (its all-widest minus its all-narrowest policy), so lambda = 1 trades that range for one unit
    of loss on any model and profile; `size_weight` does the same for the expected weight size."""

    lambdas: tuple[float, ...] = Field((0.0, 0.1, 0.3, 1.0, 3.0), min_length=1,
                                       description="latency weights swept, one derived policy each")
    steps: int = Field(60, ge=1, description="steps per lambda; a step is one weight update and one logit "
                                             "update, on separate batches")
    warmup_steps: int = Field(0, ge=0, description="weight-only steps before the logits start to move")
    weight_lr: float = Field(1e-4, gt=0, description="AdamW learning rate of the shared float weights")
    arch_lr: float = Field(0.05, gt=0, description="Adam learning rate of the architecture logits")
    temperature_start: float = Field(5.0, gt=0, description="softmax temperature at the first step")
    temperature_end: float = Field(0.5, gt=0, description="temperature at the last step (geometric anneal)")
    gumbel: bool = Field(True, description="mix by Gumbel-softmax samples (seeded) rather than the softmax")
    size_weight: float = Field(0.0, ge=0, description="weight of the expected weight size, per the space's "
                                                      "size range")
    grad_clip: float = Field(5.0, gt=0)
    max_batch_frames: int | None = Field(None, ge=100, description="frames per batch; None: the data "
                                                                   "section's max_batch_frames")
    quantize_activations: bool = Field(False, description="train under each group's first act_bits (slower: "
                                                          "the LSTMs leave the fused kernel)")
    seed: int = 0

    @field_validator("lambdas")
    @classmethod
    def _lambdas_not_negative(cls, value: tuple[float, ...]) -> tuple[float, ...]:
        if any(v < 0 for v in value):
            raise ValueError("must hold numbers >= 0")
        return value


class StudyConfig(Section):
    name: str
    output_dir: str | None = None
    data: DataConfig = DataConfig()
    model: ModelConfig
    task: TaskConfig = TaskConfig()
    train: TrainConfig = TrainConfig()
    baseline: BaselineConfig = BaselineConfig()
    hardware: HardwareConfig = HardwareConfig()
    sensitivity: SensitivityConfig = SensitivityConfig()
    search: SearchConfig = SearchConfig()
    supernet: SupernetConfig = SupernetConfig()

    @field_validator("name")
    @classmethod
    def _name_is_a_folder_name(cls, value: str) -> str:
        if not value or any(c in value for c in "/\\ ") or value.startswith("."):
            raise ValueError("must be a plain folder name (no slashes or spaces)")
        return value

    @property
    def study_dir(self) -> Path:
        return Path(self.output_dir) if self.output_dir else Path("runs") / self.name

    @classmethod
    def from_yaml(cls, path: str | Path) -> StudyConfig:
        """Read a study YAML. `extends: other.yaml` (relative to this file) starts from that study and
        overrides it key by key: mappings merge, anything else (lists included) replaces."""
        return cls.from_dict(_resolve_extends(Path(path), ()), source=str(path))

    @classmethod
    def _read_yaml(cls, path: Path) -> dict:
        if not path.is_file():
            raise ConfigError(f"Study file '{path}' does not exist; pass the path of a study YAML (see studies/).")
        raw = path.read_bytes()
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            line = raw.count(b"\n", 0, exc.start) + 1
            raise ConfigError(f"{path}: byte 0x{raw[exc.start]:02x} at line {line} (byte offset {exc.start}) is not "
                              "UTF-8; save the study file as UTF-8.") from None
        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
            problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
            raise ConfigError(f"{path}: YAML syntax error{where}: {problem}; fix the YAML syntax.") from None
        if not isinstance(data, dict):
            raise ConfigError(f"{path}: a study must be a YAML mapping with at least 'name' and 'model'; "
                              f"got {type(data).__name__}.")
        return data


def _resolve_extends(path: Path, seen: tuple[Path, ...]) -> dict:
    data = StudyConfig._read_yaml(path)
    parent = data.pop("extends", None)
    if parent is None:
        return data
    if not isinstance(parent, str):
        raise ConfigError(f"{path}: 'extends' must name one study YAML (a path relative to this file); got {parent!r}.")
    if "name" not in data:
        raise ConfigError(f"{path}: a study that extends another needs its own 'name' (else both share a study "
                          "folder and trial storage); add one.")
    parent_path = (path.parent / parent).resolve()
    if parent_path in seen or parent_path == path.resolve():
        raise ConfigError(f"{path}: 'extends: {parent}' makes a cycle of studies; remove one of the 'extends'.")
    if not parent_path.is_file():
        raise ConfigError(f"{path}: 'extends: {parent}' names no file (looked for {parent_path}); fix the path.")
    return _merged(_resolve_extends(parent_path, (*seen, path.resolve())), data)


def _merged(base: dict, override: dict) -> dict:
    out = dict(base)
    for key, value in override.items():
        out[key] = _merged(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def format_validation_error(exc: ValidationError, source: str) -> str:
    """One line per problem, naming the field, the rule and the value (first problem first)."""
    lines = []
    for err in exc.errors():
        field = ".".join(str(p) for p in err["loc"]) or "(top level)"
        if err["type"] == "extra_forbidden":
            lines.append(f"{source}: unknown key '{field}'; remove it or check its spelling.")
        elif err["type"] == "missing":
            lines.append(f"{source}: required key '{field}' is missing; add it.")
        else:
            msg = err["msg"].removeprefix("Value error, ")
            lines.append(f"{source}: '{field}' {msg[0].lower() + msg[1:]}; got {err.get('input')!r}.")
    return lines[0] if len(lines) == 1 else lines[0] + f" (and {len(lines) - 1} more: " + " ".join(lines[1:]) + ")"


def config_hash(*parts: Any) -> str:
    """Stable short hash of config fragments, used to key stage artefacts."""
    blob = json.dumps([p.to_dict() if isinstance(p, Section) else p for p in parts], sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:12]
