"""Trials tied to the float baseline they were scored on: a changed baseline's stored trials stay stored
but take no part in the front, export, the report, the answers to re-proposed points, the warm starts
or the count that ends a search. A toy evaluation on a real SQLite storage; the baseline key is
changed the way `Study.baseline()` changes it, by writing baseline/metrics.json anew."""

import hashlib
import json

import pytest
import yaml
from optuna.trial import TrialState

from mpsearch.cli.main import main
from mpsearch.config import StudyConfig
from mpsearch.search.optuna_backend import make_objective, open_record, run_optuna
from mpsearch.search.storage import load_trials_study
from mpsearch.search.warm_start import uniform_starts
from mpsearch.study import Study

MODEL = {"name": "rnnt", "params": {"frontend_dim": 8, "enc_hidden": 12, "enc_layers": 1, "pred_embed": 6,
                                    "pred_hidden": 12, "joint_dim": 10, "dropout": 0.0}}
SPACE = {"groups": {"encoder": {"sites": ["frontend.*", "encoder.*"], "weight_bits": [4, 8]},
                    "rest": {"sites": ["predictor.*", "joiner.*"], "weight_bits": [4, 8]}}}


@pytest.fixture
def toy(tmp_path):
    """(study YAML, config, search space) of a 4-point study that has trained nothing."""
    (tmp_path / "space.yaml").write_text(yaml.safe_dump(SPACE))
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump({"name": "prov", "output_dir": str(tmp_path / "study"), "model": MODEL,
                                    "search": {"space": str(tmp_path / "space.yaml"), "sampler": "random",
                                               "workers": 1, "warm_start": {"ilp": 0}}}))
    cfg = StudyConfig.from_yaml(path)
    return path, cfg, Study(cfg, progress=False).search_space()


def set_baseline(cfg, key):
    folder = cfg.study_dir / "baseline"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "metrics.json").write_text(json.dumps({"config_hash": key, "dev": {"wer": 0.1}}))


class Evaluate:
    """A trial's metrics from its policy alone, recording the baseline key as TrialRunner does."""

    def __init__(self, cfg, wer_offset=0.0):
        self.cfg, self.wer_offset, self.calls = cfg, wer_offset, []

    def __call__(self, policy):
        self.calls.append(policy)
        eights = str(policy.to_dict()).count("'weight_bits': 8")
        key = json.loads((self.cfg.study_dir / "baseline" / "metrics.json").read_text())["config_hash"]
        return {"wer": 0.5 - 0.05 * eights + self.wer_offset, "latency_ms": 1.0 + eights, "baseline": key}


def baseline_of(trial):
    return (trial.user_attrs.get("metrics") or {}).get("baseline") or trial.user_attrs.get("baseline")


def searched_twice(cfg, space, trials=4, starts=()):
    """The study searched on baseline "A", then again after the baseline changed to "B"."""
    set_baseline(cfg, "A")
    first = Evaluate(cfg)
    run_optuna(cfg, space, list(starts), first, trials=trials, progress=False)
    set_baseline(cfg, "B")
    second = Evaluate(cfg, wer_offset=0.1)
    study = run_optuna(cfg, space, list(starts), second, trials=trials, progress=False)
    return study, first, second


def test_a_new_baseline_scores_every_requested_point_again(toy):
    _, cfg, space = toy
    study, first, second = searched_twice(cfg, space)
    assert len(first.calls) == 4
    # The count that ends the search is the new baseline's: nothing of "A" counts as done.
    assert len(second.calls) == 4
    complete = study.get_trials(states=(TrialState.COMPLETE,))
    on_b = {tuple(sorted(t.params.items())) for t in complete if baseline_of(t) == "B"}
    assert len(on_b) == 4
    assert study.user_attrs["baseline"] == "B"


