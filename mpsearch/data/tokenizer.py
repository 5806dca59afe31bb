"""Character tokenizer with blank and unknown symbols, saved beside the study."""

from __future__ import annotations

import re
import unicodedata
from pathlib import Path

from mpsearch.artifacts import read_json, write_json
from mpsearch.errors import DataError

DEFAULT_ALPHABET = " 'abcdefghijklmnopqrstuvwxyz"
BLANK = "<blank>"
UNK = "<unk>"

_SPACES = re.compile(r"\s+")


def normalize_text(text: str) -> str:
    """Lower-case, strip accents, collapse whitespace: the form transcripts are scored in."""
    text = unicodedata.normalize("NFKD", text)
    text = "".join(c for c in text if not unicodedata.combining(c))
    return _SPACES.sub(" ", text.lower()).strip()


class CharTokenizer:
    """Index 0 is blank (the transducer/CTC blank), 1 is unknown, then the alphabet."""

    def __init__(self, alphabet: str = DEFAULT_ALPHABET) -> None:
        if len(set(alphabet)) != len(alphabet):
            raise DataError(f"Tokenizer alphabet {alphabet!r} repeats a character; list each once.")
        self.alphabet = alphabet
        self.symbols = [BLANK, UNK, *alphabet]
        self._index = {c: i for i, c in enumerate(self.symbols) if i >= 2}

    blank = 0
    unk = 1

    @property
    def vocab_size(self) -> int:
        return len(self.symbols)

    def unknown_chars(self, text: str) -> set[str]:
        return {c for c in normalize_text(text) if c not in self._index}

    def encode(self, text: str) -> list[int]:
        return [self._index.get(c, self.unk) for c in normalize_text(text)]

    def decode(self, ids) -> str:
        return "".join(self.symbols[i] for i in ids if i >= 2 and i < len(self.symbols)).strip()

    def save(self, path: str | Path) -> None:
        write_json(path, {"_type": "CharTokenizer", "alphabet": self.alphabet})

    @classmethod
    def load(cls, path: str | Path) -> CharTokenizer:
        data = read_json(path)
        if data.get("_type") != "CharTokenizer":
            raise DataError(f"{path} is not a saved CharTokenizer; delete it to rebuild.")
        return cls(data["alphabet"])
