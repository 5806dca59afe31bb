"""The Optuna backend through the CLI on a tiny real study: trials, warm starts, storage, failures."""

import optuna
import pytest
import yaml
from optuna.trial import TrialState

from mpsearch.cli.main import main
from mpsearch.config import StudyConfig
from mpsearch.quant import Policy
from mpsearch.search.storage import load_trials_study


def stored(path):
    return load_trials_study(StudyConfig.from_yaml(path))


def test_a_study_runs_its_trials_and_stores_metrics_policy_and_origin(tiny_study_yaml, capsys):
    assert main(["search", str(tiny_study_yaml), "--no-progress"]) == 0
    study = stored(tiny_study_yaml)
    complete = study.get_trials(states=(TrialState.COMPLETE,))
    assert len(complete) == 4
    origins = [t.user_attrs["origin"] for t in complete]
    assert origins[:2] == ["uniform-8", "uniform-4"]  # the reference points, evaluated first
    for trial in complete:
        metrics = trial.user_attrs["metrics"]
        assert trial.values == [metrics["wer"], metrics["latency_ms"]]
        assert {"wer", "cer", "test_wer", "latency_ms", "size_bytes", "avg_weight_bits"} <= set(metrics)
        policy = Policy.from_dict(trial.user_attrs["policy"])
        assert policy.resolve("joiner.out").weight_bits == trial.params["rest.weight_bits"]
    by_origin = {t.user_attrs["origin"]: t.user_attrs["metrics"] for t in complete}
    assert by_origin["uniform-4"]["size_bytes"] < by_origin["uniform-8"]["size_bytes"]
    assert "4 complete trials (0 failed)" in capsys.readouterr().out

    # The same command again finds the trials done; a larger count adds only the difference.
    assert main(["search", str(tiny_study_yaml), "--no-progress"]) == 0
    assert len(stored(tiny_study_yaml).trials) == len(study.trials)
    assert main(["resume", str(tiny_study_yaml), "--trials", "5", "--no-progress"]) == 0
    again = stored(tiny_study_yaml)
    assert len(again.get_trials(states=(TrialState.COMPLETE,))) == 5
    evaluated = [tuple(sorted(t.params.items())) for t in again.get_trials(states=(TrialState.COMPLETE,))
                 if "copied_from" not in t.user_attrs]
    assert len(evaluated) == len(set(evaluated)), "a point was trained twice"


def test_a_nan_trial_is_recorded_failed_with_its_reason(make_study, capsys):
    path = make_study(emulation="none", trials=1,
                       finetune={"lr": 1.0e30, "max_steps": 3, "warmup_steps": 0, "threads": 1},
                       warm_start={"ilp": 0})
    assert main(["search", str(path), "--no-progress"]) == 1
    failed = stored(path).get_trials(states=(TrialState.FAIL,))
    assert failed and all("training loss became nan" in t.user_attrs["fail_reason"] for t in failed)
    assert "last failure: training loss became nan" in capsys.readouterr().err


def test_any_sqlalchemy_url_holds_the_trials(tmp_path, make_study):
    url = f"sqlite:///{tmp_path / 'elsewhere.db'}"
    path = make_study(storage=url, trials=2, warm_start={"ilp": 0})
    assert main(["search", str(path), "--no-progress"]) == 0
    assert len(optuna.load_study(study_name="tiny", storage=url).trials) == 2
    assert not (tmp_path / "study" / "optuna.db").exists()


def test_a_changed_search_space_is_refused_not_mixed_in(tmp_path, make_study, capsys):
    path = make_study(trials=2, warm_start={"ilp": 0})
    assert main(["search", str(path), "--no-progress"]) == 0
    space = tmp_path / "space.yaml"
    data = yaml.safe_load(space.read_text())
    data["groups"]["encoder"]["weight_bits"] = [2, 8]
    space.write_text(yaml.safe_dump(data))
    assert main(["search", str(path), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "was searched with other space" in err and err.count("\n") == 1


@pytest.mark.parametrize("search, message", [
    ({"sampler": "bayes"}, "'search.sampler'"),
    ({"trails": 3}, "unknown key 'search.trails'"),
    ({"objectives": ["wer", "speed"]}, "'search.objectives' must be distinct names"),
    ({"space": "missing.yaml"}, "Search space 'missing.yaml' does not exist"),
])
def test_malformed_search_settings_get_one_line_errors(make_study, capsys, search, message):
    path = make_study(**search)
    assert main(["search", str(path), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1


def test_resume_needs_a_stored_study(tiny_study_yaml, capsys):
    assert main(["resume", str(tiny_study_yaml)]) == 2
    assert "run `mpsearch search` on the study first" in capsys.readouterr().err


@pytest.mark.filterwarnings("ignore:Heartbeat of storage")  # trials asked by hand, outside optimize()
def test_a_point_an_earlier_worker_is_training_is_waited_for_not_trained_again(tiny_study_yaml):
    import threading

    from mpsearch.search.optuna_backend import make_objective, open_study
    from mpsearch.study import Study

    cfg = StudyConfig.from_yaml(tiny_study_yaml)
    space = Study(cfg, progress=False).search_space()
    study = open_study(cfg, space)
    point = {p.name: p.choices[0] for p in space.parameters()}
    study.enqueue_trial(point)
    first = study.ask()  # another worker's trial of the point, still training
    for p in space.parameters():
        first.suggest_categorical(p.name, list(p.choices))
    evaluated = []
    objective = make_objective(cfg, space, lambda policy: evaluated.append(policy) or {}, study, poll_seconds=0.05)
    study.enqueue_trial(point)
    second = study.ask()
    answer = {}
    waiting = threading.Thread(target=lambda: answer.setdefault("values", objective(second)))
    waiting.start()
    waiting.join(timeout=0.5)
    assert waiting.is_alive(), "the second trial did not wait for the first"
    first.set_user_attr("metrics", {"wer": 0.5, "latency_ms": 2.0})
    study.tell(first, [0.5, 2.0])
    waiting.join(timeout=10)
    assert answer["values"] == (0.5, 2.0) and evaluated == []
    assert second.user_attrs["copied_from"] == first.number
