"""JSONL manifests (NeMo style): one utterance per line, and the checks that find broken ones.

Path convention: `audio_filepath` is either absolute or relative to the folder holding the
manifest, so a corpus folder can be moved or copied as a whole. `write_manifest` writes relative
paths for audio under the manifest's folder and absolute paths otherwise.
"""

from __future__ import annotations

import json
import logging
import math
import os
from collections.abc import Iterable
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Literal

import numpy as np

from mpsearch.artifacts import atomic_path
from mpsearch.data.tokenizer import CharTokenizer
from mpsearch.errors import DataError

log = logging.getLogger(__name__)

SAMPLE_RATE = 16000
# A manifest duration off by more than this from the file is worth a warning (batching uses it).
_DURATION_TOLERANCE_S = 0.05


@dataclass(frozen=True)
class Utterance:
    """One manifest line: `audio_filepath` is absolute, `line` is the 1-based line it came from
    (0 for utterances not read from a file)."""

    audio_filepath: Path
    duration: float
    text: str
    speaker: str | None = None
    line: int = 0


@dataclass(frozen=True)
class Problem:
    """A finding of `check_manifest`; `line` is 1-based, 0 for the manifest as a whole."""

    line: int
    message: str
    severity: Literal["error", "warning"] = "error"

    @property
    def is_error(self) -> bool:
        return self.severity == "error"


def _parse_line(path: Path, lineno: int, raw: str) -> Utterance:
    where = f"{path}:{lineno}:"
    try:
        record = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise DataError(f"{where} not valid JSON ({exc.msg}); write one JSON object per line.") from None
    if not isinstance(record, dict):
        kind = type(record).__name__
        raise DataError(f"{where} a JSON {kind}, not an object; write one JSON object per line.")
    for key in ("audio_filepath", "text"):
        if not isinstance(record.get(key), str):
            raise DataError(f"{where} no string {key!r}; a line needs 'audio_filepath', 'duration', 'text'.")
    duration = record.get("duration")
    if isinstance(duration, bool) or not isinstance(duration, (int, float)) or not math.isfinite(duration):
        raise DataError(f"{where} 'duration' is {duration!r}; give the audio length in seconds as a number.")
    speaker = record.get("speaker")
    audio = Path(record["audio_filepath"])
    if not audio.is_absolute():
        audio = _absolute(path.parent / audio)
    return Utterance(
        audio_filepath=audio,
        duration=float(duration),
        text=record["text"],
        speaker=None if speaker is None else str(speaker),
        line=lineno,
    )


def _lines(path: Path) -> Iterable[tuple[int, str | DataError]]:
    """(line number, text) of each non-blank line; a line that is not UTF-8 comes as the DataError
    naming its line and byte offset, so a check can report it and go on."""
    try:
        handle = path.open("rb")
    except FileNotFoundError:
        raise DataError(f"Manifest {path} does not exist; check the path or build one with "
                        "`mpsearch data synth` or `mpsearch data librispeech`.") from None
    except OSError as exc:
        raise DataError(f"Cannot open manifest {path}: {exc.strerror}.") from None
    offset = 0
    with handle:
        for lineno, raw in enumerate(handle, start=1):
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                yield lineno, DataError(f"{path}:{lineno}: byte 0x{raw[exc.start]:02x} at byte offset "
                                        f"{offset + exc.start} is not UTF-8; save the manifest as UTF-8.")
            else:
                if text.strip():
                    yield lineno, text
            offset += len(raw)


def read_manifest(path: str | Path) -> list[Utterance]:
    """All utterances of a JSONL manifest, relative audio paths resolved against its folder."""
    path = Path(path)
    utterances = []
    for lineno, raw in _lines(path):
        if isinstance(raw, DataError):
            raise raw
        utterances.append(_parse_line(path, lineno, raw))
    return utterances


def _absolute(path: Path) -> Path:
    # Lexical, not resolve(): a symlinked audio folder inside a corpus keeps relative paths.
    return Path(os.path.abspath(path))


def _relative_path(audio: Path, folder: Path) -> str:
    audio = _absolute(audio)
    try:
        return audio.relative_to(folder).as_posix()
    except ValueError:
        return str(audio)


