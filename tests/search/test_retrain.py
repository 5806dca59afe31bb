"""`mpsearch train --policy`: a stored trial's policy, trained again, reproduces the trial's scores."""

import json

from optuna.trial import TrialState

from mpsearch.cli.main import main
from mpsearch.config import StudyConfig
from mpsearch.quant import Policy
from mpsearch.quant.nna.executor import RNNTExecutor
from mpsearch.search.storage import load_trials_study


def test_retraining_a_trials_policy_reproduces_its_metrics(tmp_path, make_study, capsys):
    path = make_study(trials=2, warm_start={"ilp": 0}, finetune={"max_steps": 2, "warmup_steps": 0, "threads": 1})
    assert main(["search", str(path), "--no-progress"]) == 0
    trial = load_trials_study(StudyConfig.from_yaml(path)).get_trials(states=(TrialState.COMPLETE,))[1]
    policy_file = tmp_path / "chosen.json"
    Policy.from_dict(trial.user_attrs["policy"]).save(policy_file)
    capsys.readouterr()
    assert main(["train", str(path), "--policy", str(policy_file), "--no-progress"]) == 0
    out = tmp_path / "study" / "trained" / "chosen"
    metrics = json.loads((out / "metrics.json").read_text())
    for key in ("wer", "cer", "test_wer", "latency_ms", "size_bytes"):
        assert metrics[key] == trial.user_attrs["metrics"][key], key
    assert metrics["finetune"]["steps"] == 2
    assert RNNTExecutor(out / "model.npz")  # the integer export loads in the reference executor
    assert "written to" in capsys.readouterr().out


def test_a_policy_naming_an_unknown_layer_is_a_one_line_error(tmp_path, make_study, capsys):
    path = make_study()
    bad = tmp_path / "bad.json"
    Policy({"encoder.lstm.weight_ih_l9": {"weight_bits": 4}, "_default": {"weight_bits": 8}}).save(bad)
    assert main(["train", str(path), "--policy", str(bad), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "Unknown site 'encoder.lstm.weight_ih_l9' in policy; valid sites:" in err and err.count("\n") == 1
    assert main(["train", str(path), "--policy", str(tmp_path / "missing.json")]) == 2
    assert "does not exist; create one with `mpsearch export`" in capsys.readouterr().err
