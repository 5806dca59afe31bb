from pathlib import Path

import pytest

from mpsearch.config import StudyConfig, config_hash
from mpsearch.errors import ConfigError

GOOD = """
name: tiny
model:
  name: rnnt
  params: {enc_hidden: 64}
train:
  max_steps: 10
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "study.yaml"
    path.write_text(text)
    return path


def test_good_study_loads_with_defaults(tmp_path):
    cfg = StudyConfig.from_yaml(write(tmp_path, GOOD))
    assert cfg.name == "tiny"
    assert cfg.train.max_steps == 10
    assert cfg.data.features.n_mels == 80
    assert cfg.study_dir == Path("runs/tiny")


@pytest.mark.parametrize("text, message", [
    (GOOD + "colour: blue\n", r"unknown key 'colour'"),
    (GOOD.replace("max_steps: 10", "max_steps: ten"), r"'train.max_steps' .*got 'ten'"),
    (GOOD.replace("max_steps: 10", "max_stepz: 10"), r"unknown key 'train.max_stepz'"),
    (GOOD.replace("max_steps: 10", "max_steps: -1"), r"'train.max_steps' .*greater than or equal to 1.*got -1"),
    ("name: x\n", r"required key 'model' is missing"),
    ("name: x\nmodel: [1, 2\n", r"YAML syntax error at line \d+"),
    ("- a\n- b\n", r"must be a YAML mapping"),
    (GOOD.replace("name: tiny", "name: a/b"), r"'name' must be a plain folder name"),
])
def test_malformed_study_gets_one_line_error(tmp_path, text, message):
    with pytest.raises(ConfigError, match=message) as info:
        StudyConfig.from_yaml(write(tmp_path, text))
    assert "\n" not in str(info.value)
    assert "study.yaml" in str(info.value)


def test_missing_file_names_the_path(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        StudyConfig.from_yaml(tmp_path / "nope.yaml")


def test_config_hash_tracks_content(tmp_path):
    a = StudyConfig.from_yaml(write(tmp_path, GOOD))
    b = StudyConfig.from_yaml(write(tmp_path, GOOD.replace("64", "65")))
    assert config_hash(a.model) != config_hash(b.model)
    assert config_hash(a.train) == config_hash(b.train)


@pytest.mark.parametrize("path", sorted((Path(__file__).parent.parent / "studies").glob("*.yaml")), ids=lambda p: p.name)
def test_every_shipped_study_loads(path):
    assert StudyConfig.from_yaml(path).name == path.stem


def test_a_study_extends_another_and_overrides_it_key_by_key(tmp_path):
    (tmp_path / "base.yaml").write_text(
        "name: base\nmodel: {name: rnnt, params: {enc_hidden: 64, enc_layers: 2}}\n"
        "search: {trials: 10, objectives: [wer, latency_ms], finetune: {max_steps: 5}}\n")
    (tmp_path / "child.yaml").write_text(
        "extends: base.yaml\nname: child\nmodel: {params: {enc_layers: 3}}\n"
        "search: {objectives: [wer, size_bytes], eval_utterances: 50}\n")
    cfg = StudyConfig.from_yaml(tmp_path / "child.yaml")
    assert cfg.name == "child" and cfg.model.params == {"enc_hidden": 64, "enc_layers": 3}
    assert cfg.search.trials == 10 and cfg.search.finetune.max_steps == 5 and cfg.search.eval_utterances == 50
    assert cfg.search.objectives == ("wer", "size_bytes")  # lists replace, never merge


@pytest.mark.parametrize("child, message", [
    ("extends: base.yaml\nmodel: {name: rnnt}\n", "needs its own 'name'"),
    ("extends: nowhere.yaml\nname: c\n", "names no file"),
    ("extends: child.yaml\nname: c\n", "cycle"),
    ("extends: [base.yaml]\nname: c\n", "must name one study YAML"),
])
def test_bad_extends_is_a_one_line_error(tmp_path, child, message):
    (tmp_path / "base.yaml").write_text("name: base\nmodel: {name: rnnt}\n")
    (tmp_path / "child.yaml").write_text(child)
    with pytest.raises(ConfigError, match=message) as info:
        StudyConfig.from_yaml(tmp_path / "child.yaml")
    assert "\n" not in str(info.value)
