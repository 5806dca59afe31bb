import csv
import json

import optuna
import pytest
import yaml

from mpsearch.cli.main import main
from mpsearch.config import StudyConfig
from mpsearch.quant import Policy, QuantConfig
from mpsearch.search.storage import open_storage

optuna.logging.set_verbosity(optuna.logging.WARNING)

SITES = ["encoder.lstm", "joiner.out"]
DISTRIBUTIONS = {"encoder.weight_bits": optuna.distributions.CategoricalDistribution([2, 4, 8]),
                 "encoder.method": optuna.distributions.CategoricalDistribution(["uniform", "gq"])}
# (wer, latency_ms, encoder bits, method, origin); trial 4 fails, trial 5 is dominated.
TRIALS = [(0.20, 10.0, 8, "uniform", "uniform-8"), (0.22, 5.0, 4, "uniform", "ilp-0"),
          (0.40, 2.0, 2, "uniform", "uniform-2"), (0.25, 3.0, 4, "gq", "sampler"), None,
          (0.30, 6.0, 4, "gq", "sampler")]


def policy_of(bits: int, method: str) -> Policy:
    return Policy({"encoder.lstm": QuantConfig(weight_bits=bits, method=method),
                   "joiner.out": QuantConfig(weight_bits=8)}, SITES)


@pytest.fixture
def study_yaml(tmp_path):
    data = {"name": "cli-front", "output_dir": str(tmp_path / "study"), "model": {"name": "rnnt"}}
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


@pytest.fixture
def stored_study(study_yaml):
    cfg = StudyConfig.from_yaml(study_yaml)
    study = optuna.create_study(storage=open_storage(cfg), study_name=cfg.name, directions=["minimize"] * 2)
    for spec in TRIALS:
        if spec is None:
            study.add_trial(optuna.trial.create_trial(
                params={"encoder.weight_bits": 2, "encoder.method": "gq"}, distributions=DISTRIBUTIONS,
                state=optuna.trial.TrialState.FAIL,
                user_attrs={"origin": "sampler", "fail_reason": "loss became NaN",
                            "policy": policy_of(2, "gq").to_dict()}))
            continue
        wer, latency, bits, method, origin = spec
        metrics = {"wer": wer, "cer": wer / 2, "test_wer": wer + 0.01, "test_cer": wer / 2, "latency_ms": latency,
                   "size_bytes": 1000 * bits, "avg_weight_bits": float(bits), "seconds": 1.0}
        study.add_trial(optuna.trial.create_trial(
            params={"encoder.weight_bits": bits, "encoder.method": method}, distributions=DISTRIBUTIONS,
            values=[wer, latency], user_attrs={"origin": origin, "metrics": metrics,
                                               "policy": policy_of(bits, method).to_dict()}))
    return study_yaml, cfg.study_dir


def test_help_teaches_both_commands(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["front", "--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert "optuna-dashboard sqlite:///runs/<study>/optuna.db" in out
    assert "mpsearch front studies/quickstart.yaml" in out
    with pytest.raises(SystemExit):
        main(["export", "--help"])
    out = capsys.readouterr().out
    for flag in ("--trial", "--pick", "--max-latency-ms", "--max-wer", "--out"):
        assert flag in out
    assert "mpsearch export studies/quickstart.yaml --pick knee --out best.json" in out


def test_front_prints_the_table_and_writes_its_files(stored_study, capsys):
    study_yaml, folder = stored_study
    assert main(["front", str(study_yaml)]) == 0
    out = capsys.readouterr().out
    assert "uniform-8" in out and "ilp-0" in out
    assert "4 point(s) on the front of 5 distinct complete trial(s) (5 complete, 1 failed)" in out
    # Front (0.20, 10), (0.22, 5), (0.25, 3), (0.40, 2) against (1.0, 11.0).
    expected = 0.80 * 1 + 0.78 * 5 + 0.75 * 2 + 0.60 * 1
    assert f"hypervolume {expected:.6g} against the reference point wer=1 (error rate), latency_ms=11 " \
           "(1.1 x uniform-8)" in out

    with open(folder / "front.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert list(rows[0]) == ["trial", "origin", "wer", "test_wer", "latency_ms", "size_bytes", "avg_weight_bits",
                             "encoder.weight_bits", "encoder.method", "on_front"]
    assert [(r["trial"], r["on_front"]) for r in rows] == [("0", "True"), ("1", "True"), ("3", "True"),
                                                           ("5", "False"), ("2", "True")]
    summary = json.loads((folder / "front.json").read_text())
    assert summary["hypervolume"] == pytest.approx(expected)
    assert summary["reference_point"] == pytest.approx({"wer": 1.0, "latency_ms": 11.0})
    assert summary["trials"] == {"complete": 5, "failed": 1}
    assert summary["front"] == [0, 1, 3, 2]
    png = (folder / "front.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 5000
    assert not list(folder.glob(".front*"))            # no temporary files left behind


@pytest.mark.parametrize("flags,number", [(["--trial", "5"], 5), (["--pick", "knee"], 3),
                                          (["--max-latency-ms", "5"], 1), (["--max-wer", "0.25"], 3)])
def test_export_writes_the_chosen_policy(stored_study, tmp_path, capsys, flags, number):
    study_yaml, _ = stored_study
    out_path = tmp_path / "policy.json"
    assert main(["export", str(study_yaml), *flags, "--out", str(out_path)]) == 0
    printed = capsys.readouterr().out
    assert printed.startswith(f"trial {number} (")
    _, _, bits, method, _ = TRIALS[number]
    assert Policy.load(out_path) == policy_of(bits, method)
    assert "mpsearch train" in printed and "--policy" in printed


@pytest.mark.parametrize("flags,message", [
    (["--trial", "9"], "Trial 9 is not in study 'cli-front' (trials 0-5)"),
    (["--trial", "4"], "Trial 4 failed (loss became NaN)"),
    (["--max-latency-ms", "1.5"], "No complete trial has latency_ms <= 1.5 ms; the lowest is 2 ms (trial 2)"),
    (["--max-wer", "0.1"], "No complete trial has wer <= 0.1; the lowest is 0.2 (trial 0)"),
])
def test_export_errors_are_one_line(stored_study, tmp_path, capsys, flags, message):
    study_yaml, _ = stored_study
    out_path = tmp_path / "policy.json"
    assert main(["export", str(study_yaml), *flags, "--out", str(out_path)]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1
    assert not out_path.exists()


def test_commands_without_stored_trials_fail_cleanly(study_yaml, tmp_path, capsys):
    assert main(["front", str(study_yaml)]) == 2
    assert "No trials stored for study 'cli-front'" in capsys.readouterr().err
    assert main(["export", str(study_yaml), "--pick", "knee", "--out", str(tmp_path / "p.json")]) == 2
    assert "run `mpsearch search`" in capsys.readouterr().err


def test_export_wants_exactly_one_choice(study_yaml, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["export", str(study_yaml), "--trial", "1", "--max-wer", "0.2", "--out", str(tmp_path / "p.json")])
    assert exit_info.value.code == 2
    assert "not allowed with argument" in capsys.readouterr().err
