"""The study's first stages end to end on a tiny real corpus: manifests, features, baseline."""

import json
from pathlib import Path

import pytest
import yaml

from mpsearch.cli.main import main
from mpsearch.config import StudyConfig
from mpsearch.study import Study


@pytest.fixture
def tiny_study(tmp_path, synth_corpus):
    study = {
        "name": "tiny",
        "output_dir": str(tmp_path / "run"),
        "data": {"corpus": "manifest", **{s: str(p) for s, p in synth_corpus.manifests.items()},
                 "max_batch_frames": 2000, "features": {"n_mels": 40}},
        "model": {"name": "rnnt", "params": {"frontend_dim": 16, "enc_hidden": 16, "enc_layers": 1,
                                              "pred_embed": 8, "pred_hidden": 16, "joint_dim": 16,
                                              "ctc_weight": 0.3}},
        "train": {"max_steps": 6, "eval_every": 3, "checkpoint_every": 2, "threads": 1},
    }
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(study))
    return path


def test_train_writes_baseline_metrics_and_reuses_them(tiny_study, capsys):
    assert main(["train", str(tiny_study), "--no-progress"]) == 0
    cfg = StudyConfig.from_yaml(tiny_study)
    metrics = json.loads((cfg.study_dir / "baseline" / "metrics.json").read_text())
    assert metrics["train_steps"] == 6
    for split in ("dev", "test"):
        assert 0.0 <= metrics[split]["cer"] and metrics[split]["wer"] >= 0.0
    assert [h["step"] for h in metrics["history"]] == [3, 6]
    assert (cfg.study_dir / "tokenizer.json").is_file()
    assert list((cfg.study_dir / "features").glob("train-*.pt"))

    study = Study(cfg, progress=False)
    model, again = study.baseline()  # reused, not retrained
    assert again == metrics
    assert sum(p.numel() for p in model.parameters()) == metrics["parameters"]


def test_changed_model_config_retrains_and_keeps_the_old_baseline(tiny_study):
    assert main(["train", str(tiny_study), "--no-progress"]) == 0
    text = tiny_study.read_text().replace("max_steps: 6", "max_steps: 4")
    tiny_study.write_text(text)
    assert main(["train", str(tiny_study), "--no-progress"]) == 0
    cfg = StudyConfig.from_yaml(tiny_study)
    assert json.loads((cfg.study_dir / "baseline" / "metrics.json").read_text())["train_steps"] == 4
    assert len(list(cfg.study_dir.glob("baseline-*"))) == 1


def test_an_edited_manifest_trains_a_new_baseline(tiny_study, tmp_path):
    # the same settings over other data (a new corpus version, a user's edited manifest) is another baseline
    data = yaml.safe_load(tiny_study.read_text())
    dev = tmp_path / "dev.jsonl"
    dev.write_text(Path(data["data"]["dev"]).read_text())
    data["data"]["dev"] = str(dev)
    tiny_study.write_text(yaml.safe_dump(data))
    before = Study(StudyConfig.from_yaml(tiny_study), progress=False).baseline_key
    dev.write_text("\n".join(dev.read_text().splitlines()[:-1]) + "\n")  # same path, one utterance fewer
    assert Study(StudyConfig.from_yaml(tiny_study), progress=False).baseline_key != before


