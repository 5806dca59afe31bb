"""`mpsearch train --policy` writes the ONNX graphs; `mpsearch onnx-check` runs them on real speech and
finds the executor's codes and transcripts."""

from __future__ import annotations

import json

from mpsearch.cli.main import main
from mpsearch.quant import Policy, QuantConfig
from mpsearch.quant.nna import export_int


def test_train_writes_onnx_and_onnx_check_agrees_with_the_executor(tiny_study_yaml, tmp_path, capsys):
    policy = tmp_path / "mixed.json"
    Policy({"_default": QuantConfig(weight_bits=8), r"re:encoder\..*": QuantConfig(weight_bits=4)}).save(policy)
    assert main(["train", str(tiny_study_yaml), "--policy", str(policy), "--no-progress"]) == 0
    trained = tmp_path / "study" / "trained" / "mixed"
    for part in ("encoder", "predictor", "joiner"):
        assert (trained / f"model.{part}.onnx").is_file()
    capsys.readouterr()

    assert main(["onnx-check", str(tiny_study_yaml), "--trained", str(trained), "--utterances", "3",
                 "--no-progress"]) == 0
    out = capsys.readouterr().out
    report = json.loads((trained / "onnx_check.json").read_text())
    assert report["utterances"] == 3 and report["split"] == "dev"
    assert {"frontend.conv1", "encoder.lstm.l0", "predictor.embed", "joiner.out"} <= set(report["layers"])
    for name, agreement in report["layers"].items():
        assert agreement["exact"] == 1.0 and agreement["max_code_diff"] == 0 and agreement["codes"] > 0, name
    assert report["identical_transcripts"] == 3 and report["onnx"] == report["executor"]
    assert "identical transcripts: 3 of 3" in out and "encoder.lstm.l0" in out


def test_onnx_check_without_a_trained_model_is_a_one_line_error(tiny_study_yaml, tmp_path, capsys):
    assert main(["onnx-check", str(tiny_study_yaml), "--trained", str(tmp_path / "nothing")]) == 2
    err = capsys.readouterr().err
    assert "model.npz does not exist; train a policy" in err and err.count("\n") == 1


def test_onnx_check_builds_and_checks_a_conformer_ctc_graph(tiny_study_yaml, emulated_conformer, tmp_path, capsys):
    trained = tmp_path / "study" / "trained" / "ctc"
    trained.mkdir(parents=True)
    export_int(emulated_conformer(chunk_size=2), trained / "model.npz")
    assert main(["onnx-check", str(tiny_study_yaml), "--trained", str(trained), "--utterances", "3",
                 "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert (trained / "model.ctc.onnx").is_file() and "building the ONNX graphs" in out
    report = json.loads((trained / "onnx_check.json").read_text())
    assert report["utterances"] == 3
    assert {"frontend.conv1", "encoder.blocks.0.attn.rotary_q", "encoder.blocks.0.attn.softmax",
            "encoder.blocks.1.conv.glu", "encoder.blocks.1.conv.norm", "ctc_head"} <= set(report["layers"])
    for name, agreement in report["layers"].items():
        assert agreement["exact"] == 1.0 and agreement["max_code_diff"] == 0 and agreement["codes"] > 0, name
    assert report["identical_transcripts"] == 3 and report["onnx"] == report["executor"]
    assert "identical transcripts: 3 of 3" in out and "encoder.blocks.1.attn.softmax" in out