@pytest.mark.filterwarnings("ignore:Heartbeat of storage")  # trials asked by hand, outside optimize()
def test_a_re_proposed_point_is_never_answered_from_another_baseline(toy):
    _, cfg, space = toy
    set_baseline(cfg, "A")
    study = open_record(cfg, space).study
    point = {p.name: p.choices[0] for p in space.parameters()}
    evaluate = Evaluate(cfg)
    objective = make_objective(open_record(cfg, space), evaluate, poll_seconds=0.01)
    study.enqueue_trial(point)
    first = study.ask()
    study.tell(first, objective(first))
    set_baseline(cfg, "B")
    objective = make_objective(open_record(cfg, space), evaluate, poll_seconds=0.01)
    study.enqueue_trial(point)
    second = study.ask()
    values = objective(second)
    assert len(evaluate.calls) == 2 and "copied_from" not in second.user_attrs
    study.tell(second, values)
    # On the same baseline the stored result answers it.
    study.enqueue_trial(point)
    third = study.ask()
    assert objective(third) == tuple(values) and len(evaluate.calls) == 2
    assert third.user_attrs["copied_from"] == second.number


def test_warm_starts_are_enqueued_again_for_a_new_baseline(toy):
    _, cfg, space = toy
    starts = uniform_starts(space)
    study, _, _ = searched_twice(cfg, space, trials=2, starts=starts)
    complete = study.get_trials(states=(TrialState.COMPLETE,))
    assert sorted(t.user_attrs["origin"] for t in complete if baseline_of(t) == "A") == ["uniform-4", "uniform-8"]
    assert sorted(t.user_attrs["origin"] for t in complete if baseline_of(t) == "B") == ["uniform-4", "uniform-8"]
    # and once per baseline: a third run on "B" enqueues nothing
    run_optuna(cfg, space, starts, Evaluate(cfg), trials=2, progress=False)
    assert len(load_trials_study(cfg).trials) == len(study.trials)


def _digest(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_front_export_and_report_use_the_current_baseline_only(toy, tmp_path, capsys):
    path, cfg, space = toy
    study, _, _ = searched_twice(cfg, space)
    older = sorted(t.number for t in study.trials if baseline_of(t) == "A")
    current = sorted(t.number for t in study.get_trials(states=(TrialState.COMPLETE,))
                     if baseline_of(t) == "B" and "copied_from" not in t.user_attrs)
    db = cfg.study_dir / "optuna.db"
    before = _digest(db)

    assert main(["front", str(path), "--no-plot", "--all"]) == 0
    out = capsys.readouterr().out
    assert f"{len(older)} trials of an older float baseline are left out" in out
    shown = (cfg.study_dir / "front.csv").read_text().splitlines()[1:]
    assert sorted(int(line.split(",")[0]) for line in shown) == current
    assert json.loads((cfg.study_dir / "front.json").read_text())["older_baseline"] == len(older)

    assert main(["export", str(path), "--trial", str(older[0]), "--out", str(tmp_path / "p.json")]) == 2
    assert "older float baseline" in capsys.readouterr().err
    assert main(["export", str(path), "--pick", "knee", "--out", str(tmp_path / "p.json")]) == 0
    out = capsys.readouterr().out
    assert int(out.split()[1]) in current and "older float baseline" in out

    from mpsearch.report import render_report

    page = render_report(cfg)
    assert f"{len(older)} trials of an older float baseline are left out" in page
    assert _digest(db) == before  # reading the trials wrote nothing into the storage


def test_trials_record_the_keys_they_were_scored_with(toy):
    _, cfg, space = toy
    set_baseline(cfg, "A")
    (cfg.study_dir / "sensitivity.json").write_text(json.dumps({"key": "S1"}))
    with_ilp = cfg.model_copy(update={"search": cfg.search.model_copy(update={
        "warm_start": cfg.search.warm_start.model_copy(update={"ilp": 1})})})
    study = run_optuna(with_ilp, space, [], Evaluate(cfg), trials=2, progress=False)
    for trial in study.get_trials(states=(TrialState.COMPLETE,)):
        assert trial.user_attrs["metrics"]["sensitivity"] == "S1" and trial.user_attrs["sensitivity"] == "S1"
        assert trial.user_attrs["baseline"] == "A" == trial.user_attrs["metrics"]["baseline"]
