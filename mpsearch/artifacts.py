"""Atomic writes: every stage artefact is written beside its final name, then renamed into place,
so a kill at any moment leaves either the old file or the new one, never half of one. `cached` is the
one rule every keyed stage follows: reuse the artefact while its key holds, else make it anew."""

from __future__ import annotations

import json
import logging
import os
import pickle
import re
import shutil
import tempfile
import zipfile
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

from mpsearch.errors import MpsearchError

log = logging.getLogger(__name__)
T = TypeVar("T")

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


# What a torn, truncated or foreign file raises while it is read: JSON and pickle errors, a zip archive
# cut short (torch files), a missing field, or the project's own "not an artefact of this kind" errors.
UNREADABLE = (OSError, EOFError, ValueError, KeyError, TypeError, AttributeError, RuntimeError,
              pickle.UnpicklingError, zipfile.BadZipFile, MpsearchError)


def cached(path: str | Path, key: str, compute: Callable[[], T], load: Callable[[Path], tuple[Any, T]], *,
           files: Sequence[str | Path] | None = None) -> T:
    """The artefact at `path` when it loads and carries `key`; otherwise `compute()`, which writes it.

    `load(path)` returns (the key the artefact was made under, the artefact); `path` is the file written
    last, so its presence means the artefact is finished. An artefact that does not load (truncated
    JSON, a torch file cut short) or that carries another key is set aside, never deleted, with one log
    line naming the file and where it went; then it is made anew. `files` are the artefact's files that
    go aside together (default: `path` alone, renamed next to it as `<stem>-<tag><suffix>`; several move
    into a folder `<their folder>-<tag>` beside their own)."""
    path = Path(path)
    if path.is_file():
        try:
            stored_key, value = load(path)
        except UNREADABLE as exc:
            detail = str(exc).splitlines()[0][:200].rstrip(".") if str(exc) else type(exc).__name__
            artefact_files = [Path(f) for f in files or (path,)]
            why = detail if any(str(f) in detail for f in artefact_files) else f"{path} is unreadable ({detail})"
            tag = "torn"
        else:
            if stored_key == key:
                log.info("reusing %s", path)
                return value
            why = f"{path} was made from other settings (key {stored_key}, now {key})"
            tag = re.sub(r"[^\w.]", "_", str(stored_key))[:16] if stored_key else "stale"
        aside = set_aside([Path(f) for f in files or (path,)], tag)
        log.warning("%s; set aside as %s and made anew", why, aside)
    return compute()


def set_aside(files: Sequence[Path], tag: str) -> Path:
    """Move an artefact's files out of the way under a name with `tag` (numbered when taken); returns
    where they went."""
    one = len(files) == 1
    base = files[0] if one else files[0].parent
    aside, n = base, 1
    while aside == base or aside.exists():
        numbered = f"-{tag}" if n == 1 else f"-{tag}-{n}"
        aside = base.with_name(f"{base.stem}{numbered}{base.suffix}" if one else f"{base.name}{numbered}")
        n += 1
    if one:
        files[0].replace(aside)
        return aside
    aside.mkdir(parents=True)
    for f in files:
        if f.exists():
            shutil.move(str(f), aside / f.name)
    return aside
