"""A user's own model named in a study YAML (`model.factory` + `task.adapter`): the whole CLI flow on
the tiny synthesized corpus, then a second study that starts from the first one's baseline checkpoint."""

import json

import pytest
import yaml

from mpsearch.cli.main import main
from mpsearch.config import StudyConfig
from mpsearch.training.checkpoint import load_checkpoint

FACTORY = "mpsearch.testing.user_models:conv_rnn_ctc"
SPACE = {"groups": {"front": {"sites": ["frontend", "encoder.*"], "weight_bits": [4, 8]},
                    "out": {"sites": ["output"], "weight_bits": [4, 8]}}}


def user_study(tmp_path, make_study, name: str, adapter: str, rnn: str = "gru", **search) -> dict:
    """The tiny study (conftest.py) with the example factory and `adapter`, in its own folder."""
    space = tmp_path / "user-space.yaml"
    space.write_text(yaml.safe_dump(SPACE))
    study = yaml.safe_load(make_study(space=str(space), trials=3, **{"emulation": "none", **search}).read_text())
    study.update(name=name, output_dir=str(tmp_path / name), task={"adapter": adapter},
                 model={"factory": FACTORY, "params": {"channels": 8, "hidden": 12, "rnn": rnn}})
    return study


def write(tmp_path, study: dict) -> str:
    path = tmp_path / f"{study['name']}.yaml"
    path.write_text(yaml.safe_dump(study))
    return str(path)


def test_a_factory_model_with_an_adapter_runs_the_cli_flow_and_its_checkpoint_starts_another(
        tmp_path, make_study, capsys):
    # sensitivity (the ILP warm start) takes second derivatives of the adapter's loss; the LSTM variant
    # runs under NNA emulation, so `train --policy` writes the integer export
    first = write(tmp_path, user_study(tmp_path, make_study, "own", "mpsearch.testing.user_models:"
                                       "TwiceDifferentiableCTCAdapter", rnn="lstm", emulation="nna"))
    assert main(["search", first, "--no-progress"]) == 0
    folder = StudyConfig.from_yaml(first).study_dir
    metrics = json.loads((folder / "baseline" / "metrics.json").read_text())
    assert metrics["model"] == FACTORY and metrics["train_steps"] == 3 and 0 <= metrics["dev"]["wer"]
    assert (folder / "sensitivity.json").is_file() and (folder / "front.csv").is_file()
    stored = load_checkpoint(folder / "baseline" / "model.pt")
    assert stored.model.factory == FACTORY and stored.model.params == {"channels": 8, "hidden": 12, "rnn": "lstm"}

    policy = tmp_path / "knee.json"
    assert main(["export", first, "--pick", "knee", "--out", str(policy)]) == 0
    assert main(["train", first, "--policy", str(policy), "--no-progress"]) == 0
    trained = json.loads((folder / "trained" / "knee" / "metrics.json").read_text())
    assert trained["finetune"]["steps"] == 1 and "wer" in trained and "latency_ms" in trained
    assert (folder / "trained" / "knee" / "model.npz").is_file()

    # torch's CTC kernel (no second derivative) is fine without the sensitivity stage
    second = user_study(tmp_path, make_study, "from_own", "mpsearch.testing.user_models:CTCAdapter", rnn="lstm",
                        warm_start={"ilp": 0})
    second["baseline"] = {"checkpoint": str(folder / "baseline" / "model.pt")}
    second.pop("train")
    capsys.readouterr()
    assert main(["search", write(tmp_path, second), "--no-progress"]) == 0
    assert "3 trials on optuna" in capsys.readouterr().out
    reused = json.loads((StudyConfig.from_dict(second).study_dir / "baseline" / "metrics.json").read_text())
    assert reused["train_steps"] == 0 and reused["dev"]["wer"] == metrics["dev"]["wer"]

    # the checkpoint records the factory and its params: another architecture is caught before any trial
    second.update(name="mismatched", model={"factory": FACTORY, "params": {"channels": 8, "hidden": 16, "rnn": "lstm"}},
                  output_dir=str(tmp_path / "mismatched"))
    assert main(["search", write(tmp_path, second), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "does not match the study's model.params (hidden: checkpoint 12, study 16)" in err and err.count("\n") == 1



def test_ray_workers_import_a_factory_beside_the_study_by_its_dotted_path(tmp_path, make_study, ray_session,
                                                                          monkeypatch):
    from optuna.trial import TrialState

    from mpsearch.study import Study

    (tmp_path / "models_beside_the_study.py").write_text(
        "from mpsearch.testing.user_models import CTCAdapter, ConvRNNCTC\n\n"
        "def build(n_mels, vocab_size, hidden=12):\n"
        "    return ConvRNNCTC(n_mels, vocab_size, channels=8, hidden=hidden)\n")
    monkeypatch.chdir(tmp_path)  # where `mpsearch search` runs: neither installed nor on PYTHONPATH
    study = user_study(tmp_path, make_study, "on_ray", "models_beside_the_study:CTCAdapter", warm_start={"ilp": 0})
    study["model"] = {"factory": "models_beside_the_study:build"}
    stored = Study(StudyConfig.from_dict(study), progress=False).run("trials", backend="ray", trials=2, workers=2).trials
    complete = stored.get_trials(states=(TrialState.COMPLETE,))
    assert len(complete) == 2 and all(t.user_attrs["metrics"]["wer"] >= 0 for t in complete)


def test_a_factory_the_ray_workers_cannot_import_stops_the_search_at_the_first_trial(tmp_path, make_study,
                                                                                      ray_session, monkeypatch):
    from optuna.trial import TrialState

    from mpsearch.errors import MpsearchError
    from mpsearch.search.storage import load_trials_study
    from mpsearch.study import Study

    driver_only = tmp_path / "driver_only"
    driver_only.mkdir()
    (driver_only / "models_only_the_driver_sees.py").write_text(
        "from mpsearch.testing.user_models import ConvRNNCTC\n\n"
        "def build(n_mels, vocab_size, hidden=12):\n"
        "    return ConvRNNCTC(n_mels, vocab_size, channels=8, hidden=hidden)\n")
    # On the driver's path only: the session's Ray workers started without it, and run in tmp_path.
    monkeypatch.syspath_prepend(str(driver_only))
    monkeypatch.chdir(tmp_path)
    study = user_study(tmp_path, make_study, "unseen", "mpsearch.testing.user_models:CTCAdapter", warm_start={"ilp": 0})
    study["model"] = {"factory": "models_only_the_driver_sees:build"}
    cfg = StudyConfig.from_dict(study)
    with pytest.raises(MpsearchError) as caught:
        Study(cfg, progress=False).run("trials", backend="ray", trials=3, workers=1)
    message = str(caught.value)
    assert message.startswith("A Ray worker cannot set up the study: model.factory 'models_only_the_driver_sees:build'")
    assert "no module named 'models_only_the_driver_sees'" in message and "PYTHONPATH" in message
    assert "\n" not in message
    failed = load_trials_study(cfg).get_trials(states=(TrialState.FAIL,))
    assert len(failed) == 1 and failed[0].user_attrs["fail_reason"] == message  # not retried, no second point
