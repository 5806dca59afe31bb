import optuna
import pytest

from mpsearch.config import StudyConfig
from mpsearch.errors import MpsearchError
from mpsearch.quant import Policy, QuantConfig
from mpsearch.search.pareto import FrontTable
from mpsearch.search.pick import by_number, fastest_within_wer, knee, lowest_wer_within_latency, pick_trial
from mpsearch.search.storage import open_storage

optuna.logging.set_verbosity(optuna.logging.WARNING)

SITES = ["encoder.lstm", "joiner.out"]
BITS = optuna.distributions.CategoricalDistribution([2, 3, 4, 5, 6, 8])
COMPLETE, FAIL, RUNNING = optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.FAIL, optuna.trial.TrialState.RUNNING


def make_table(tmp_path, points, states=None, objectives=("wer", "latency_ms")) -> FrontTable:
    """One trial per (wer, latency_ms) point; trial i stores encoder bits 2 + i % 7 so policies differ."""
    cfg = StudyConfig.from_dict({"name": "pick", "output_dir": str(tmp_path / "study"), "model": {"name": "rnnt"},
                                 "search": {"objectives": list(objectives)}})
    study = optuna.create_study(storage=open_storage(cfg), study_name=cfg.name,
                                directions=["minimize"] * len(objectives))
    for i, values in enumerate(points):
        bits = [2, 3, 4, 5, 6, 8][i % 6]
        state = (states or {}).get(i, COMPLETE)
        policy = Policy({"encoder.lstm": QuantConfig(weight_bits=bits), "joiner.out": QuantConfig()}, SITES)
        attrs = {"origin": "sampler", "policy": policy.to_dict()}
        if state == COMPLETE:
            attrs["metrics"] = {"wer": values[0], "latency_ms": values[1]}
        elif state == FAIL:
            attrs["fail_reason"] = "loss became NaN at step 3"
        study.add_trial(optuna.trial.create_trial(
            params={"encoder.weight_bits": bits}, distributions={"encoder.weight_bits": BITS}, state=state,
            user_attrs=attrs, values=list(values) if state == COMPLETE else None))
    return FrontTable.from_study(study, cfg.search.objectives)


def scaled(a, b):
    """A front point in WER and latency whose position in [0, 1]^2 is (a, b)."""
    return (0.10 + 0.20 * a, 1.0 + 9.0 * b)


def test_knee_is_the_point_farthest_inside_the_line_between_the_extremes(tmp_path):
    # Scaled distances to the line x + y = 1: trial 1 0.42, trial 2 0.28; trial 4 is dominated.
    points = [scaled(0, 1), scaled(0.1, 0.3), scaled(0.5, 0.1), scaled(1, 0), scaled(0.3, 0.4)]
    table = make_table(tmp_path, points)
    assert table.front_numbers() == [0, 1, 2, 3]
    picked = knee(table)
    assert picked.number == 1
    assert picked.policy.resolve("encoder.lstm").weight_bits == 3
    assert "knee" in picked.reason and picked.row["wer"] == pytest.approx(0.12)


def test_knee_of_a_concave_front_or_of_one_point_is_the_best_first_objective(tmp_path):
    concave = [scaled(0, 1), scaled(0.8, 0.8), scaled(1, 0)]      # every inner point bulges away from the ideal
    assert knee(make_table(tmp_path / "a", concave)).number == 0
    single = [(0.2, 3.0), (0.3, 4.0), (0.2, 3.5)]
    assert knee(make_table(tmp_path / "b", single)).number == 0


def test_lowest_wer_within_a_latency_limit(tmp_path):
    table = make_table(tmp_path, [(0.10, 9.0), (0.15, 4.0), (0.20, 2.0), (0.30, 1.0), (0.12, 4.0)])
    assert lowest_wer_within_latency(table, 4.0).number == 4              # the limit itself is allowed
    assert lowest_wer_within_latency(table, 3.9).number == 2
    assert lowest_wer_within_latency(table, 100).number == 0
    with pytest.raises(MpsearchError, match=r"latency_ms <= 0.5 ms; the lowest is 1 ms \(trial 3\)"):
        lowest_wer_within_latency(table, 0.5)


def test_fastest_within_a_wer_limit(tmp_path):
    table = make_table(tmp_path, [(0.10, 9.0), (0.15, 4.0), (0.20, 2.0), (0.30, 1.0), (0.15, 3.0)])
    assert fastest_within_wer(table, 0.15).number == 4
    assert fastest_within_wer(table, 0.25).number == 2
    with pytest.raises(MpsearchError, match=r"wer <= 0.05; the lowest is 0.1 \(trial 0\)"):
        fastest_within_wer(table, 0.05)


def test_by_number_needs_a_complete_trial(tmp_path):
    table = make_table(tmp_path, [(0.1, 5.0), (0.2, 2.0), (0.9, 9.0), (0.5, 5.0)], states={2: FAIL, 3: RUNNING})
    picked = by_number(table, 1)
    assert picked.number == 1 and picked.row["latency_ms"] == 2.0
    assert picked.policy == Policy({"encoder.lstm": QuantConfig(weight_bits=3), "joiner.out": QuantConfig()}, SITES)
    with pytest.raises(MpsearchError, match=r"Trial 7 is not in study 'pick' \(trials 0-3\); the front holds "
                                            r"trials 0, 1"):
        by_number(table, 7)
    with pytest.raises(MpsearchError, match=r"Trial 2 failed \(loss became NaN at step 3\); pick a COMPLETE"):
        by_number(table, 2)
    with pytest.raises(MpsearchError, match="Trial 3 is still running"):
        by_number(table, 3)


def test_pick_trial_dispatches_and_wants_exactly_one_choice(tmp_path):
    table = make_table(tmp_path, [scaled(0, 1), scaled(0.1, 0.3), scaled(1, 0)])
    assert pick_trial(table, trial=2).number == 2
    assert pick_trial(table, pick="knee").number == 1
    assert pick_trial(table, max_latency_ms=1.0).number == 2
    assert pick_trial(table, max_wer=0.1).number == 0
    with pytest.raises(MpsearchError, match="exactly one way"):
        pick_trial(table, trial=1, max_wer=0.2)
    with pytest.raises(MpsearchError, match="Unknown pick 'elbow'; valid choices: knee"):
        pick_trial(table, pick="elbow")


def test_knee_with_three_objectives(tmp_path):
    points = [(0.10, 10.0, 5.0), (0.12, 4.0, 5.0), (0.30, 1.0, 5.0), (0.5, 11.0, 1.0)]
    table = make_table(tmp_path, points, objectives=("wer", "latency_ms", "size_bytes"))
    assert table.front_numbers() == [0, 1, 2, 3]
    assert knee(table).number == 1
