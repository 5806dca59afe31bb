"""A tiny but real study for the search tests: the session's synthesized corpus, a very small RNN-T, a
few training steps, NNA emulation, SQLite storage in the test's folder."""

from __future__ import annotations

import sqlite3
from collections import Counter
from types import SimpleNamespace

import pytest
import yaml

TINY_SPACE = {
    "groups": {
        "encoder": {"sites": ["frontend.*", "encoder.*"], "weight_bits": [4, 8]},
        "rest": {"sites": ["predictor.*", "joiner.*"], "weight_bits": [4, 8]},
    }
}


def tiny_study_dict(tmp_path, corpus, **search) -> dict:
    space = tmp_path / "space.yaml"
    if not space.exists():
        space.write_text(yaml.safe_dump(TINY_SPACE))
    return {
        "name": "tiny",
        "output_dir": str(tmp_path / "study"),
        "data": {"corpus": "manifest", "train": str(corpus.manifests["train"]), "dev": str(corpus.manifests["dev"]),
                 "test": str(corpus.manifests["test"]), "max_batch_frames": 3000,
                 "features": {"n_mels": 16}},
        "model": {"name": "rnnt", "params": {"frontend_dim": 8, "enc_hidden": 12, "enc_layers": 1, "pred_embed": 6,
                                             "pred_hidden": 12, "joint_dim": 10, "dropout": 0.0}},
        "train": {"max_steps": 3, "warmup_steps": 0, "eval_every": 100, "threads": 1},
        "sensitivity": {"batches": 1, "min_probes": 2, "max_probes": 4, "bits": [4, 8]},
        # one trial at a time, so the trial order (and what a test asserts of it) does not depend on timing
        "search": {"space": str(space), "trials": 4, "workers": 1, "calibration_batches": 1, "eval_utterances": 4,
                   "warm_start": {"ilp": 1}, "finetune": {"max_steps": 1, "warmup_steps": 0, "threads": 1},
                   **search},
    }


def write_study(tmp_path, corpus, **search):
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump(tiny_study_dict(tmp_path, corpus, **search)))
    return path


@pytest.fixture
def tiny_study_yaml(tmp_path, synth_corpus):
    return write_study(tmp_path, synth_corpus)


@pytest.fixture
def make_study(tmp_path, synth_corpus):
    """write_study for this test's folder: make_study(**search_overrides) -> the study YAML's path."""
    return lambda **search: write_study(tmp_path, synth_corpus, **search)


@pytest.fixture(scope="session")
def ray_session():
    """One local Ray for the session's in-process Ray tests (starting Ray takes seconds)."""
    import logging

    ray = pytest.importorskip("ray")
    ray.init(address="local", num_cpus=2, include_dashboard=False, logging_level=logging.WARNING, log_to_driver=False)
    yield ray
    ray.shutdown()


@pytest.fixture
def make_study_yaml(tmp_path, synth_corpus):
    """`make_study_yaml(trials=2, ...)`: the tiny study's YAML with these `search:` overrides."""
    return lambda **search: write_study(tmp_path, synth_corpus, **search)


def _read_trial_states(db) -> Counter:
    """Trial states, and as "STAMPED" the RUNNING trials a search process has taken as its own (killed
    then, the trial is killed mid-trial rather than while the sampler chooses its point)."""
    try:
        with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5) as con:
            states = Counter(state for (state,) in con.execute("SELECT state FROM trials"))
            states["STAMPED"] = con.execute(
                "SELECT count(*) FROM trials t JOIN trial_system_attributes a ON a.trial_id = t.trial_id "
                "WHERE t.state = 'RUNNING' AND a.key = 'mpsearch:run'").fetchone()[0]
            return states
    except sqlite3.Error:  # not created yet, or locked this instant
        return Counter()


def _mid_trial(states: Counter) -> bool:
    return states["RUNNING"] >= 1 and states["STAMPED"] == states["RUNNING"]


@pytest.fixture
def trial_states():
    """`read(db)`: the trial states in a study's SQLite file (read-only, safe while a search writes it);
    `mid_trial(states)`: whether every RUNNING trial has been taken by a search process, so a kill now
    lands in the middle of a trial."""
    return SimpleNamespace(read=_read_trial_states, mid_trial=_mid_trial)