def test_missing_manifest_is_a_one_line_error(tmp_path, capsys):
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump({
        "name": "bad", "output_dir": str(tmp_path / "run"),
        "data": {"corpus": "manifest", "train": str(tmp_path / "nope.jsonl"), "dev": "x", "test": "y"},
        "model": {"name": "rnnt"}}))
    assert main(["train", str(path), "--no-progress"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "nope.jsonl" in err and "\n" not in err


def test_latency_command_prints_every_site_and_rejects_unknown_sites(tiny_study, tmp_path, capsys):
    from mpsearch.quant import Policy, QuantConfig

    assert main(["latency", str(tiny_study)]) == 0
    out = capsys.readouterr().out
    assert "joiner.out" in out and "encoder.lstm.weight_hh_l0" in out and "latency" in out

    four_bit = tmp_path / "four.json"
    Policy.uniform(QuantConfig(weight_bits=4)).save(four_bit)
    assert main(["latency", str(tiny_study), "--policy", str(four_bit)]) == 0
    assert "average weight bits 4.00" in capsys.readouterr().out

    bad = tmp_path / "bad.json"
    Policy({"encoder.nonexistent": QuantConfig()}).save(bad)
    assert main(["latency", str(tiny_study), "--policy", str(bad)]) == 2
    err = capsys.readouterr().err
    assert "Unknown site 'encoder.nonexistent'" in err and "valid sites:" in err


# --- starting from a trained checkpoint -----------------------------------------------------------------------
def _second_study(tiny_study: Path, tmp_path: Path, **changes) -> Path:
    """Another study over the same data that starts from the first study's trained model."""
    data = yaml.safe_load(tiny_study.read_text())
    checkpoint = Path(data["output_dir"]) / "baseline" / "model.pt"
    data.update(name="reuse", output_dir=str(tmp_path / "reuse"), baseline={"checkpoint": str(checkpoint)})
    for key, value in changes.items():
        section, _, field = key.partition("__")
        data[section] = {**data.get(section, {}), **value} if not field else data[section]
    path = tmp_path / "reuse.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def test_a_trained_checkpoint_loads_into_another_study_and_reproduces_its_dev_wer(tiny_study, tmp_path):
    assert main(["train", str(tiny_study), "--no-progress"]) == 0
    trained = json.loads((StudyConfig.from_yaml(tiny_study).study_dir / "baseline" / "metrics.json").read_text())
    reuse = _second_study(tiny_study, tmp_path)
    _, metrics = Study(StudyConfig.from_yaml(reuse), progress=False).baseline()
    assert metrics["train_steps"] == 0 and "history" not in metrics
    assert metrics["dev"]["wer"] == trained["dev"]["wer"] and metrics["test"]["cer"] == trained["test"]["cer"]
    assert metrics["dev"]["wer_ci_low"] <= metrics["dev"]["wer"] <= metrics["dev"]["wer_ci_high"]
    assert metrics["source"]["study"] == "tiny" and metrics["source"]["train_steps"] == 6
    # a second process reuses the evaluation instead of repeating it
    assert Study(StudyConfig.from_yaml(reuse), progress=False).baseline()[1] == metrics
    assert not (StudyConfig.from_yaml(reuse).study_dir / "baseline" / "checkpoint.pt").exists()


def test_a_checkpoint_of_another_model_is_a_one_line_error_naming_both(tiny_study, tmp_path, capsys):
    assert main(["train", str(tiny_study), "--no-progress"]) == 0
    reuse = _second_study(tiny_study, tmp_path)
    data = yaml.safe_load(reuse.read_text())
    data["model"]["params"]["enc_hidden"] = 24
    reuse.write_text(yaml.safe_dump(data))
    assert main(["train", str(reuse), "--no-progress"]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "enc_hidden: checkpoint 16, study 24" in err


def test_a_checkpoint_with_another_tokenizer_is_a_one_line_error_naming_both(tiny_study, tmp_path, capsys):
    from mpsearch.data.tokenizer import CharTokenizer

    assert main(["train", str(tiny_study), "--no-progress"]) == 0
    reuse = _second_study(tiny_study, tmp_path)
    folder = StudyConfig.from_yaml(reuse).study_dir
    folder.mkdir(parents=True)
    CharTokenizer(" abcdefghijklmnopqrstuvwxyz").save(folder / "tokenizer.json")  # no apostrophe
    assert main(["train", str(reuse), "--no-progress"]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "tokenizer alphabet" in err and "' abcdefghijklmnopqrstuvwxyz'" in err


def test_a_missing_or_foreign_checkpoint_is_a_one_line_error(tiny_study, tmp_path, capsys):
    assert main(["train", str(tiny_study), "--no-progress"]) == 0
    reuse = _second_study(tiny_study, tmp_path)
    data = yaml.safe_load(reuse.read_text())
    for spec, expected in ((str(tmp_path / "none.pt"), "does not exist"), ("pretrained:nope", "names no shipped"),
                           (str(tiny_study), "not a readable checkpoint")):
        data["baseline"]["checkpoint"] = spec
        reuse.write_text(yaml.safe_dump(data))
        assert main(["train", str(reuse), "--no-progress"]) == 2
        err = capsys.readouterr().err.strip()
        assert "\n" not in err and expected in err, err


# --- stale and torn artefacts -------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["metrics.json", "model.pt"])
def test_a_torn_baseline_file_is_set_aside_and_redone(tiny_study, name, caplog):
    assert main(["train", str(tiny_study), "--no-progress"]) == 0
    folder = StudyConfig.from_yaml(tiny_study).study_dir
    path = folder / "baseline" / name
    path.write_bytes(path.read_bytes()[: len(path.read_bytes()) // 2])
    _, metrics = Study(StudyConfig.from_yaml(tiny_study), progress=False).baseline()
    assert metrics["train_steps"] == 6
    assert str(path) in caplog.text or "unreadable" in caplog.text
    assert list(folder.glob("baseline-torn*"))


def test_a_training_checkpoint_of_another_config_is_not_resumed(tiny_study, caplog):
    from mpsearch.training.trainer import train

    cfg = StudyConfig.from_yaml(tiny_study)
    study = Study(cfg, progress=False)
    model = study.new_model()
    checkpoint = study.baseline_dir / "checkpoint.pt"
    train(study.task(model), cfg.train.model_copy(update={"max_steps": 3}), checkpoint=checkpoint,
          checkpoint_key="another-config", progress=False)
    _, metrics = study.baseline()
    assert metrics["train_steps"] == 6 and [h["step"] for h in metrics["history"]] == [3, 6]
    assert "another training config" in caplog.text
    assert (study.baseline_dir / "checkpoint.pt.stale").is_file()


def test_a_torn_training_checkpoint_is_set_aside(tiny_study, caplog):
    cfg = StudyConfig.from_yaml(tiny_study)
    study = Study(cfg, progress=False)
    study.baseline_dir.mkdir(parents=True)
    (study.baseline_dir / "checkpoint.pt").write_bytes(b"PK\x03\x04 torn")
    _, metrics = study.baseline()
    assert metrics["train_steps"] == 6 and "unreadable" in caplog.text
