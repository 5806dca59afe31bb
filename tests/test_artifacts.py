"""artifacts.cached: reuse while the key holds; a torn or foreign artefact is set aside with one log line."""

import json
import logging

import pytest

from mpsearch.artifacts import cached, read_json, write_json


def _stage(path, key, calls):
    def compute():
        calls.append(key)
        write_json(path, {"key": key, "value": len(calls)})
        return len(calls)

    def load(p):
        data = read_json(p)
        return data["key"], data["value"]

    return cached(path, key, compute, load)


def test_reused_while_the_key_holds_and_set_aside_when_it_changes(tmp_path, caplog):
    path, calls = tmp_path / "stage.json", []
    assert _stage(path, "a", calls) == 1
    assert _stage(path, "a", calls) == 1 and calls == ["a"]
    with caplog.at_level(logging.WARNING):
        assert _stage(path, "b", calls) == 2
    assert json.loads((tmp_path / "stage-a.json").read_text())["key"] == "a"
    assert [r.getMessage() for r in caplog.records if str(path) in r.getMessage()] == [
        f"{path} was made from other settings (key a, now b); set aside as {tmp_path / 'stage-a.json'} and made anew"]


@pytest.mark.parametrize("text", ['{"key": "a", "val', "", "[1, 2]", '{"other": 1}', "\xff\xfe"])
def test_a_torn_or_foreign_file_is_set_aside_and_made_anew(tmp_path, caplog, text):
    path, calls = tmp_path / "stage.json", []
    path.write_bytes(text.encode("latin-1"))
    with caplog.at_level(logging.WARNING):
        assert _stage(path, "a", calls) == 1
        assert _stage(path, "a", calls) == 1
    assert (tmp_path / "stage-torn.json").read_bytes() == text.encode("latin-1")
    lines = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(lines) == 1 and "\n" not in lines[0] and str(path) in lines[0] and "set aside" in lines[0]


def test_several_files_go_aside_together_and_names_are_never_reused(tmp_path):
    folder = tmp_path / "stage"
    folder.mkdir()
    for n in (1, 2):
        (folder / "metrics.json").write_text("{")
        (folder / "model.pt").write_text("weights")
        (folder / "keep.pt").write_text("resumable")
        cached(folder / "metrics.json", "k", lambda: "made", lambda p: read_json(p),
               files=(folder / "metrics.json", folder / "model.pt"))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["stage", "stage-torn", "stage-torn-2"]
    assert sorted(p.name for p in (tmp_path / "stage-torn-2").iterdir()) == ["metrics.json", "model.pt"]
    assert (folder / "keep.pt").is_file()
