"""StudyConfig: the validated form of a study YAML.

Validation happens here, where input enters: unknown keys and wrong types are errors that name the
file, the field, the rule and the value received.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Literal, Optional

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

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
    specaugment: Optional[SpecAugmentConfig] = None


class DataConfig(Section):
    corpus: Literal["builtin", "manifest", "librispeech"] = "builtin"
    utterances: int = Field(4000, ge=10, description="builtin: utterances synthesised in total")
    seed: int = 0
    path: Optional[str] = Field(None, description="builtin: corpus folder; librispeech: the LibriSpeech root")
    train: Optional[str] = Field(None, description="manifest: train JSONL")
    dev: Optional[str] = None
    test: Optional[str] = None
    features: FeatureConfig = FeatureConfig()
    max_batch_frames: int = Field(24000, ge=100, description="length-bucketed batches hold at most this many feature frames")


class ModelConfig(Section):
    name: str
    params: dict[str, Any] = Field(default_factory=dict)


class TrainConfig(Section):
    max_steps: int = Field(2000, ge=1)
    max_minutes: Optional[float] = Field(None, gt=0, description="stop training after this wall time")
    lr: float = Field(2e-3, gt=0)
    weight_decay: float = Field(1e-4, ge=0)
    warmup_steps: int = Field(200, ge=0)
    grad_clip: float = Field(5.0, gt=0)
    eval_every: int = Field(500, ge=1)
    checkpoint_every: int = Field(200, ge=1)
    augment: bool = Field(True, description="apply the data section's SpecAugment while training")
    threads: Optional[int] = Field(None, ge=1, description="torch threads; default all cores")
    seed: int = 0


class StudyConfig(Section):
    name: str
    output_dir: Optional[str] = None
    data: DataConfig = DataConfig()
    model: ModelConfig
    train: TrainConfig = TrainConfig()

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
    def from_yaml(cls, path: str | Path) -> "StudyConfig":
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"Study file '{path}' does not exist; pass the path of a study YAML (see studies/).")
        try:
            data = yaml.safe_load(path.read_text())
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
            problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
            raise ConfigError(f"{path}: YAML syntax error{where}: {problem}; fix the YAML syntax.") from None
        if not isinstance(data, dict):
            raise ConfigError(f"{path}: a study must be a YAML mapping with at least 'name' and 'model'; "
                              f"got {type(data).__name__}.")
        return cls.from_dict(data, source=str(path))


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
