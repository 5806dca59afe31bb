"""Fixtures shared by every test folder: one tiny synthesized corpus per session, one torch thread."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

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


@pytest.fixture(autouse=True, scope="session")
def one_torch_thread():
    """Tiny models run fastest on one thread, and spinning OpenMP threads stall on a shared machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def stage_run(monkeypatch):
    """`stage_run(stage, result)` makes Study.run answer `result` for `stage` without running it, so a
    CLI test sees only the printing; it returns a dict that collects the study's dir and whatever
    keyword arguments the CLI passed."""
    from mpsearch.study import Study

    def install(stage: str, result) -> dict:
        seen = {}

        def run(study, until, **kwargs):
            assert until == stage
            seen.update(dir=study.dir, **kwargs)
            return result

        monkeypatch.setattr(Study, "run", run)
        return seen

    return install
