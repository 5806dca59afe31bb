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


def study_dir(path):
    return StudyConfig.from_yaml(path).study_dir.resolve()


def test_a_study_runs_its_trials_and_stores_metrics_policy_and_origin(tiny_study_yaml, capsys):
    assert main(["search", str(tiny_study_yaml), "--no-progress"]) == 0
    study = stored(tiny_study_yaml)
    # The space's 4 points; a point proposed again is answered from its trial and not counted.
    complete = [t for t in study.get_trials(states=(TrialState.COMPLETE,)) if "copied_from" not in t.user_attrs]
    assert len(complete) == 4 and len({tuple(sorted(t.params.items())) for t in complete}) == 4
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
    assert "4 complete trials of distinct points (0 failed" in capsys.readouterr().out
    # Dashboard-friendly: objective names on the study, each metric as its own attribute.
    assert optuna.load_study(study_name="tiny", storage=f"sqlite:///{study_dir(tiny_study_yaml)}/optuna.db"
                             ).metric_names == ["wer", "latency_ms"]
    for trial in complete:
        assert trial.user_attrs["m_wer"] == trial.user_attrs["metrics"]["wer"]
        assert trial.user_attrs["m_latency_ms"] == trial.user_attrs["metrics"]["latency_ms"]
        assert "m_finetune" not in trial.user_attrs  # a dict, not a number

    # The same command again finds the trials done; more than the space's 4 points ask for nothing more.
    assert main(["search", str(tiny_study_yaml), "--no-progress"]) == 0
    assert len(stored(tiny_study_yaml).trials) == len(study.trials)
    assert main(["resume", str(tiny_study_yaml), "--trials", "5", "--no-progress"]) == 0
    assert len(stored(tiny_study_yaml).trials) == len(study.trials)


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
def test_a_point_an_earlier_trial_is_training_is_neither_trained_again_nor_waited_for(tiny_study_yaml):
    from mpsearch.search.optuna_backend import make_objective, open_record
    from mpsearch.study import Study

    cfg = StudyConfig.from_yaml(tiny_study_yaml)
    space = Study(cfg, progress=False).search_space()
    record = open_record(cfg, space)
    study = record.study
    point = {p.name: p.choices[0] for p in space.parameters()}
    study.enqueue_trial(point)
    first = study.ask()  # another worker's (or process's) trial of the point, still training
    for p in space.parameters():
        first.suggest_categorical(p.name, list(p.choices))
    evaluated = []
    objective = make_objective(record, lambda policy: evaluated.append(policy) or {}, poll_seconds=0.01)
    study.enqueue_trial(point)
    second = study.ask()
    with pytest.raises(optuna.TrialPruned):
        objective(second)
    assert evaluated == [] and second.user_attrs["duplicate_of"] == first.number

    # Once the first has finished, the point proposed again is answered from it.
    first.set_user_attr("metrics", {"wer": 0.5, "latency_ms": 2.0})
    study.tell(first, [0.5, 2.0])
    study.enqueue_trial(point)
    third = study.ask()
    assert objective(third) == (0.5, 2.0) and evaluated == []
    assert third.user_attrs["copied_from"] == first.number and third.user_attrs["m_wer"] == 0.5


def test_repeated_proposals_neither_count_nor_end_the_search(tiny_study_yaml):
    """On a 4-point space with 3 points done, asking for 4 scores the last point whatever the sampler
    proposes first; asking for more than the space holds scores nothing more."""
    from mpsearch.search.optuna_backend import distinct_complete_count, run_optuna
    from mpsearch.study import Study

    cfg = StudyConfig.from_yaml(tiny_study_yaml)
    space = Study(cfg, progress=False).search_space()
    scored = []

    def evaluate(policy):
        scored.append(policy)
        return {"wer": 0.5, "latency_ms": float(str(policy.to_dict()).count("8"))}

    for sampler in ("random", "nsga2"):
        scored.clear()
        run = cfg.model_copy(update={"name": f"tiny-{sampler}", "search": cfg.search.model_copy(
            update={"sampler": sampler})})
        first = run_optuna(run, space, [], evaluate, trials=3, progress=False)
        assert distinct_complete_count(first) == 3 and len(scored) == 3
        again = run_optuna(run, space, [], evaluate, trials=4, progress=False)
        assert distinct_complete_count(again) == 4 and len(scored) == 4, sampler
        copies = [t for t in again.trials if "copied_from" in t.user_attrs]
        assert all(t.state == TrialState.COMPLETE and t.values == again.trials[t.user_attrs["copied_from"]].values
                   for t in copies)
        run_optuna(run, space, [], evaluate, trials=6, progress=False)
        assert len(scored) == 4


def test_workers_auto_runs_one_trial_per_free_core_and_finishes_the_study(make_study_yaml, caplog):
    path = make_study_yaml(trials=3)  # its YAML says workers: 1; the command line asks for auto
    with caplog.at_level("INFO", logger="mpsearch.search.optuna_backend"):
        assert main(["search", str(path), "--workers", "auto", "--no-progress"]) == 0
    line = next(r.getMessage() for r in caplog.records if "search.workers: auto" in r.getMessage())
    assert 1 <= int(line.split()[1]) <= 4
    complete = stored(path).get_trials(states=(TrialState.COMPLETE,))
    assert len({tuple(sorted(t.params.items())) for t in complete}) >= 3


def test_workers_is_a_positive_count_or_auto(tiny_study_yaml, capsys):
    with pytest.raises(SystemExit):
        main(["search", str(tiny_study_yaml), "--workers", "0"])
    assert "expected a positive whole number or auto" in capsys.readouterr().err
    data = yaml.safe_load(tiny_study_yaml.read_text())
    data["search"]["workers"] = "many"
    tiny_study_yaml.write_text(yaml.safe_dump(data))
    with pytest.raises(Exception, match="workers"):
        StudyConfig.from_yaml(tiny_study_yaml)
