"""A search that starts from a trained checkpoint, over a per-site space, scores every trial with
per-utterance errors, and writes a front with confidence intervals and paired differences."""

import csv
import json

import yaml

from mpsearch.cli.main import main
from mpsearch.config import StudyConfig


def test_search_from_a_checkpoint_writes_intervals_and_paired_differences(tmp_path, make_study, capsys):
    trained = make_study()
    assert main(["train", str(trained), "--no-progress"]) == 0
    checkpoint = StudyConfig.from_yaml(trained).study_dir / "baseline" / "model.pt"

    study = yaml.safe_load(trained.read_text())
    study["output_dir"] = str(tmp_path / "b" / "study")
    (tmp_path / "b").mkdir()
    space = tmp_path / "b" / "sites.yaml"
    space.write_text(yaml.safe_dump({"groups": {"all": {"sites": "*", "weight_bits": [4, 8], "tied": False}}}))
    study["search"].update(space=str(space), trials=3, warm_start={"ilp": 0})
    study.update(name="from_checkpoint", baseline={"checkpoint": str(checkpoint)})
    study.pop("train")
    (tmp_path / "b.yaml").write_text(yaml.safe_dump(study))
    assert main(["search", str(tmp_path / "b.yaml"), "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "study 'from_checkpoint'" in out and "evaluate " in out and "3 trials on optuna" in out
    assert "mpsearch report" in out
    assert main(["search", str(tmp_path / "b.yaml"), "--no-progress"]) == 0  # everything reused
    assert "3 trial(s) stored, 0 to run" in capsys.readouterr().out

    folder = StudyConfig.from_yaml(tmp_path / "b.yaml").study_dir
    metrics = json.loads((folder / "baseline" / "metrics.json").read_text())
    assert metrics["train_steps"] == 0 and not (folder / "baseline" / "checkpoint.pt").exists()
    rows = {r["origin"]: r for r in csv.DictReader((folder / "front.csv").open())}
    for column in ("wer_ci_low", "wer_ci_high", "delta_wer_vs_u8", "delta_ci_low", "delta_ci_high"):
        assert column in rows["uniform-8"]
    assert float(rows["uniform-8"]["delta_wer_vs_u8"]) == 0.0
    assert float(rows["uniform-4"]["wer_ci_low"]) <= float(rows["uniform-4"]["wer"]) <= float(rows["uniform-4"]["wer_ci_high"])
    assert "paired 95% intervals" in out
    # each site is its own parameter
    assert any(c.startswith("all[") for c in rows["uniform-4"])
