import itertools
import math

import numpy as np
import optuna
import pytest

from mpsearch.config import StudyConfig
from mpsearch.errors import ConfigError, MpsearchError
from mpsearch.quant import Policy, QuantConfig
from mpsearch.search.front_text import format_front_table
from mpsearch.search.pareto import (
    FrontTable,
    hypervolume,
    load_front_table,
    non_dominated,
    resolve_reference_point,
)
from mpsearch.search.storage import open_storage

optuna.logging.set_verbosity(optuna.logging.WARNING)

SITES = ["encoder.lstm", "joiner.out"]
DISTRIBUTIONS = {"encoder.weight_bits": optuna.distributions.CategoricalDistribution([2, 4, 8]),
                 "joiner.weight_bits": optuna.distributions.CategoricalDistribution([4, 8]),
                 "encoder.method": optuna.distributions.CategoricalDistribution(["uniform", "gq"])}


def study_config(tmp_path, **search) -> StudyConfig:
    return StudyConfig.from_dict({"name": "front", "output_dir": str(tmp_path / "study"), "model": {"name": "rnnt"},
                                  "search": search})


def add_trial(study, values, *, enc=8, joint=8, method="uniform", origin="sampler", state=None, metrics=None):
    params = {"encoder.weight_bits": enc, "joiner.weight_bits": joint, "encoder.method": method}
    policy = Policy({"encoder.lstm": QuantConfig(weight_bits=enc, method=method),
                     "joiner.out": QuantConfig(weight_bits=joint)}, SITES)
    state = state or optuna.trial.TrialState.COMPLETE
    attrs = {"origin": origin, "policy": policy.to_dict()}
    if state == optuna.trial.TrialState.COMPLETE:
        attrs["metrics"] = {"wer": values[0], "test_wer": values[0] + 0.01, "latency_ms": values[1],
                            "size_bytes": 1000 * (enc + joint), "avg_weight_bits": (enc + joint) / 2, **(metrics or {})}
    else:
        attrs["fail_reason"] = "loss became NaN"
    study.add_trial(optuna.trial.create_trial(
        params=params, distributions=DISTRIBUTIONS, state=state, user_attrs=attrs,
        values=list(values) if state == optuna.trial.TrialState.COMPLETE else None))


def make_study(cfg, n_objectives=2):
    return optuna.create_study(storage=open_storage(cfg), study_name=cfg.name, directions=["minimize"] * n_objectives)


def brute_force_hypervolume(points, reference):
    """Exact volume by summing the cells of the grid every point coordinate cuts space into."""
    points = [p for p in points if all(c < r for c, r in zip(p, reference))]
    axes = [sorted({p[j] for p in points} | {reference[j]}) for j in range(len(reference))]
    volume = 0.0
    for cell in itertools.product(*(range(len(a) - 1) for a in axes)):
        corner = [axes[j][i] for j, i in enumerate(cell)]
        if any(all(p[j] <= corner[j] for j in range(len(corner))) for p in points):
            volume += math.prod(axes[j][i + 1] - axes[j][i] for j, i in enumerate(cell))
    return volume


def grid_count_hypervolume(points, reference):
    """Unit cells of an integer grid dominated by some point (points and reference on the grid)."""
    count = 0
    for cell in itertools.product(*(range(r) for r in reference)):
        if any(all(p[j] <= cell[j] for j in range(len(cell))) for p in points):
            count += 1
    return count


# --- geometry ---------------------------------------------------------------------------------------------
def test_non_dominated_keeps_ties_and_drops_weakly_dominated_points():
    points = [(1, 3), (2, 2), (2, 2), (1, 4), (3, 3), (3, 1), (0.5, 5)]
    assert non_dominated(points).tolist() == [True, True, True, False, False, True, True]
    assert non_dominated([]).tolist() == []


def test_hypervolume_of_a_staircase():
    assert hypervolume([(1, 3), (2, 2), (3, 1)], (4, 4)) == pytest.approx(6.0)
    assert hypervolume([(1, 3), (2, 2), (3, 1), (3, 3), (2, 2)], (4, 4)) == pytest.approx(6.0)
    assert hypervolume([(1, 1, 1)], (2, 3, 4)) == pytest.approx(1 * 2 * 3)


def test_points_beyond_the_reference_contribute_nothing():
    assert hypervolume([(0.5, 5.0), (5.0, 0.5), (4.0, 1.0)], (4, 4)) == 0.0
    assert hypervolume([(0.5, 5.0), (1.0, 1.0)], (4, 4)) == pytest.approx(9.0)
    assert hypervolume([], (1, 1)) == 0.0


@pytest.mark.parametrize("dims,n", [(2, 9), (3, 8), (4, 6)])
def test_hypervolume_matches_grid_counting_on_random_integer_sets(dims, n):
    rng = np.random.default_rng(dims)
    for _ in range(15):
        points = rng.integers(0, 6, size=(n, dims))
        reference = tuple(int(v) for v in rng.integers(3, 7, size=dims))
        assert hypervolume(points, reference) == pytest.approx(grid_count_hypervolume(points.tolist(), reference))


