import json

import numpy as np
import pytest
import soundfile as sf

from mpsearch.data.manifest import Utterance, check_manifest, load_audio, read_manifest, write_manifest
from mpsearch.errors import DataError


def _tone(seconds, rate, channels=1):
    t = np.arange(int(seconds * rate)) / rate
    mono = 0.3 * np.sin(2 * np.pi * 440 * t)
    return mono if channels == 1 else np.stack([mono, mono * 0.5], axis=1)


def _write_lines(path, records):
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in records))
    return path


@pytest.fixture
def audio_dir(tmp_path):
    folder = tmp_path / "audio"
    folder.mkdir()
    sf.write(str(folder / "ok.wav"), _tone(0.5, 16000), 16000, subtype="PCM_16")
    sf.write(str(folder / "narrow.wav"), _tone(0.5, 8000), 8000, subtype="PCM_16")
    return folder


def test_three_problems_with_line_numbers(tmp_path, audio_dir):
    manifest = _write_lines(tmp_path / "bad.jsonl", [
        {"audio_filepath": "audio/ok.wav", "duration": 0.5, "text": "call mom"},
        {"audio_filepath": "audio/missing.wav", "duration": 1.0, "text": "play jazz"},
        {"audio_filepath": "audio/ok.wav", "duration": 0.5, "text": "  "},
        {"audio_filepath": str(audio_dir / "narrow.wav"), "duration": 0.5, "text": "stop"},
    ])
    problems = check_manifest(manifest)
    assert [(p.line, p.severity) for p in problems] == [(2, "error"), (3, "error"), (4, "warning")]
    assert "missing.wav does not exist" in problems[0].message
    assert "empty" in problems[1].message
    assert "8000 Hz" in problems[2].message and "resampled" in problems[2].message


def test_check_collects_every_kind_of_problem(tmp_path, audio_dir):
    manifest = _write_lines(tmp_path / "worse.jsonl", [
        "{not json",
        {"audio_filepath": "audio/ok.wav", "duration": 0.5, "text": "set a timer for 5 minutes!"},
        {"audio_filepath": "audio/ok.wav", "text": "no duration"},
        {"audio_filepath": "audio/ok.wav", "duration": 3.0, "text": "wrong duration"},
    ])
    problems = check_manifest(manifest)
    assert [p.line for p in problems] == [1, 2, 3, 4]
    assert "not valid JSON" in problems[0].message
    assert "'!'" in problems[1].message and "'5'" in problems[1].message
    assert "'duration'" in problems[2].message
    assert problems[3].severity == "warning"


def test_bad_json_line_is_a_data_error_naming_file_and_line(tmp_path):
    manifest = _write_lines(tmp_path / "m.jsonl", [
        {"audio_filepath": "a.wav", "duration": 1.0, "text": "hi"},
        "",
        '{"audio_filepath": "b.wav", "duration": 1.0, "text": "hi"',
    ])
    with pytest.raises(DataError, match=r"m\.jsonl:3: not valid JSON"):
        read_manifest(manifest)
    with pytest.raises(DataError, match="does not exist"):
        read_manifest(tmp_path / "absent.jsonl")


def test_round_trip_keeps_paths_relative_to_the_manifest(tmp_path, audio_dir):
    outside = tmp_path / "elsewhere.wav"
    sf.write(str(outside), _tone(0.25, 16000), 16000)
    utterances = [
        Utterance(audio_dir / "ok.wav", 0.5, "call mom", "spk1"),
        Utterance(outside, 0.25, "stop"),
    ]
    manifest = tmp_path / "corpus" / "m.jsonl"
    (tmp_path / "corpus").mkdir()
    (tmp_path / "corpus" / "audio").symlink_to(audio_dir)
    write_manifest(manifest, [Utterance(manifest.parent / "audio" / "ok.wav", 0.5, "call mom", "spk1")])
    assert json.loads(manifest.read_text())["audio_filepath"] == "audio/ok.wav"  # a symlink stays relative

    manifest = tmp_path / "m.jsonl"
    write_manifest(manifest, utterances)
    records = [json.loads(line) for line in manifest.read_text().splitlines()]
    assert records[0] == {"audio_filepath": "audio/ok.wav", "duration": 0.5, "text": "call mom",
                          "speaker": "spk1"}
    assert "speaker" not in records[1]
    back = read_manifest(manifest)
    assert [u.audio_filepath for u in back] == [audio_dir / "ok.wav", outside]
    assert [(u.text, u.speaker, u.line) for u in back] == [("call mom", "spk1", 1), ("stop", None, 2)]


def test_load_audio_gives_16k_mono_float32(tmp_path, audio_dir):
    stereo = tmp_path / "stereo.flac"
    sf.write(str(stereo), _tone(0.5, 8000, channels=2), 8000)
    audio = load_audio(stereo)
    assert audio.dtype == np.float32 and audio.shape == (8000,)
    assert load_audio(audio_dir / "ok.wav").shape == (8000,)
    with pytest.raises(DataError, match="Cannot read audio"):
        load_audio(tmp_path / "absent.wav")
