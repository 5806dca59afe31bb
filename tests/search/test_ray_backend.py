"""The Ray Tune backend on the session's local Ray: trials land in the Optuna storage with the same
contract as the Optuna backend, a later request continues in a new experiment, and a NaN trial is
recorded failed without being retried."""

from __future__ import annotations

import optuna
import pytest

pytest.importorskip("ray")

from optuna.trial import TrialState

from mpsearch.config import StudyConfig
from mpsearch.study import Study


def _point(trial) -> tuple:
    return tuple(sorted(trial.params.items()))


def _search(study_yaml, trials):
    study = Study(StudyConfig.from_yaml(study_yaml), progress=False)
    return study, study.run("trials", backend="ray", trials=trials, workers=2).trials


def test_ray_trials_land_in_the_storage_and_a_larger_request_continues(ray_session, make_study_yaml):
    study, stored = _search(make_study_yaml(), trials=3)
    before = stored.get_trials()
    # 3 distinct points; a point the sampler proposed again is answered from its trial (copied_from).
    complete = [t for t in stored.get_trials(states=(TrialState.COMPLETE,)) if "copied_from" not in t.user_attrs]
    assert len(complete) == len({_point(t) for t in complete}) == 3
    origins = {t.user_attrs["origin"] for t in complete}
    assert {"uniform-8", "uniform-4"} <= origins
    objectives, space = study.cfg.search.objectives, study.search_space()
    for trial in complete:
        assert set(trial.params) == {"encoder.weight_bits", "rest.weight_bits"}
        assert trial.values == [trial.user_attrs["metrics"][o] for o in objectives]
        assert trial.user_attrs["policy"] == space.to_policy(trial.params).to_dict()
        assert trial.user_attrs["metrics"]["threads"] == 1  # two workers share the session's two CPUs
    first = study.dir / "ray" / "run-001"
    assert (first / "tuner.pkl").is_file() and (first / "mpsearch-finished").is_file()

    # More trials requested: a new Ray experiment; the stored trials are kept, none is run again.
    _, stored = _search(make_study_yaml(), trials=4)
    trials = stored.get_trials()
    assert len({_point(t) for t in trials if t.state == TrialState.COMPLETE}) == 4
    assert [(t.number, t.state, t.values) for t in trials[:len(before)]] == [
        (t.number, t.state, t.values) for t in before]
    assert (study.dir / "ray" / "run-002" / "mpsearch-finished").is_file()

    # Already done: returns at once, no new experiment.
    _, stored = _search(make_study_yaml(), trials=4)
    assert len(stored.get_trials()) == len(trials)
    assert not (study.dir / "ray" / "run-003").exists()


def test_nan_trial_is_recorded_failed_and_not_retried(ray_session, make_study_yaml):
    study_yaml = make_study_yaml(trials=1, emulation="none",
                                 finetune={"lr": 1.0e30, "max_steps": 3, "warmup_steps": 0, "threads": 1})
    study, stored = _search(study_yaml, trials=1)
    trials = stored.get_trials()
    assert trials and all(t.state == TrialState.FAIL for t in trials)
    assert all("nan" in t.user_attrs["fail_reason"].lower() for t in trials)
    assert all({"policy", "origin"} <= set(t.user_attrs) for t in trials)
    # One Ray trial per stored trial, none errored: a deterministic failure is not retried.
    experiment = study.dir / "ray" / "run-001"
    assert len([p for p in experiment.iterdir() if p.name.startswith("evaluate_trial")]) == len(trials)
    assert not list(experiment.rglob("error.txt"))