@pytest.mark.parametrize("dims", [2, 3, 4])
def test_hypervolume_matches_brute_force_on_random_real_sets(dims):
    rng = np.random.default_rng(10 + dims)
    for _ in range(10):
        points = rng.random((7, dims))
        reference = (0.9,) * dims
        assert hypervolume(points, reference) == pytest.approx(brute_force_hypervolume(points.tolist(), reference))


# --- reference point --------------------------------------------------------------------------------------
def test_reference_point_defaults_given_values_and_fallback():
    values = np.array([[0.2, 10.0, 5.0], [0.4, 4.0, 9.0], [0.3, 6.0, 7.0]])
    ref = resolve_reference_point(["wer", "latency_ms", "size_bytes"], values, ["sampler", "uniform-8", "sampler"])
    assert ref.values == pytest.approx((1.0, 4.4, 9.9))
    assert ref.sources == ("error rate", "1.1 x uniform-8", "1.1 x uniform-8")
    ref = resolve_reference_point(["wer", "latency_ms", "size_bytes"], values, ["sampler"] * 3,
                                  {"wer": 0.5, "size_bytes": 20.0})
    assert ref.values == pytest.approx((0.5, 11.0, 20.0))
    assert ref.sources[1] == "1.1 x worst trial" and ref.sources[2] == "search.reference_point"
    assert "latency_ms=11 (1.1 x worst trial)" in ref.describe()


# --- the table from a stored study ------------------------------------------------------------------------
@pytest.fixture
def stored(tmp_path):
    cfg = study_config(tmp_path)
    study = make_study(cfg)
    add_trial(study, (0.30, 10.0), origin="uniform-8")                           # 0: front (best WER)
    add_trial(study, (0.35, 5.0), enc=4, joint=8, origin="ilp-0")                # 1: front
    add_trial(study, (0.40, 6.0), enc=4, joint=4, method="gq")                   # 2: dominated by 1
    add_trial(study, (0.60, 2.0), enc=2, joint=4, origin="uniform-2")            # 3: front (fastest)
    add_trial(study, (0.9, 9.0), state=optuna.trial.TrialState.FAIL, enc=2, joint=8)  # 4: failed
    add_trial(study, (0.35, 5.0), enc=4, joint=8, origin="ilp-0")                # 5: repeats trial 1
    add_trial(study, (1.2, 1.0), enc=2, joint=4, method="gq")                    # 6: front, beyond the ref
    return cfg, study


def test_front_table_marks_the_front_and_counts_trials(stored):
    cfg, study = stored
    table = FrontTable.from_study(study, cfg.search.objectives)
    assert table.front_numbers() == [0, 1, 3, 6]
    assert list(table.frame["trial"]) == [0, 1, 2, 3, 6]                  # sorted by WER; trial 5 shown once
    assert table.duplicates == {1: [5]}
    assert table.states == {"complete": 6, "fail": 1}
    assert table.reference.as_dict() == pytest.approx({"wer": 1.0, "latency_ms": 11.0})
    expected = hypervolume([(0.30, 10.0), (0.35, 5.0), (0.60, 2.0)], (1.0, 11.0))
    assert table.hypervolume == pytest.approx(expected)
    assert table.hypervolume == pytest.approx(0.05 * 1.0 + 0.25 * 6.0 + 0.40 * 9.0)


def test_a_fixed_group_field_comes_from_that_groups_sites_when_the_study_stored_them(stored):
    cfg, study = stored
    study.set_user_attr("space", [{"group": "encoder", "site_names": ["encoder.lstm"]},
                                  {"group": "joiner", "site_names": ["joiner.out"]}])
    table = FrontTable.from_study(study, cfg.search.objectives)
    assert table.frame.set_index("trial").loc[2, "joiner.method"] == "uniform"


def test_front_table_columns_and_group_values(stored):
    cfg, study = stored
    table = FrontTable.from_study(study, cfg.search.objectives)
    assert list(table.frame.columns) == ["trial", "origin", "wer", "test_wer", "latency_ms", "size_bytes",
                                         "avg_weight_bits", "encoder.weight_bits", "encoder.method",
                                         "joiner.weight_bits", "joiner.method", "on_front"]
    row = table.frame.set_index("trial").loc[2]
    assert (row["encoder.weight_bits"], row["joiner.weight_bits"], row["encoder.method"]) == (4, 4, "gq")
    # joiner.method is not searched: it comes from the stored policy, which cannot tell groups apart.
    assert row["joiner.method"] == "gq/uniform"
    assert table.frame.set_index("trial").loc[0, "joiner.method"] == "uniform"
    assert row["test_wer"] == pytest.approx(0.41) and row["size_bytes"] == 8000 and not row["on_front"]
    assert table.row(5)["on_front"] and table.row(2)["on_front"] is False
    summary = table.summary()
    assert summary["front"] == [0, 1, 3, 6] and summary["trials"] == {"complete": 6, "failed": 1}
    assert summary["reference_point"] == pytest.approx({"wer": 1.0, "latency_ms": 11.0})
    assert summary["duplicates"] == {"1": [5]}
    text = format_front_table(table)
    assert "uniform-8" in text and "ilp-0" in text and "\n    2 " not in text
    assert "gq" in format_front_table(table, rows="all")


