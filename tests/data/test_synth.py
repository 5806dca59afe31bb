import json
import re

import numpy as np
import pytest
import soundfile as sf

from mpsearch.artifacts import read_json, write_json
from mpsearch.data import grammar
from mpsearch.data.manifest import check_manifest, read_manifest
from mpsearch.data.synth import (
    TEST_VOICES,
    TRAIN_DEV_VOICES,
    WIDE_TRAIN_DEV_VOICES,
    split_sizes,
    synthesize_corpus,
)
from mpsearch.data.tokenizer import CharTokenizer, normalize_text
from mpsearch.errors import DataError


def _files(folder):
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


def test_same_seed_gives_identical_files_on_any_worker_count(synth_corpus, tmp_path):
    again = tmp_path / "again"
    synthesize_corpus(again, utterances=synth_corpus.utterances, seed=synth_corpus.seed, workers=1)
    reference, repeat = _files(synth_corpus.folder), _files(again)
    assert sorted(reference) == sorted(repeat)
    assert sum(name.endswith(".wav") for name in reference) == synth_corpus.utterances
    for name in reference:
        assert reference[name] == repeat[name], name


def test_interrupted_run_resumes_to_the_same_corpus(synth_corpus, tmp_path):
    folder = tmp_path / "resumed"
    synthesize_corpus(folder, utterances=synth_corpus.utterances, seed=synth_corpus.seed, workers=2)
    # Roll back to a run killed mid-way: audio partly written, no manifests, the progress marker left.
    record = read_json(folder / "corpus.json")
    for name in ("corpus.json", "train.jsonl", "dev.jsonl", "test.jsonl"):
        (folder / name).unlink()
    write_json(folder / ".synth-in-progress.json", record)
    max((folder / "audio" / "train").glob("*.wav")).unlink()
    finished = max((folder / "audio" / "test").glob("*.wav"))
    mtime = finished.stat().st_mtime_ns
    synthesize_corpus(folder, utterances=synth_corpus.utterances, seed=synth_corpus.seed, workers=2)
    assert _files(folder) == _files(synth_corpus.folder)
    assert finished.stat().st_mtime_ns == mtime  # finished audio is not synthesized again


def test_finished_corpus_is_reused_and_guarded(synth_corpus):
    manifest = synth_corpus.manifests["train"]
    before = manifest.stat().st_mtime_ns
    synthesize_corpus(synth_corpus.folder, utterances=synth_corpus.utterances, seed=synth_corpus.seed)
    assert manifest.stat().st_mtime_ns == before
    with pytest.raises(DataError, match="already holds a corpus.*another --out"):
        synthesize_corpus(synth_corpus.folder, utterances=synth_corpus.utterances, seed=synth_corpus.seed + 1)


def test_splits_and_unseen_test_voices(synth_corpus):
    sizes = {split: len(read_manifest(path)) for split, path in synth_corpus.manifests.items()}
    assert sizes == split_sizes(synth_corpus.utterances) == {"train": 32, "dev": 4, "test": 4}
    speakers = {split: {u.speaker for u in read_manifest(p)} for split, p in synth_corpus.manifests.items()}
    assert speakers["train"] | speakers["dev"] <= set(TRAIN_DEV_VOICES)
    assert speakers["test"] == set(TEST_VOICES)
    assert len(TRAIN_DEV_VOICES) >= 12 and len(TEST_VOICES) >= 4
    assert not set(TRAIN_DEV_VOICES) & set(TEST_VOICES)
    # Unseen timbre: no test variant is used in training.
    variant = {voice.partition("+")[2] for voice in TRAIN_DEV_VOICES}
    assert not variant & {voice.partition("+")[2] for voice in TEST_VOICES}


def test_the_wide_voice_set_keeps_the_test_voices_unseen(synth_corpus, tmp_path):
    folder = tmp_path / "wide"
    manifests = synthesize_corpus(folder, utterances=60, seed=synth_corpus.seed, voices="wide")
    speakers = {split: {u.speaker for u in read_manifest(p)} for split, p in manifests.items()}
    assert speakers["train"] == set(WIDE_TRAIN_DEV_VOICES) and speakers["test"] == set(TEST_VOICES)
    variant = {voice.partition("+")[2] for voice in WIDE_TRAIN_DEV_VOICES}
    assert {voice.partition("+")[2] for voice in TRAIN_DEV_VOICES} < variant
    assert len(variant) == 25 and not variant & {voice.partition("+")[2] for voice in TEST_VOICES}
    # the set is part of the corpus's record: the same folder will not silently switch sets
    assert read_json(folder / "corpus.json")["voices"] == "wide"
    with pytest.raises(DataError, match="already holds a corpus"):
        synthesize_corpus(folder, utterances=60, seed=synth_corpus.seed)
    with pytest.raises(DataError, match="Unknown voice set 'huge'; use one of standard, wide"):
        synthesize_corpus(tmp_path / "x", utterances=60, voices="huge")


def test_audio_is_16k_int16_and_matches_manifest(synth_corpus):
    for path in synth_corpus.manifests.values():
        assert check_manifest(path) == []
        for line in path.read_text().splitlines():
            assert not json.loads(line)["audio_filepath"].startswith("/")  # relative to the manifest
        for utt in read_manifest(path):
            info = sf.info(str(utt.audio_filepath))
            assert (info.samplerate, info.channels, info.subtype, info.format) == (16000, 1, "PCM_16", "WAV")
            assert utt.duration == pytest.approx(info.frames / 16000, abs=1e-5)
            audio, _ = sf.read(str(utt.audio_filepath), dtype="float32")
            noise_only = audio[: int(0.04 * 16000)]  # leading silence is at least 50 ms
            rms = np.sqrt(np.mean(audio**2))
            assert rms > 0.02
            assert rms > 3 * np.sqrt(np.mean(noise_only**2))


def test_transcripts_fit_the_tokenizer(synth_corpus):
    tokenizer = CharTokenizer()
    for path in synth_corpus.manifests.values():
        for utt in read_manifest(path):
            assert utt.text and utt.text == normalize_text(utt.text)
            assert tokenizer.unknown_chars(utt.text) == set()


def test_grammar_vocabulary_and_seeding():
    words = grammar.vocabulary()
    assert len(words) >= 150
    assert all(re.fullmatch(r"[a-z']+", word) for word in words)
    sample = grammar.sentences(300, seed=3)
    assert sample == grammar.sentences(300, seed=3) != grammar.sentences(300, seed=4)
    assert {w for s in sample for w in s.split()} <= words
    assert grammar.clock_time_words(7, 35) + " pm" == "seven thirty five pm"
    assert grammar.number_words(23) == "twenty three"


def test_too_few_utterances_is_explained(tmp_path):
    with pytest.raises(DataError, match="at least 3 utterances"):
        synthesize_corpus(tmp_path, utterances=2)


def test_studies_keep_each_voice_set_in_a_folder_of_its_own(tmp_path):
    from mpsearch.config import DataConfig
    from mpsearch.data.corpus import resolve_manifests
    from mpsearch.data.synth import CORPUS_VERSION

    for voices, name in (("standard", f"builtin-v{CORPUS_VERSION}-seed0-n12"),
                         ("wide", f"builtin-v{CORPUS_VERSION}-wide-seed0-n12")):
        manifests = resolve_manifests(DataConfig(utterances=12, voices=voices), tmp_path / "study", progress=False)
        assert manifests["train"].parent == tmp_path / "corpus" / name