def test_searcher_scores_each_point_once_with_trials_in_flight(make_study_yaml):
    """Driven by hand, without Ray: two trials in flight on a 4-point space, 6 trials wanted (the
    space's 4 points are what can be had); repeated proposals are answered, not run, and not counted."""
    import json

    from ray.tune.search import Searcher

    from mpsearch.search.optuna_backend import open_study
    from mpsearch.search.ray_backend import StudySearcher

    cfg = StudyConfig.from_yaml(make_study_yaml(sampler="random"))
    space = Study(cfg, progress=False).search_space()
    stored = open_study(cfg, space, heartbeat=False)
    searcher = StudySearcher(cfg, space, trials=6, workers=2, new_trial_budget=20)
    in_flight, counter = {}, 0
    while True:
        while len(in_flight) < 3:  # offer more slots than workers: the searcher must hold back
            counter += 1
            params = searcher.suggest(str(counter))
            if params is None or params == Searcher.FINISHED:
                break
            in_flight[str(counter)] = params
        if params == Searcher.FINISHED:
            break
        assert len(in_flight) <= 2
        trial_id, params = next(iter(in_flight.items()))
        del in_flight[trial_id]
        metrics = {"wer": 0.5, "latency_ms": float(params["encoder.weight_bits"] + params["rest.weight_bits"])}
        searcher.on_trial_complete(trial_id, result={**metrics, "failed": 0, "metrics_json": json.dumps(metrics)})

    complete = stored.get_trials(states=(TrialState.COMPLETE,))
    assert not stored.get_trials(states=(TrialState.RUNNING,))
    scored = [tuple(sorted(t.params.items())) for t in complete if "copied_from" not in t.user_attrs]
    assert len(scored) == len(set(scored)) == 4
    for trial in complete:
        assert trial.values == [trial.user_attrs["metrics"]["wer"], trial.user_attrs["metrics"]["latency_ms"]]
        assert trial.user_attrs["m_latency_ms"] == trial.user_attrs["metrics"]["latency_ms"]
        assert trial.user_attrs["origin"] == "sampler"


def test_searcher_asks_again_past_repeated_points(make_study_yaml):
    """3 of the 4 points scored by an earlier run: asking for 4 scores the last one, whatever the
    sampler proposes first, and asking for more than the space holds is already finished."""
    import json

    from ray.tune.search import Searcher

    from mpsearch.search.optuna_backend import distinct_complete_count, open_study
    from mpsearch.search.ray_backend import StudySearcher

    cfg = StudyConfig.from_yaml(make_study_yaml(sampler="random"))
    space = Study(cfg, progress=False).search_space()
    stored = open_study(cfg, space, heartbeat=False)
    names = [p.name for p in space.parameters()]
    for a, b in [(4, 4), (4, 8), (8, 4)]:
        metrics = {"wer": 0.5, "latency_ms": float(a + b)}
        stored.add_trial(optuna.trial.create_trial(
            params={names[0]: a, names[1]: b}, values=[0.5, float(a + b)],
            distributions={p.name: optuna.distributions.CategoricalDistribution(list(p.choices))
                           for p in space.parameters()},
            user_attrs={"metrics": metrics, "origin": "sampler"}))
    searcher = StudySearcher(cfg, space, trials=4, workers=1, new_trial_budget=1)
    params = searcher.suggest("1")
    assert params == {names[0]: 8, names[1]: 8}
    metrics = {"wer": 0.5, "latency_ms": 16.0}
    searcher.on_trial_complete("1", result={**metrics, "failed": 0, "metrics_json": json.dumps(metrics)})
    assert searcher.suggest("2") == Searcher.FINISHED
    assert distinct_complete_count(stored) == 4
    assert StudySearcher(cfg, space, trials=9, workers=1, new_trial_budget=5).suggest("3") == Searcher.FINISHED


def test_searcher_pickles_with_a_lock_holding_sampler_and_rebuilds_it(make_study_yaml, tmp_path):
    """Ray pickles the search algorithm when the Tuner is made and snapshots it while trials run; the
    sampler (NSGA-II holds a thread lock) and the study are rebuilt, not pickled."""
    import pickle

    from mpsearch.search.optuna_backend import open_study
    from mpsearch.search.ray_backend import StudySearcher

    cfg = StudyConfig.from_yaml(make_study_yaml(sampler="nsga2"))
    space = Study(cfg, progress=False).search_space()
    open_study(cfg, space, heartbeat=False)
    searcher = StudySearcher(cfg, space, trials=3, workers=1, new_trial_budget=5)
    params = searcher.suggest("1")  # a trial in flight: its Optuna trial holds the study and the sampler
    assert set(params) == {p.name for p in space.parameters()}

    copy = pickle.loads(pickle.dumps(searcher))
    assert copy._ot_study.study_name == "tiny" and copy._ot_trials == {}
    assert type(copy._sampler) is type(searcher._sampler)
    searcher.save(str(tmp_path / "searcher.pkl"))
    restored = StudySearcher.__new__(StudySearcher)
    restored.restore(str(tmp_path / "searcher.pkl"))
    assert restored._budget.target == 3 and restored._ot_study.study_name == "tiny"
