"""Fixtures shared by the data tests: one tiny synthesized corpus per session."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest

from mpsearch.data.synth import synthesize_corpus


@dataclass(frozen=True)
class TinyCorpus:
    folder: Path
    manifests: dict[str, Path]
    utterances: int
    seed: int


@pytest.fixture(scope="session")
def synth_corpus(tmp_path_factory) -> TinyCorpus:
    """A 40-utterance built-in corpus, synthesized once per session with two workers."""
    folder = tmp_path_factory.mktemp("synth") / "corpus"
    manifests = synthesize_corpus(folder, utterances=40, seed=7, workers=2)
    return TinyCorpus(folder, manifests, utterances=40, seed=7)
