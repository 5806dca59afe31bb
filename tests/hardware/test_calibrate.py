import itertools
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from mpsearch.errors import ConfigError
from mpsearch.hardware.calibrate import calibrate, predict_us
from mpsearch.hardware.profile import load_profile

TRUE = {"macs_per_cycle": 64.0, "offchip_bandwidth_gbps": 8.0, "activation_bandwidth_gbps": 0.5, "layer_overhead_us": 3.0}
MEASUREMENTS_CSV = Path(__file__).resolve().parents[2] / "analysis" / "results" / "cpu_int8_measurements.csv"


def synthetic(profile):
    # Shapes and batches where each roofline term dominates somewhere, so every rate is identifiable.
    rows = [(i, o, 8, b, 1.0) for i, o, b in itertools.product((64, 256, 1024), (64, 256, 1024), (1, 4, 16, 64))]
    df = pd.DataFrame(rows, columns=["in_features", "out_features", "weight_bits", "batch", "time_us"])
    df["time_us"] = predict_us(df, profile)
    return df


def test_recovers_known_parameters(make_profile):
    truth = make_profile(clock_mhz=1000, **TRUE)
    wrong = make_profile(clock_mhz=1000, macs_per_cycle=200.0, offchip_bandwidth_gbps=3.0,
                         activation_bandwidth_gbps=2.0, layer_overhead_us=10.0)
    fitted, report = calibrate(synthetic(truth), wrong)
    for name, value in TRUE.items():
        assert getattr(fitted, name) == pytest.approx(value, rel=0.05), name
    assert report.median_rel_error < 0.01 and report.worst_rel_error < 0.05
    assert set(report.parameters) == set(TRUE)
    assert "Calibrated on 36 measurements" in fitted.description
    assert fitted.supported_weight_bits == wrong.supported_weight_bits


def test_only_the_named_parameters_move(make_profile):
    truth = make_profile(clock_mhz=1000, **TRUE)
    base = make_profile(clock_mhz=1000, **{**TRUE, "layer_overhead_us": 9.0})
    fitted, report = calibrate(synthetic(truth), base, free=["layer_overhead_us"])
    assert fitted.layer_overhead_us == pytest.approx(3.0, rel=0.05)
    assert fitted.macs_per_cycle == base.macs_per_cycle
    assert list(report.parameters) == ["layer_overhead_us"]


def test_bad_measurements_are_named(make_profile):
    df = synthetic(make_profile())
    with pytest.raises(ConfigError, match=r"missing column\(s\) \['batch'\]"):
        calibrate(df.drop(columns="batch"), make_profile())
    negative = df.copy()
    negative.loc[3, "time_us"] = -1.0
    with pytest.raises(ConfigError, match=r"'time_us' must be a number > 0; got -1.0 \(row 4\)"):
        calibrate(negative, make_profile())
    with pytest.raises(ConfigError, match=r"weight_bits \[8\] are not supported"):
        calibrate(df, make_profile(supported_weight_bits=[4]))
    with pytest.raises(ConfigError, match="Cannot fit 'clock_mhz'"):
        calibrate(df, make_profile(), free=["clock_mhz"])


def test_shipped_cpu_profile_matches_the_shipped_measurements():
    measured = pd.read_csv(MEASUREMENTS_CSV)
    assert (measured["weight_bits"] == 8).all()
    rel = np.abs(predict_us(measured, load_profile("cpu-int8")) / measured["time_us"] - 1)
    assert np.median(rel) < 0.10 and rel.max() < 0.30
