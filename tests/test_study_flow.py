"""Study.run's plumbing without training: what the study builds once, and the batches the stages read."""

from types import SimpleNamespace

import pytest

from mpsearch.config import StudyConfig
from mpsearch.errors import ConfigError
from mpsearch.study import Study

SPACE = "search_spaces/rnnt_groups.yaml"


@pytest.fixture
def study(tmp_path, monkeypatch):
    monkeypatch.chdir(__import__("pathlib").Path(__file__).parents[1])
    cfg = StudyConfig.from_dict({
        "name": "flow", "output_dir": str(tmp_path / "flow"), "data": {"max_batch_frames": 2000},
        "model": {"name": "rnnt", "params": {"frontend_dim": 8, "enc_hidden": 8, "enc_layers": 1, "pred_embed": 4,
                                             "pred_hidden": 8, "joint_dim": 8}},
        "search": {"space": SPACE}})
    return Study(cfg, progress=False)


class RecordingTrain:
    def __init__(self):
        self.calls = []

    def batches(self, max_batch_frames, shuffle=False, seed=0, augment=False):
        self.calls.append((max_batch_frames, shuffle, seed, augment))
        yield "batch"


def test_the_stages_read_unaugmented_shuffled_batches(study):
    train = RecordingTrain()
    study.__dict__["data"] = SimpleNamespace(train=train)
    model = study.new_model()
    assert list(study.unaugmented_batches(model, 1000)(5)) == ["batch"]
    assert list(study.unaugmented_batches(model)(6)) == ["batch"]
    for max_batch_frames, shuffle, seed, augment in train.calls:
        assert shuffle and not augment
    assert [(c[0], c[2]) for c in train.calls] == [(1000, 5), (2000, 6)]


def test_the_model_sites_space_and_latency_model_are_built_once(study, monkeypatch):
    built = []
    new_model = Study.new_model
    monkeypatch.setattr(Study, "new_model", lambda self: built.append(1) or new_model(self))
    assert study.sites() is study.sites()
    assert study.search_space() is study.search_space()
    assert study.latency_model() is study.latency_model()
    assert len(built) == 1


def test_an_unknown_stage_lists_the_stages(study):
    with pytest.raises(ConfigError, match="valid choices: baseline, sensitivity, supernet, trials, front"):
        study.run("knee")
