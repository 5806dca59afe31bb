"""From manifests to padded, length-bucketed batches, with log-mel features cached on disk.

The cache holds un-normalised log-mels per manifest, keyed by the manifest's bytes and the feature
settings, so the next epoch and the next trial read them instead of recomputing.
"""

from __future__ import annotations

import copy
import hashlib
import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm.auto import tqdm

from mpsearch.artifacts import atomic_path, cached
from mpsearch.config import DataConfig, FeatureConfig
from mpsearch.data.features import log_mel, normalize_utterance, spec_augment
from mpsearch.data.manifest import load_audio, read_manifest
from mpsearch.data.tokenizer import CharTokenizer, normalize_text
from mpsearch.errors import DataError

log = logging.getLogger(__name__)
CACHE_VERSION = 1


@dataclass
class Batch:
    feats: torch.Tensor  # (B, T, n_mels), zero padded
    feat_lens: torch.Tensor  # (B,)
    targets: torch.Tensor  # (B, U), zero padded
    target_lens: torch.Tensor  # (B,)
    texts: list[str]

    def __len__(self) -> int:
        return len(self.texts)


class FeatureSet:
    """One split: features (normalised if configured), token ids and reference texts."""

    def __init__(self, feats: list[torch.Tensor], texts: list[str], tokenizer: CharTokenizer,
                 features: FeatureConfig, global_stats: tuple[torch.Tensor, torch.Tensor] | None = None):
        self.raw = feats
        self.texts = [normalize_text(t) for t in texts]
        self.tokens = [torch.tensor(tokenizer.encode(t), dtype=torch.long) for t in self.texts]
        self.features = features
        self.global_stats = global_stats

    def __len__(self) -> int:
        return len(self.raw)

    def normalized(self, i: int) -> torch.Tensor:
        feats = self.raw[i].float()
        if self.features.normalize == "utterance":
            return normalize_utterance(feats)
        mean, std = self.global_stats
        return (feats - mean) / std

    def subset(self, count: int | None, seed: int = 0) -> FeatureSet:
        """A fixed seeded random `count` of the utterances (all of them when None or larger)."""
        if not count or count >= len(self):
            return self
        keep = sorted(torch.randperm(len(self), generator=torch.Generator().manual_seed(seed))[:count].tolist())
        part = copy.copy(self)
        part.raw = [self.raw[i] for i in keep]
        part.texts = [self.texts[i] for i in keep]
        part.tokens = [self.tokens[i] for i in keep]
        return part

    def frames(self) -> list[int]:
        return [f.shape[0] for f in self.raw]

    def batches(self, max_batch_frames: int, shuffle: bool = False, seed: int = 0,
                augment: bool = False) -> Iterator[Batch]:
        """Length-bucketed batches: utterances sorted by length, grouped so that padded frames stay
        under `max_batch_frames`; the order of batches (not their content) is shuffled per seed."""
        order = sorted(range(len(self)), key=lambda i: self.raw[i].shape[0])
        groups: list[list[int]] = []
        current: list[int] = []
        for i in order:
            longest = self.raw[i].shape[0]  # sorted ascending, so the newcomer is the longest
            if current and longest * (len(current) + 1) > max_batch_frames:
                groups.append(current)
                current = []
            current.append(i)
        if current:
            groups.append(current)
        generator = torch.Generator().manual_seed(seed)
        if shuffle:
            groups = [groups[j] for j in torch.randperm(len(groups), generator=generator).tolist()]
        spec = self.features.specaugment if augment else None
        for group in groups:
            feats = [self.normalized(i) for i in group]
            if spec is not None:
                feats = [spec_augment(f, generator, spec.freq_masks, spec.freq_width, spec.time_masks,
                                      spec.time_width) for f in feats]
            yield collate(feats, [self.tokens[i] for i in group], [self.texts[i] for i in group])


