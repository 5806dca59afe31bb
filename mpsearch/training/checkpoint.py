"""The trained float model as one file: what `mpsearch train` writes and `baseline.checkpoint` reads.

A checkpoint carries everything needed to rebuild the model and to check that it is the model a study
describes: the model's registry name (or the dotted path of the user's factory) and params, the feature
settings it was trained on, the tokenizer, the state dict, and where it came from (the study, its config
hash, steps, metrics, date, mpsearch version). A checkpoint is a dict saved with `torch.save` and read with `weights_only=True`, so loading
one runs no code from the file.

Checkpoints shipped with mpsearch (package data under `mpsearch/pretrained/`) are named
`pretrained:<name>`; a model card `<name>.md` sits beside each.
"""

from __future__ import annotations

import hashlib
import pickle
import zipfile
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import torch

from mpsearch.artifacts import atomic_path, check_header
from mpsearch.config import FeatureConfig, ModelConfig
from mpsearch.data.tokenizer import CharTokenizer
from mpsearch.errors import ConfigError, MpsearchError

CHECKPOINT_TYPE = "mpsearch.model_checkpoint"
CHECKPOINT_VERSION = 1
PRETRAINED_PREFIX = "pretrained:"
PRETRAINED_PACKAGE = "mpsearch.pretrained"


class CheckpointError(MpsearchError):
    """A checkpoint file that cannot be read, or that does not match the study naming it."""


@dataclass(frozen=True)
class ModelCheckpoint:
    model: ModelConfig
    features: FeatureConfig
    alphabet: str
    state_dict: dict[str, torch.Tensor]
    source: dict[str, Any]

    def tokenizer(self) -> CharTokenizer:
        return CharTokenizer(self.alphabet)

    def to_dict(self) -> dict[str, Any]:
        return {"_type": CHECKPOINT_TYPE, "_version": CHECKPOINT_VERSION, "model": self.model.to_dict(),
                "features": self.features.to_dict(), "tokenizer": {"type": "CharTokenizer", "alphabet": self.alphabet},
                "state_dict": self.state_dict, "source": self.source}


def save_checkpoint(path: str | Path, checkpoint: ModelCheckpoint) -> None:
    """Write atomically: a kill leaves the old file or the new one."""
    with atomic_path(path) as tmp:
        torch.save(checkpoint.to_dict(), tmp)


def resolve_checkpoint(spec: str) -> Path:
    """The file a `baseline.checkpoint` value names: a path, or `pretrained:<name>` for a shipped one."""
    if spec.startswith(PRETRAINED_PREFIX):
        name = spec[len(PRETRAINED_PREFIX):]
        folder = resources.files(PRETRAINED_PACKAGE)
        shipped = sorted(p.name[: -len(".pt")] for p in folder.iterdir() if p.name.endswith(".pt"))
        path = Path(str(folder / f"{name}.pt"))
        if name not in shipped:
            raise ConfigError(f"baseline.checkpoint '{spec}' names no shipped model; shipped: "
                              f"{', '.join(PRETRAINED_PREFIX + s for s in shipped) or 'none'}.")
        return path
    path = Path(spec).expanduser()
    if not path.is_file():
        raise ConfigError(f"baseline.checkpoint '{spec}' does not exist; give the path of a model.pt written by "
                          "`mpsearch train` (runs/<study>/baseline/model.pt) or a shipped 'pretrained:<name>'.")
    return path


def load_checkpoint(path: str | Path) -> ModelCheckpoint:
    """Read a checkpoint; a torn, foreign or newer file is a CheckpointError naming it."""
    path = Path(path)
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except (RuntimeError, EOFError, OSError, zipfile.BadZipFile, pickle.UnpicklingError, ValueError) as exc:
        raise CheckpointError(f"{path} is not a readable checkpoint ({str(exc).splitlines()[0][:120]}); it may be "
                              "truncated: write it again with `mpsearch train`.") from None
    check_header(data, CHECKPOINT_TYPE, CHECKPOINT_VERSION, source=str(path), what="an mpsearch model checkpoint",
                 noun="checkpoint version", remedy="write one with `mpsearch train STUDY.yaml`", error=CheckpointError)
    try:
        tokenizer = data["tokenizer"]
        if tokenizer.get("type") != "CharTokenizer":
            raise CheckpointError(f"{path} holds a {tokenizer.get('type')!r} tokenizer; this mpsearch reads "
                                  "CharTokenizer.")
        return ModelCheckpoint(ModelConfig.from_dict(data["model"], source=f"{path} model"),
                               FeatureConfig.from_dict(data["features"], source=f"{path} features"),
                               tokenizer["alphabet"], data["state_dict"], data.get("source") or {})
    except (KeyError, TypeError, AttributeError) as exc:
        raise CheckpointError(f"{path} lacks the checkpoint field {exc}; write it again with `mpsearch train`.") \
            from None


def file_sha256(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def check_matches(checkpoint: ModelCheckpoint, where: str, model: ModelConfig, features: FeatureConfig,
                  tokenizer: CharTokenizer) -> None:
    """One line naming both sides when the checkpoint is not the model the study describes."""
    from mpsearch.models import resolved_params

    if (checkpoint.model.name, checkpoint.model.factory) != (model.name, model.factory):
        theirs, ours = _source(checkpoint.model), _source(model)
        raise CheckpointError(f"{where} holds a model of {theirs} but the study's model section has {ours}; set "
                              f"{theirs} in the study's model section or name another checkpoint.")
    ours, theirs = resolved_params(model), resolved_params(checkpoint.model)
    differ = sorted(k for k in set(ours) | set(theirs) if ours.get(k) != theirs.get(k))
    if differ:
        pairs = "; ".join(f"{k}: checkpoint {theirs.get(k)!r}, study {ours.get(k)!r}" for k in differ)
        raise CheckpointError(f"{where} does not match the study's model.params ({pairs}); make the study's model "
                              "section match the checkpoint's or name another checkpoint.")
    for field in ("n_mels", "normalize"):
        if getattr(checkpoint.features, field) != getattr(features, field):
            raise CheckpointError(
                f"{where} was trained on data.features.{field} {getattr(checkpoint.features, field)!r} but the "
                f"study has {getattr(features, field)!r}; set data.features.{field} to the checkpoint's.")
    if checkpoint.alphabet != tokenizer.alphabet:
        raise CheckpointError(f"{where} has the tokenizer alphabet {checkpoint.alphabet!r} but the study's is "
                              f"{tokenizer.alphabet!r}; use the checkpoint's tokenizer (delete the study folder's "
                              "tokenizer.json) or name another checkpoint.")


def _source(model: ModelConfig) -> str:
    return f"model.name: {model.name}" if model.name is not None else f"model.factory: {model.factory}"
