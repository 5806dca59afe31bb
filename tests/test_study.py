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