def collate(feats: Sequence[torch.Tensor], tokens: Sequence[torch.Tensor], texts: list[str]) -> Batch:
    feat_lens = torch.tensor([f.shape[0] for f in feats], dtype=torch.long)
    target_lens = torch.tensor([t.numel() for t in tokens], dtype=torch.long)
    padded = torch.nn.utils.rnn.pad_sequence(list(feats), batch_first=True)
    targets = torch.zeros(len(tokens), max(1, int(target_lens.max())), dtype=torch.long)
    for row, t in enumerate(tokens):
        targets[row, : t.numel()] = t
    return Batch(padded, feat_lens, targets, target_lens, texts)


def _manifest_key(manifest: Path, features: FeatureConfig) -> str:
    digest = hashlib.sha256(manifest.read_bytes())
    digest.update(f"v{CACHE_VERSION}-mels{features.n_mels}".encode())
    return digest.hexdigest()[:16]


def load_features(manifest: str | Path, features: FeatureConfig, cache_dir: str | Path,
                  progress: bool = True) -> tuple[list[torch.Tensor], list[str]]:
    """Log-mel features of every utterance in `manifest`, from the cache when it has them."""
    manifest = Path(manifest)
    if not manifest.is_file():
        raise DataError(f"Manifest '{manifest}' does not exist; create it with `mpsearch data synth` or "
                        "`mpsearch data librispeech`.")
    key = _manifest_key(manifest, features)
    cache = Path(cache_dir) / f"{manifest.stem}-{key}.pt"

    def load(path: Path) -> tuple[str, tuple[list[torch.Tensor], list[str]]]:
        stored = torch.load(path, weights_only=True)
        return key, (list(torch.split(stored["feats"], stored["frames"])), stored["texts"])

    # a cache cut short by a kill is set aside (one line naming it) and computed again
    return cached(cache, key, lambda: _compute_features(manifest, features, cache, progress), load)


def _compute_features(manifest: Path, features: FeatureConfig, cache: Path,
                      progress: bool) -> tuple[list[torch.Tensor], list[str]]:
    utterances = read_manifest(manifest)
    if not utterances:
        raise DataError(f"Manifest '{manifest}' has no utterances; check it with `mpsearch data check`.")
    feats, texts = [], []
    for utt in tqdm(utterances, desc=f"features {manifest.name}", disable=not progress, leave=False):
        audio = torch.from_numpy(load_audio(utt.audio_filepath))
        # float16 halves the cache; log-mels need no more precision than that
        feats.append(log_mel(audio, features.n_mels).to(torch.float16))
        texts.append(utt.text)
    with atomic_path(cache) as tmp:
        torch.save({"feats": torch.cat(feats), "frames": [f.shape[0] for f in feats], "texts": texts}, tmp)
    log.info("cached features of %d utterances from %s in %s", len(feats), manifest, cache)
    return feats, texts


def global_stats(feats: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    stacked = torch.cat([f.float() for f in feats])
    return stacked.mean(dim=0), stacked.std(dim=0, unbiased=False).clamp_min(1e-5)


@dataclass
class SpeechData:
    """The train/dev/test splits of a study, ready to batch."""

    train: FeatureSet
    dev: FeatureSet
    test: FeatureSet
    tokenizer: CharTokenizer
    config: DataConfig

    def split(self, name: str) -> FeatureSet:
        return {"train": self.train, "dev": self.dev, "test": self.test}[name]


def load_speech_data(config: DataConfig, manifests: dict[str, Path], cache_dir: str | Path,
                     tokenizer: CharTokenizer, progress: bool = True) -> SpeechData:
    raw = {split: load_features(manifests[split], config.features, cache_dir, progress)
           for split in ("train", "dev", "test")}
    stats = global_stats(raw["train"][0]) if config.features.normalize == "global" else None
    sets = {split: FeatureSet(f, t, tokenizer, config.features, stats) for split, (f, t) in raw.items()}
    return SpeechData(sets["train"], sets["dev"], sets["test"], tokenizer, config)
