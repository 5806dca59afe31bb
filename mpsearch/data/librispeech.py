"""Turn a LibriSpeech-layout folder into a JSONL manifest.

Layout: `<speaker>/<chapter>/<speaker>-<chapter>.trans.txt`, each line `UTTERANCE-ID TEXT`, beside
`UTTERANCE-ID.flac`. Any folder holding such transcripts at any depth works (a LibriSpeech
download's `LibriSpeech/train-clean-100`, or its parent).
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

from tqdm import tqdm

from mpsearch.data.manifest import Utterance, write_manifest
from mpsearch.data.tokenizer import normalize_text
from mpsearch.errors import DataError

log = logging.getLogger(__name__)

_LAYOUT = (
    "<speaker>/<chapter>/<speaker>-<chapter>.trans.txt with lines 'UTTERANCE-ID TEXT' "
    "beside UTTERANCE-ID.flac"
)


def _read_transcript(trans: Path) -> list[Utterance]:
    import soundfile as sf

    speaker = trans.parent.parent.name
    utterances = []
    for lineno, raw in enumerate(trans.read_text(encoding="utf-8").splitlines(), start=1):
        if not raw.strip():
            continue
        utt_id, _, text = raw.strip().partition(" ")
        audio = trans.parent / f"{utt_id}.flac"
        if not audio.is_file():
            raise DataError(f"{trans}:{lineno} names {audio.name}, which does not exist in {trans.parent}; "
                            "restore the file or delete the line.")
        try:
            info = sf.info(str(audio))
        except (sf.LibsndfileError, RuntimeError) as exc:
            raise DataError(f"Cannot read {audio} ({exc}); re-extract the corpus archive.") from None
        utterances.append(Utterance(
            audio_filepath=audio.absolute(),
            duration=info.frames / info.samplerate,
            text=normalize_text(text),
            speaker=speaker,
            line=lineno,
        ))
    return utterances


def librispeech_to_manifest(root: str | Path, out_path: str | Path) -> int:
    """Write a manifest of every utterance under `root` to `out_path`; return how many."""
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"LibriSpeech folder {root} does not exist; pass the folder holding {_LAYOUT}.")
    transcripts = sorted(root.rglob("*.trans.txt"))
    if not transcripts:
        raise DataError(f"{root} holds no *.trans.txt transcripts; expected the LibriSpeech layout "
                        f"{_LAYOUT}.")
    utterances: list[Utterance] = []
    progress = not sys.stderr.isatty()
    for trans in tqdm(transcripts, desc="reading transcripts", unit="chapter", disable=progress):
        utterances.extend(_read_transcript(trans))
    write_manifest(out_path, utterances)
    log.info("Wrote %d utterances from %d chapters of %s to %s",
             len(utterances), len(transcripts), root, out_path)
    return len(utterances)
