import json
import os
import runpy
import subprocess
import sys
from pathlib import Path

import optuna
import pandas as pd
import pytest
from optuna.distributions import CategoricalDistribution
from optuna.trial import TrialState, create_trial

from mpsearch.cli.main import main
from mpsearch.config import StudyConfig
from mpsearch.search.pareto import FrontTable
from mpsearch.sensitivity.report import SensitivityReport

ANALYSIS = Path(__file__).resolve().parents[2] / "analysis"
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@pytest.fixture
def load_script(monkeypatch):
    """The namespace of analysis/<name>.py, loaded as a module (its `main` not yet called)."""
    monkeypatch.syspath_prepend(str(ANALYSIS))
    return lambda name: runpy.run_path(str(ANALYSIS / f"{name}.py"), run_name=f"analysis_{name}")


def assert_png(path: Path) -> None:
    assert path.read_bytes()[:8] == PNG_SIGNATURE, path


def test_scripts_on_a_searched_study(make_study, load_script, tmp_path):
    path = make_study()
    assert main(["search", str(path), "--no-progress"]) == 0
    cfg = StudyConfig.from_yaml(path)
    summary = json.loads((cfg.study_dir / "front.json").read_text())
    out = tmp_path / "analysis"

    assert load_script("plot_front")["main"](["--study", str(path), "--out", str(out)]) == 0
    for name in ("front.png", "front_bits.png"):
        assert_png(out / name)
    front = pd.read_csv(out / "front.csv")
    trials = pd.read_csv(out / "trials.csv")
    assert sorted(front["trial"]) == sorted(summary["front"])
    assert front["on_front"].all() and list(front["latency_ms"]) == sorted(front["latency_ms"])
    assert len(trials) == summary["distinct_points"]
    for column in ("trial", "origin", "wer", "latency_ms", "encoder.weight_bits", "rest.weight_bits", "on_front"):
        assert column in front.columns and column in trials.columns

    assert load_script("plot_sensitivity")["main"](["--study", str(path), "--out", str(out)]) == 0
    for name in ("sensitivity_traces.png", "omega_heatmap.png"):
        assert_png(out / name)
    report = SensitivityReport.load(cfg.study_dir / "sensitivity.json")
    sensitivity = pd.read_csv(out / "sensitivity.csv")
    assert list(sensitivity["site"]) == report.sites
    assert list(sensitivity.columns) == ["site", "numel", "trace", "stderr", "rel_stderr", "probes",
                                         "omega_uniform_4", "omega_uniform_8"]

    # As a user runs it: a script beside its helper module, in a fresh interpreter.
    done = subprocess.run([sys.executable, str(ANALYSIS / "plot_hypervolume.py"), "--study", str(path),
                           "--out", str(out)], check=False, capture_output=True, text=True,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr
    assert f"wrote {out / 'hypervolume.csv'}" in done.stdout
    assert_png(out / "hypervolume.png")
    history = pd.read_csv(out / "hypervolume.csv")
    assert list(history.columns) == ["trial", "origin", "wer", "latency_ms", "front_size", "hypervolume"]
    assert len(history) == summary["trials"]["complete"]
    assert list(history["trial"]) == sorted(history["trial"])
    assert history["hypervolume"].iloc[-1] == pytest.approx(summary["hypervolume"])


def test_scripts_name_the_missing_stage(make_study, load_script, tmp_path, capsys):
    path = make_study()
    out = str(tmp_path / "analysis")
    assert load_script("plot_front")["main"](["--study", str(path), "--out", out]) == 2
    assert "run `mpsearch search`" in capsys.readouterr().err
    assert load_script("plot_sensitivity")["main"](["--study", str(path), "--out", out]) == 2
    assert "`mpsearch sensitivity`" in capsys.readouterr().err


def test_hypervolume_history_grows_to_the_fronts(load_script):
    study = optuna.create_study(directions=["minimize", "minimize"])
    points = [(0.5, 3.0, "uniform-8"), (0.9, 1.0, "uniform-4"), (0.6, 2.5, "sampler"), (0.4, 2.8, "sampler"),
              (0.7, 2.9, "sampler")]
    for wer, latency, origin in points:
        study.add_trial(create_trial(values=[wer, latency], params={"g.weight_bits": 4},
                                     distributions={"g.weight_bits": CategoricalDistribution([4, 8])},
                                     user_attrs={"origin": origin}))
    study.add_trial(create_trial(state=TrialState.FAIL, params={}, distributions={}))
    table = FrontTable.from_study(study, ("wer", "latency_ms"))
    history = load_script("plot_hypervolume")["hypervolume_history"](table)
    assert list(history["trial"]) == [0, 1, 2, 3, 4]
    assert list(history["front_size"]) == [1, 2, 3, 3, 3]
    volumes = list(history["hypervolume"])
    assert volumes == sorted(volumes) and volumes[0] > 0
    assert volumes[-1] == pytest.approx(table.hypervolume)
    assert volumes[-1] == volumes[-2]  # trial 4 is dominated: it adds nothing


def test_plot_methods_draws_the_method_comparison(tmp_path):
    import subprocess
    import sys

    out = tmp_path / "methods.png"
    done = subprocess.run([sys.executable, str(ANALYSIS / "plot_methods.py"), "--csv",
                           str(ANALYSIS / "results" / "compare_methods_tiny.csv"), "--out", str(out)],
                          capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    missing = subprocess.run([sys.executable, str(ANALYSIS / "plot_methods.py"), "--csv", str(tmp_path / "no.csv"),
                              "--out", str(out)], capture_output=True, text=True, check=False)
    assert missing.returncode == 2 and "run analysis/compare_methods.py first" in missing.stderr