def test_reference_point_from_the_config_and_three_objectives(tmp_path):
    cfg = study_config(tmp_path, objectives=["wer", "latency_ms", "size_bytes"],
                       reference_point={"latency_ms": 20.0, "size_bytes": 20000})
    study = make_study(cfg, n_objectives=3)
    add_trial(study, (0.3, 10.0, 16000))
    add_trial(study, (0.4, 5.0, 12000), enc=4)
    add_trial(study, (0.5, 12.0, 8000), enc=2, joint=4)
    add_trial(study, (0.5, 12.0, 16000), enc=2, joint=8)     # dominated by the one before
    table = FrontTable.from_study(study, cfg.search.objectives, cfg.search.reference_point)
    assert table.front_numbers() == [0, 1, 2]
    points = [(0.3, 10.0, 16000), (0.4, 5.0, 12000), (0.5, 12.0, 8000)]
    assert table.hypervolume == pytest.approx(brute_force_hypervolume(points, (1.0, 20.0, 20000)))


def test_objectives_must_match_the_stored_study(stored, tmp_path):
    _, study = stored
    with pytest.raises(MpsearchError, match="stores 2 objective"):
        FrontTable.from_study(study, ("wer", "latency_ms", "size_bytes"))


def test_load_front_table_errors_without_storage_or_complete_trials(tmp_path):
    cfg = study_config(tmp_path)
    with pytest.raises(ConfigError, match="No trials stored for study 'front'"):
        load_front_table(cfg)
    study = make_study(cfg)
    add_trial(study, (0, 0), state=optuna.trial.TrialState.FAIL)
    with pytest.raises(MpsearchError, match="No complete trial.*1 failed; trial 0: loss became NaN"):
        load_front_table(cfg)


def test_load_front_table_reads_the_stored_study(stored):
    cfg, _ = stored
    table = load_front_table(cfg)
    assert table.front_numbers() == [0, 1, 3, 6]
    assert table.policy(1) == Policy({"encoder.lstm": QuantConfig(weight_bits=4),
                                      "joiner.out": QuantConfig(weight_bits=8)}, SITES)


# --- confidence intervals -----------------------------------------------------------------------------------
def _record(errors, words, digest="refs-1"):
    return {"utterances": {"split": "dev", "references": digest, "errors": errors, "words": words},
            "wer_ci_low": 0.0, "wer_ci_high": 1.0}


def test_front_table_pairs_each_trial_with_uniform_8_bit_on_the_same_utterances(tmp_path):
    from mpsearch.eval.bootstrap import paired_delta
    from mpsearch.search.front_text import interval_summary, not_worse_than_uniform8

    cfg = study_config(tmp_path)
    study = make_study(cfg)
    words = [5, 4, 6, 3, 7, 5]
    base = [0, 1, 0, 0, 1, 0]
    add_trial(study, (2 / 30, 4.0), origin="uniform-8", metrics=_record(base, words))
    add_trial(study, (2 / 30, 2.0), enc=4, origin="uniform-4", metrics=_record(base, words))   # same errors
    worse = [3, 3, 2, 2, 3, 3]
    add_trial(study, (16 / 30, 1.0), enc=2, joint=4, origin="uniform-2", metrics=_record(worse, words))
    add_trial(study, (0.2, 1.5), enc=2, method="gq", metrics=_record([0, 1, 0], [5, 4, 6], "other"))  # other utterances
    frame = FrontTable.from_study(study, ("wer", "latency_ms")).frame.set_index("origin")
    assert frame.loc["uniform-8", ["delta_wer_vs_u8", "delta_ci_low", "delta_ci_high"]].tolist() == [0.0, 0.0, 0.0]
    assert frame.loc["uniform-4", ["delta_wer_vs_u8", "delta_ci_low", "delta_ci_high"]].tolist() == [0.0, 0.0, 0.0]
    expected = paired_delta(worse, base, words)
    assert frame.loc["uniform-2", "delta_wer_vs_u8"] == pytest.approx(expected.value)
    assert frame.loc["uniform-2", "delta_ci_low"] == expected.low > 0
    assert math.isnan(frame.loc["sampler", "delta_wer_vs_u8"])  # not paired: scored other utterances
    table = FrontTable.from_study(study, ("wer", "latency_ms"))
    assert not_worse_than_uniform8(table.frame) == [1]
    summary = " ".join(interval_summary(table))
    assert "1 (uniform-4)" in summary and "not significantly worse" in summary
    text = format_front_table(table, rows="all")
    assert "wer_95ci" in text and "+0.0000 [0.0000, 0.0000]" in text and "delta_ci_low" not in text


def test_front_table_without_records_has_no_interval_columns(stored):
    table = load_front_table(stored[0])
    assert not any(c.startswith(("wer_ci", "delta")) for c in table.frame.columns)
