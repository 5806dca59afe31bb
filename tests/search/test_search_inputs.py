"""Bad input to `mpsearch search` (and the commands that read its trials) is refused in one line before any
long work: nothing is trained, and a command that only reads creates nothing."""

from __future__ import annotations

import socket

import pytest
import yaml

from mpsearch.cli.main import main


def _one_line_error(capsys) -> str:
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1, err
    return err


def _nothing_trained(study_yaml) -> bool:
    study_dir = study_yaml.parent / "study"
    return not (study_dir / "baseline").exists() and not (study_dir / "sensitivity").exists()


def test_a_study_file_with_a_byte_that_is_not_utf8_names_its_line_and_offset(tmp_path, capsys):
    path = tmp_path / "study.yaml"
    path.write_bytes(b"name: tiny\nmodel:\n  name: rnnt  # caf\xe9\n")
    assert main(["search", str(path)]) == 2
    err = _one_line_error(capsys)
    assert "byte 0xe9 at line 3 (byte offset 37) is not UTF-8" in err and "save the study file as UTF-8" in err


def test_a_manifest_byte_that_is_not_utf8_is_listed_with_the_other_problems(tmp_path, capsys):
    path = tmp_path / "train.jsonl"
    path.write_bytes(b'{"audio_filepath": "a.wav", "duration": 1.0, "text": "hi"}\n'
                     b'{"audio_filepath": "b.wav", "duration": 1.0, "text": "caf\xe9"}\n'
                     b'{"audio_filepath": "c.wav", "duration": "long", "text": "yo"}\n')
    assert main(["data", "check", str(path)]) == 1
    out = capsys.readouterr().out
    assert f"{path}:2: error: byte 0xe9 at byte offset 116 is not UTF-8" in out
    assert f"{path}:1: error: audio file" in out and f"{path}:3: error: 'duration' is 'long'" in out

    from mpsearch.data.manifest import read_manifest
    from mpsearch.errors import DataError

    with pytest.raises(DataError, match=r"train.jsonl:2: byte 0xe9 at byte offset 116 is not UTF-8"):
        read_manifest(path)


@pytest.mark.parametrize("storage", ["runs/optuna.db", "sqlite://runs/optuna.db", "postgres://me@db/trials"])
def test_a_malformed_storage_url_is_refused_when_the_study_loads(make_study, capsys, storage):
    path = make_study(storage=storage)
    assert main(["search", str(path), "--no-progress"]) == 2
    assert "'search.storage' must be a SQLAlchemy URL" in _one_line_error(capsys)
    assert _nothing_trained(path)


def test_a_storage_that_cannot_be_opened_is_refused_before_training(make_study, tmp_path, capsys):
    path = make_study(storage=f"sqlite:///{tmp_path}/no/such/folder/optuna.db")
    assert main(["search", str(path), "--no-progress"]) == 2
    assert "Cannot open the trial storage" in _one_line_error(capsys)
    assert _nothing_trained(path)


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.parametrize("args, message", [
    (["--address", "auto"], "--address names a Ray cluster; use it with --backend ray"),
    (["--backend", "ray", "--address", "localhost"], "--address 'localhost' is not a Ray cluster address"),
    (["--backend", "ray", "--address", "head:port"], "--address 'head:port' is not a Ray cluster address"),
    (["--backend", "ray", "--address", "127.0.0.1:{closed}"], "Ray is not reachable at --address"),
])
def test_a_bad_ray_address_is_refused_before_the_baseline(make_study, capsys, args, message):
    pytest.importorskip("ray")
    path = make_study()
    args = [a.format(closed=_closed_port()) for a in args]
    assert main(["search", str(path), "--no-progress", *args]) == 2
    assert message in _one_line_error(capsys)
    assert _nothing_trained(path)


def test_an_unknown_hardware_profile_is_refused_before_the_baseline(make_study, capsys):
    path = make_study()
    data = yaml.safe_load(path.read_text())
    data["hardware"] = {"profile": "nna-int4"}
    path.write_text(yaml.safe_dump(data))
    assert main(["search", str(path), "--no-progress"]) == 2
    assert "Unknown hardware profile 'nna-int4'" in _one_line_error(capsys)
    assert _nothing_trained(path)


@pytest.mark.parametrize("command", [["front"], ["export", "--pick", "knee", "--out", "knee.json"]])
def test_reading_a_study_that_never_ran_creates_nothing(make_study, capsys, command):
    path = make_study()
    study_dir = path.parent / "study"
    assert main([command[0], str(path), *command[1:]]) == 2
    assert "run `mpsearch search` on the study first" in _one_line_error(capsys)
    assert not study_dir.exists()
