import numpy as np
import pytest
import soundfile as sf
from scipy.signal import resample_poly

from mpsearch.data import espeak
from mpsearch.data.librispeech import librispeech_to_manifest
from mpsearch.data.manifest import check_manifest, read_manifest
from mpsearch.errors import DataError

CHAPTERS = {
    ("19", "198"): ["CALL MOM", "What's the weather in Paris", "TURN OFF THE LIGHTS"],
    ("26", "496"): ["SET A TIMER FOR TEN MINUTES", "PLAY SOME JAZZ"],
}


def _make_librispeech(root):
    for (speaker, chapter), texts in CHAPTERS.items():
        folder = root / speaker / chapter
        folder.mkdir(parents=True)
        lines = []
        for i, text in enumerate(texts):
            utt_id = f"{speaker}-{chapter}-{i:04d}"
            speech = espeak.synthesize(text.lower(), espeak.VoiceSettings("en-us+m3"))
            sf.write(str(folder / f"{utt_id}.flac"), resample_poly(speech, 320, 441), 16000, subtype="PCM_16")
            lines.append(f"{utt_id} {text}")
        (folder / f"{speaker}-{chapter}.trans.txt").write_text("\n".join(lines) + "\n")
    return root


def test_converts_a_librispeech_folder(tmp_path):
    root = _make_librispeech(tmp_path / "LibriSpeech" / "dev-tiny")
    out = tmp_path / "manifests" / "dev.jsonl"
    assert librispeech_to_manifest(tmp_path / "LibriSpeech", out) == 5
    utterances = read_manifest(out)
    assert [u.text for u in utterances[:2]] == ["call mom", "what's the weather in paris"]
    assert {u.speaker for u in utterances} == {"19", "26"}
    first = root / "19" / "198" / "19-198-0000.flac"
    assert utterances[0].audio_filepath == first.absolute()
    assert utterances[0].duration == pytest.approx(sf.info(str(first)).duration)
    assert check_manifest(out) == []


def test_missing_audio_names_the_file(tmp_path):
    root = _make_librispeech(tmp_path / "ls")
    (root / "26" / "496" / "26-496-0001.flac").unlink()
    with pytest.raises(DataError, match=r"26-496\.trans\.txt:2 names 26-496-0001\.flac"):
        librispeech_to_manifest(root, tmp_path / "out.jsonl")
    assert not (tmp_path / "out.jsonl").exists()


def test_folder_without_transcripts_explains_the_layout(tmp_path):
    (tmp_path / "audio.flac").write_bytes(b"")
    with pytest.raises(DataError, match=r"no \*\.trans\.txt.*<speaker>/<chapter>"):
        librispeech_to_manifest(tmp_path, tmp_path / "out.jsonl")
    with pytest.raises(DataError, match="does not exist"):
        librispeech_to_manifest(tmp_path / "nowhere", tmp_path / "out.jsonl")


def test_transcript_is_normalized(tmp_path):
    root = _make_librispeech(tmp_path / "ls")
    librispeech_to_manifest(root, tmp_path / "out.jsonl")
    assert all(u.text == u.text.lower().strip() for u in read_manifest(tmp_path / "out.jsonl"))
    assert np.isfinite([u.duration for u in read_manifest(tmp_path / "out.jsonl")]).all()
