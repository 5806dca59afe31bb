"""Where a study's train/dev/test manifests come from: the built-in synthesised corpus, a user's
JSONL manifests, or LibriSpeech-layout folders converted once into manifests in the study folder."""

from __future__ import annotations

from pathlib import Path

from mpsearch.config import DataConfig
from mpsearch.errors import ConfigError

SPLITS = ("train", "dev", "test")


def resolve_manifests(cfg: DataConfig, study_dir: Path, progress: bool = True) -> dict[str, Path]:
    if cfg.corpus == "builtin":
        from mpsearch.data.synth import CORPUS_VERSION, synthesize_corpus

        # Beside the study folders, keyed by what makes it, so studies on the same corpus share it and a
        # new corpus version gets a folder of its own instead of clashing with the old one.
        voices = "" if cfg.voices == "standard" else f"-{cfg.voices}"
        name = f"builtin-v{CORPUS_VERSION}{voices}-seed{cfg.seed}-n{cfg.utterances}"
        out = Path(cfg.path) if cfg.path else study_dir.parent / "corpus" / name
        manifests = synthesize_corpus(out, utterances=cfg.utterances, seed=cfg.seed, voices=cfg.voices)
        return {k: Path(v) for k, v in manifests.items()}
    missing = [s for s in SPLITS if getattr(cfg, s) is None]
    if missing:
        raise ConfigError(f"data.corpus '{cfg.corpus}' needs data.{missing[0]} (and data.train, data.dev, "
                          f"data.test): set it to a {'JSONL manifest' if cfg.corpus == 'manifest' else 'LibriSpeech folder'}.")
    if cfg.corpus == "manifest":
        return {s: Path(getattr(cfg, s)) for s in SPLITS}
    from mpsearch.data.librispeech import librispeech_to_manifest

    manifests = {}
    for split in SPLITS:
        out = study_dir / "manifests" / f"{split}.jsonl"
        if not out.is_file():
            librispeech_to_manifest(Path(getattr(cfg, split)), out)
        manifests[split] = out
    return manifests
