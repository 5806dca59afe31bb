import json

import numpy as np
import pytest
import soundfile as sf

from mpsearch.cli.main import main


def test_data_help_lists_the_three_commands(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["data", "--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    for command in ("synth", "librispeech", "check"):
        assert f"    {command} " in out
    assert "mpsearch data synth --out" in out  # the examples


def test_check_prints_line_numbers_and_fails_on_errors(tmp_path, capsys):
    sf.write(str(tmp_path / "ok.wav"), np.zeros(1600), 16000, subtype="PCM_16")
    manifest = tmp_path / "bad.jsonl"
    records = [
        {"audio_filepath": "ok.wav", "duration": 0.1, "text": "call mom"},
        {"audio_filepath": "gone.wav", "duration": 0.1, "text": "call dad"},
        {"audio_filepath": "ok.wav", "duration": 0.1, "text": ""},
    ]
    manifest.write_text("".join(json.dumps(r) + "\n" for r in records))
    assert main(["data", "check", str(manifest)]) == 1
    out = capsys.readouterr().out
    assert f"{manifest}:2: error: audio file" in out
    assert f"{manifest}:3: error: transcript is empty" in out
    assert "2 error(s), 0 warning(s)" in out


def test_check_passes_a_clean_manifest_and_rejects_a_missing_one(tmp_path, capsys):
    sf.write(str(tmp_path / "ok.wav"), np.zeros(1600), 16000, subtype="PCM_16")
    manifest = tmp_path / "good.jsonl"
    manifest.write_text(json.dumps({"audio_filepath": "ok.wav", "duration": 0.1, "text": "stop"}) + "\n")
    assert main(["data", "check", str(manifest)]) == 0
    assert "no problems" in capsys.readouterr().out
    assert main(["data", "check", str(tmp_path / "absent.jsonl")]) == 2
    assert "error: Manifest" in capsys.readouterr().err


def test_synth_writes_a_tiny_corpus(tmp_path, capsys):
    out = tmp_path / "corpus"
    assert main(["data", "synth", "--out", str(out), "--utterances", "6", "--workers", "1"]) == 0
    printed = capsys.readouterr().out
    assert "train" in printed and "corpus ready" in printed
    assert len((out / "train.jsonl").read_text().splitlines()) == 4
    assert main(["data", "check", str(out / "test.jsonl")]) == 0
