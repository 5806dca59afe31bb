"""Fit a profile's free rates to measured layer latencies, and report how well the roofline fits.

A measurement is one Linear layer (in_features x out_features, weight_bits) run on `batch` frames in
one step, with its weights read from off-chip memory (the measuring script cycles through more weights
than fit on chip): time_us = max(compute, weight read, activation traffic) + layer_overhead_us.
Each of the first three terms is inversely proportional to one rate of the profile (macs_per_cycle,
offchip_bandwidth_gbps, activation_bandwidth_gbps), so the fit scales the terms the model computes at
the base profile. It minimises the log of predicted over measured time (relative error, so small layers
count as much as big ones) with scipy's least_squares from several starts.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import pandas as pd

from mpsearch.errors import ConfigError
from mpsearch.hardware.latency import RooflineLatencyModel
from mpsearch.hardware.profile import HardwareProfile
from mpsearch.quant.config import QuantConfig
from mpsearch.quant.sites import Site

log = logging.getLogger(__name__)

MEASUREMENT_COLUMNS = ("in_features", "out_features", "weight_bits", "batch", "time_us")
FITTABLE = ("macs_per_cycle", "offchip_bandwidth_gbps", "activation_bandwidth_gbps", "layer_overhead_us")
_SIGNIFICANT_DIGITS = 4
# Log-space starting points: the base profile, everything 5x lower and higher, then random restarts,
# because the max() in the roofline leaves local minima when a term never dominates from the start.
_RANDOM_STARTS = 6
_START_SPREAD = math.log(10.0)


@dataclass(frozen=True)
class FitReport:
    """How the fitted profile predicts the measurements: relative error |predicted / measured - 1|."""

    parameters: dict[str, float]
    initial: dict[str, float]
    n_measurements: int
    median_rel_error: float
    worst_rel_error: float
    worst_case: dict[str, Any]

    def summary(self) -> str:
        w = self.worst_case
        fitted = ", ".join(f"{k}={v:g}" for k, v in self.parameters.items())
        return (f"fit over {self.n_measurements} measurements: median relative error "
                f"{self.median_rel_error:.1%}, worst {self.worst_rel_error:.1%} "
                f"({w['in_features']}x{w['out_features']}, batch {w['batch']}: measured {w['time_us']:.1f} us, "
                f"predicted {w['predicted_us']:.1f} us); fitted {fitted}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def check_measurements(measurements: pd.DataFrame, profile: HardwareProfile,
                       source: str = "measurements") -> pd.DataFrame:
    """The measurement table with its columns checked; ConfigError naming the column and row otherwise."""
    missing = [c for c in MEASUREMENT_COLUMNS if c not in measurements.columns]
    if missing:
        raise ConfigError(f"{source}: missing column(s) {missing}; a measurement table has columns "
                          f"{', '.join(MEASUREMENT_COLUMNS)}.")
    if len(measurements) == 0:
        raise ConfigError(f"{source}: no measurements; run analysis/measure_cpu_int8.py to make some.")
    df = measurements[list(MEASUREMENT_COLUMNS)].reset_index(drop=True)
    for column in MEASUREMENT_COLUMNS:
        values = pd.to_numeric(df[column], errors="coerce")
        bad = np.flatnonzero(~(values > 0))
        if bad.size:
            raise ConfigError(f"{source}: '{column}' must be a number > 0; got {df[column].tolist()[bad[0]]!r} "
                              f"(row {bad[0] + 1}).")
        df[column] = values
    unsupported = sorted(set(df["weight_bits"].astype(int)) - set(profile.supported_weight_bits))
    if unsupported:
        raise ConfigError(f"{source}: weight_bits {unsupported} are not supported by profile '{profile.name}' "
                          f"(supported: {profile.supported_weight_bits}).")
    return df


def _terms(df: pd.DataFrame, profile: HardwareProfile) -> np.ndarray:
    model = RooflineLatencyModel(profile)
    rows = []
    for i, r in enumerate(df.itertuples(index=False)):
        site = Site(f"measurement{i}", "", "weight", "linear", (int(r.out_features), int(r.in_features)),
                    int(r.out_features) * int(r.in_features))
        cost = model.step_cost(site, QuantConfig(weight_bits=int(r.weight_bits), act_bits=None), int(r.batch))
        rows.append((cost.compute_us, cost.weight_read_us, cost.activation_us))
    return np.asarray(rows, dtype=np.float64)


def predict_us(measurements: pd.DataFrame, profile: HardwareProfile) -> np.ndarray:
    """Modelled time_us of each measured case under `profile` (weights read off chip)."""
    df = check_measurements(measurements, profile)
    return _terms(df, profile).max(axis=1) + profile.layer_overhead_us


def _rate(profile: HardwareProfile, name: str) -> float | None:
    if name == "activation_bandwidth_gbps":
        return profile.activation_bandwidth_gbps or profile.onchip_bandwidth_gbps
    return getattr(profile, name)


def _default_free(profile: HardwareProfile) -> list[str]:
    return [name for name in FITTABLE if _rate(profile, name) is not None]


def calibrate(measurements: pd.DataFrame, base_profile: HardwareProfile, free: Sequence[str] | None = None,
              source: str = "measurements") -> tuple[HardwareProfile, FitReport]:
    """Fit `free` parameters of `base_profile` to measured latencies; return the new profile and the fit.

    `free` defaults to every name in FITTABLE the base profile gives a starting value (activation
    bandwidth only when the profile has one); the others keep their base values.
    """
    from scipy.optimize import least_squares

    df = check_measurements(measurements, base_profile, source)
    free = list(free) if free is not None else _default_free(base_profile)
    for name in free:
        if name not in FITTABLE:
            raise ConfigError(f"Cannot fit '{name}'; fittable parameters: {', '.join(FITTABLE)}.")
        if _rate(base_profile, name) is None:
            raise ConfigError(f"Cannot fit '{name}': base profile '{base_profile.name}' has no starting value; "
                              "set one in the base profile.")

    measured = df["time_us"].to_numpy(dtype=np.float64)
    base_terms = _terms(df, base_profile)
    base = {name: _rate(base_profile, name) for name in FITTABLE}
    # Overhead may truly be zero; the floor keeps its logarithm finite.
    base["layer_overhead_us"] = max(base_profile.layer_overhead_us, 1e-3)
    index = {name: i for i, name in enumerate(free)}

    def predict(x: np.ndarray) -> np.ndarray:
        value = {name: (math.exp(x[index[name]]) if name in index else base[name]) for name in FITTABLE}
        scale = np.array([base[n] / value[n] if base[n] else 0.0 for n in FITTABLE[:3]])
        overhead = value["layer_overhead_us"] if "layer_overhead_us" in index else base_profile.layer_overhead_us
        return (base_terms * scale).max(axis=1) + overhead

    def residuals(x: np.ndarray) -> np.ndarray:
        return np.log(predict(x)) - np.log(measured)

    x0 = np.log([base[name] for name in free])
    rng = np.random.default_rng(0)
    starts = [x0, x0 - math.log(5.0), x0 + math.log(5.0)]
    starts += [x0 + rng.uniform(-_START_SPREAD, _START_SPREAD, size=x0.shape) for _ in range(_RANDOM_STARTS)]
    best = min((least_squares(residuals, s, method="trf", x_scale=1.0) for s in starts), key=lambda r: r.cost)

    fitted_values = {name: float(f"{math.exp(best.x[index[name]]):.{_SIGNIFICANT_DIGITS}g}") for name in free}
    fitted = _with_parameters(base_profile, fitted_values)
    predicted = predict_us(df, fitted)
    rel = np.abs(predicted / measured - 1.0)
    worst = int(np.argmax(rel))
    worst_case = {k: (int(v) if k != "time_us" else float(v)) for k, v in df.iloc[worst].items()}
    worst_case["predicted_us"] = float(predicted[worst])
    report = FitReport(parameters=fitted_values, initial={name: base[name] for name in free},
                       n_measurements=len(df), median_rel_error=float(np.median(rel)),
                       worst_rel_error=float(rel[worst]), worst_case=worst_case)
    note = (f"Calibrated on {report.n_measurements} measurements: median relative error "
            f"{report.median_rel_error:.1%}, worst {report.worst_rel_error:.1%}.")
    fitted = fitted.model_copy(update={"description": f"{_uncalibrated(base_profile.description)} {note}".strip()})
    log.debug("%s", report.summary())
    return fitted, report


def _uncalibrated(description: str) -> str:
    return description.split("Calibrated on ")[0].strip()


def _with_parameters(profile: HardwareProfile, values: dict[str, float]) -> HardwareProfile:
    data = {**profile.to_dict(), **values}
    offchip, onchip = data["offchip_bandwidth_gbps"], data.get("onchip_bandwidth_gbps")
    if onchip is not None and onchip < offchip:
        log.warning("fitted offchip_bandwidth_gbps %g exceeds the base onchip_bandwidth_gbps %g; raising the "
                    "on-chip bandwidth to match", offchip, onchip)
        data["onchip_bandwidth_gbps"] = offchip
    return HardwareProfile.from_dict(data, source=f"calibrated {profile.name}")