def write_manifest(path: str | Path, utterances: Iterable[Utterance]) -> None:
    """Write `utterances` as JSONL atomically (see the module docstring for the path convention)."""
    path = Path(path)
    folder = _absolute(path.parent)
    lines = []
    for utt in utterances:
        record: dict = {
            "audio_filepath": _relative_path(utt.audio_filepath, folder),
            "duration": round(float(utt.duration), 6),
            "text": utt.text,
        }
        if utt.speaker is not None:
            record["speaker"] = utt.speaker
        lines.append(json.dumps(record, ensure_ascii=False))
    with atomic_path(path) as tmp:
        tmp.write_text("".join(line + "\n" for line in lines), encoding="utf-8")


_warned_rates: set[int] = set()


def load_audio(path: str | Path, sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """Read an audio file as float32 mono at `sample_rate` Hz (channels averaged, other rates resampled)."""
    import soundfile as sf

    try:
        audio, rate = sf.read(str(path), dtype="float32", always_2d=True)
    except (sf.LibsndfileError, RuntimeError, OSError) as exc:
        raise DataError(f"Cannot read audio {path}: {exc}; check it exists and is WAV/FLAC/OGG.") from None
    audio = audio.mean(axis=1) if audio.shape[1] > 1 else audio[:, 0]
    if rate != sample_rate:
        if rate not in _warned_rates:
            _warned_rates.add(rate)
            log.warning("Resampling %s from %d Hz to %d Hz (and any other %d Hz file, silently); convert "
                        "the corpus to %d Hz to skip this work.", path, rate, sample_rate, rate, sample_rate)
        from scipy.signal import resample_poly

        ratio = Fraction(sample_rate, rate)
        audio = resample_poly(audio, ratio.numerator, ratio.denominator).astype(np.float32)
    return np.ascontiguousarray(audio, dtype=np.float32)


def _check_audio(utt: Utterance) -> list[Problem]:
    import soundfile as sf

    audio = utt.audio_filepath
    if not audio.is_file():
        return [Problem(utt.line, f"audio file {audio} does not exist; fix the path (a relative one is "
                                  "read from the manifest's folder)")]
    try:
        info = sf.info(str(audio))
    except (sf.LibsndfileError, RuntimeError, OSError) as exc:
        return [Problem(utt.line, f"audio file {audio} is unreadable ({exc})")]
    problems = []
    if info.frames == 0:
        problems.append(Problem(utt.line, f"audio file {audio} has no samples"))
    if info.samplerate != SAMPLE_RATE:
        problems.append(Problem(
            utt.line, f"audio is {info.samplerate} Hz, not {SAMPLE_RATE} Hz; it will be resampled", "warning"
        ))
    if info.channels != 1:
        problems.append(
            Problem(utt.line, f"audio has {info.channels} channels; they will be averaged", "warning")
        )
    actual = info.frames / info.samplerate
    if abs(actual - utt.duration) > _DURATION_TOLERANCE_S:
        problems.append(Problem(
            utt.line, f"duration says {utt.duration:.3f} s but the file lasts {actual:.3f} s", "warning"
        ))
    return problems


def check_manifest(path: str | Path, tokenizer: CharTokenizer | None = None) -> list[Problem]:
    """Every problem in a manifest, by line: bad lines, missing or unreadable audio, empty
    transcripts and characters the tokenizer cannot encode are errors; a sample rate other than
    16 kHz, several channels or a wrong duration are warnings."""
    path = Path(path)
    tokenizer = tokenizer or CharTokenizer()
    problems: list[Problem] = []
    count = 0
    for lineno, raw in _lines(path):
        count += 1
        try:
            if isinstance(raw, DataError):
                raise raw
            utt = _parse_line(path, lineno, raw)
        except DataError as exc:
            # The message starts with "<path>:<line>: "; the caller prints its own location.
            problems.append(Problem(lineno, str(exc).removeprefix(f"{path}:{lineno}: ")))
            continue
        if not utt.text.strip():
            problems.append(Problem(lineno, "transcript is empty"))
        else:
            unknown = tokenizer.unknown_chars(utt.text)
            if unknown:
                shown = ", ".join(repr(c) for c in sorted(unknown))
                problems.append(Problem(
                    lineno, f"transcript has characters outside the tokenizer alphabet: {shown}; "
                    "spell numbers out and drop punctuation",
                ))
        problems.extend(_check_audio(utt))
    if count == 0:
        problems.append(Problem(0, "manifest has no utterances"))
    log.debug("Checked %d lines of %s: %d problems", count, path, len(problems))
    return problems

