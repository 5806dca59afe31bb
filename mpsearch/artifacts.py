"""Atomic writes: every stage artefact is written beside its final name, then renamed into place,
so a kill at any moment leaves either the old file or the new one, never half of one."""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

_UMASK = os.umask(0)
os.umask(_UMASK)


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path in the same folder; on success it replaces `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600; artefacts are ordinary files
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def write_text(path: str | Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def write_json(path: str | Path, data: Any, sort_keys: bool = True) -> None:
    """Write `data` as indented JSON; `sort_keys=False` keeps mapping order where order carries meaning."""
    write_text(path, json.dumps(data, indent=2, sort_keys=sort_keys) + "\n")


def read_json(path: str | Path) -> Any:
    return json.loads(Path(path).read_text())


def check_header(data: Any, kind: str, version: int, *, source: str, what: str, noun: str, remedy: str,
                 error: type[Exception]) -> None:
    """Every versioned artefact starts with `_type` and `_version`: raise `error` naming `source` when
    `data` is not a `kind` of this `version`. `what` names the artefact ("an mpsearch policy"), `noun`
    its version ("policy version"), `remedy` how to make a good one."""
    if not isinstance(data, dict) or data.get("_type") != kind:
        raise error(f"{source} is not {what} (no '_type: {kind}'); {remedy}.")
    if data.get("_version") != version:
        raise error(f"{source} has {noun} {data.get('_version')!r}; this mpsearch reads version {version}; {remedy}.")
