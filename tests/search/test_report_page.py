"""What a reader sees in report.html: units, intervals, interrupted trials, the folder it reads, and a
layout that fits 390, 1400 and 1920 px wide screens (measured in headless Chromium where installed).

The study here is written the way a search leaves one (settings, baseline metrics, sensitivity report,
knee policy, trials in a real Optuna SQLite storage) without training, so these tests take seconds."""

from __future__ import annotations

import json
import re
import runpy
import shutil
import time
from pathlib import Path

import numpy as np
import optuna
import pytest
import yaml
from optuna.distributions import CategoricalDistribution
from optuna.trial import create_trial

from mpsearch.cli.main import main
from mpsearch.config import StudyConfig
from mpsearch.eval.bootstrap import wer_interval
from mpsearch.hardware import RooflineLatencyModel, load_profile
from mpsearch.quant import Policy, QuantConfig
from mpsearch.report import render_report, trial_states
from mpsearch.search.pareto import load_front_table
from mpsearch.search.storage import storage_url
from mpsearch.sensitivity.omega import OmegaRecord
from mpsearch.sensitivity.report import SensitivityReport
from mpsearch.study import Study

ANALYSIS = Path(__file__).resolve().parents[2] / "analysis"
MODEL = {"name": "rnnt", "params": {"frontend_dim": 8, "enc_hidden": 12, "enc_layers": 1, "pred_embed": 6,
                                    "pred_hidden": 12, "joint_dim": 10, "dropout": 0.0}}
SPACE = {"groups": {"encoder": {"sites": ["frontend.*", "encoder.*"], "weight_bits": [4, 8]},
                    "rest": {"sites": ["predictor.*", "joiner.*"], "weight_bits": [2, 4, 8]}}}
# (origin, encoder bits, rest bits, extra errors per 100 utterances): WERs within a fraction of a point
POINTS = [("uniform-8", 8, 8, 0), ("uniform-4", 4, 4, 3), ("ilp-0", 8, 4, 1), ("sampler", 4, 8, 0),
          ("sampler", 4, 2, 4)]
HEARTBEAT_SECONDS = 1


def write_study(root: Path) -> Path:
    """A searched-looking study in root/study; returns the YAML's path. Its last trial is left RUNNING
    with a heartbeat that goes stale a second later, as a killed search leaves one."""
    (root / "space.yaml").write_text(yaml.safe_dump(SPACE))
    path = root / "study.yaml"
    path.write_text(yaml.safe_dump({"name": "page", "output_dir": str(root / "study"), "model": MODEL,
                                    "search": {"space": str(root / "space.yaml"), "workers": 1,
                                               "heartbeat_seconds": HEARTBEAT_SECONDS}}))
    cfg = StudyConfig.from_yaml(path)
    study = Study(cfg, progress=False)  # writes study.yaml.json and tokenizer.json, as a search does
    sites = study.sites()
    names = [s.name for s in sites]
    folder = cfg.study_dir
    (folder / "baseline").mkdir()
    (folder / "baseline" / "metrics.json").write_text(json.dumps({
        "model": "rnnt", "parameters": 3378, "train_seconds": 612.4, "train_steps": 3000,
        "dev": {"wer": 0.121, "wer_ci_low": 0.109, "wer_ci_high": 0.134, "cer": 0.05, "utterances": 200},
        "test": {"wer": 0.135, "wer_ci_low": 0.121, "wer_ci_high": 0.149, "perplexity": None}}))
    rng = np.random.default_rng(0)
    SensitivityReport(
        sites=names, numel=[s.numel for s in sites], traces=list(rng.uniform(0.1, 40, len(sites))),
        stderrs=list(rng.uniform(0.01, 4, len(sites))), probes=[8] * len(sites), total_stderr=5.0,
        omega=[OmegaRecord(n, "uniform", b, 1e-3 / b, 1.0, 1e-3) for n in names for b in (2, 3, 4, 5, 6, 7, 8)],
        settings={"backend": "hutchinson", "batches_used": 1, "tol": 0.05}, seconds=3.0, key="k",
        converged=True).save(folder / "sensitivity.json")

    latency = RooflineLatencyModel(load_profile(cfg.hardware.profile))
    words = rng.integers(3, 12, size=1000)
    base = rng.binomial(words, 0.12)
    storage = storage_url(cfg)
    optuna_study = optuna.create_study(study_name=cfg.name, storage=storage, directions=["minimize"] * 2)
    distributions = {"encoder.weight_bits": CategoricalDistribution([4, 8]),
                     "rest.weight_bits": CategoricalDistribution([2, 4, 8])}
    for origin, enc, rest, extra in POINTS:
        policy = Policy({r"re:(frontend|encoder)\..*": QuantConfig(weight_bits=enc),
                         "_default": QuantConfig(weight_bits=rest)}, names)
        hardware = latency(sites, policy).metrics()
        errors = np.minimum(words, base + (rng.random(len(words)) < extra / 100))
        interval = wer_interval(errors.tolist(), words.tolist())
        metrics = {**hardware, "wer": interval.value, "wer_ci_low": interval.low, "wer_ci_high": interval.high,
                   "utterances": {"split": "dev", "references": "same", "errors": errors.tolist(),
                                  "words": words.tolist()}}
        optuna_study.add_trial(create_trial(
            values=[interval.value, hardware["latency_ms"]], distributions=distributions,
            params={"encoder.weight_bits": enc, "rest.weight_bits": rest},
            user_attrs={"metrics": metrics, "policy": policy.to_dict(), "origin": origin}))
        if origin == "ilp-0":
            policy.save(folder / "knee-policy.json")
    running = optuna_study.ask()
    optuna_study._storage.record_heartbeat(running._trial_id)
    return path


@pytest.fixture(scope="module")
def page_study(tmp_path_factory) -> Path:
    path = write_study(tmp_path_factory.mktemp("page"))
    time.sleep(HEARTBEAT_SECONDS + 1.5)  # SQLite's clock counts whole seconds
    return path


def section(text: str, key: str) -> str:
    return re.search(rf'<section id="{key}">(.*?)</section>', text, re.DOTALL).group(1)


def test_numbers_carry_units_and_intervals(page_study):
    cfg = StudyConfig.from_yaml(page_study)
    text = render_report(cfg)
    front = section(text, "front")
    table = load_front_table(cfg)
    u8 = table.frame[table.frame["origin"] == "uniform-8"].iloc[0]
    # WER in percent with its interval; the paired difference column; sizes and times with units
    assert f"{100 * u8['wer']:.1f}% [{100 * u8['wer_ci_low']:.1f}, {100 * u8['wer_ci_high']:.1f}]" in front
    assert "ΔWER vs uniform-8 [95% CI]" in front and ">reference</td>" in front
    assert re.search(r">\d+(\.\d+)? (B|KiB)</td>", front) and re.search(r">\d\.\d+ ms</td>", front)
    assert "size_bytes" not in front and "latency_ms</td>" not in front
    # origin labels stay on one line whatever the width
    assert "white-space: nowrap" in text
    # metrics the study did not measure have no rows anywhere
    assert "perplexity" not in front + section(text, "policies") + section(text, "baseline")
    # the front policies whose paired interval reaches 0 are named
    expected = table.frame[table.frame["on_front"] & (table.frame["origin"] != "uniform-8")
                           & (table.frame["delta_ci_low"] <= 0)]
    sentence = re.search(r"<p>(Front policies not significantly worse[^<]*|Every front policy is significantly "
                         r"worse[^<]*)</p>", front).group(1)
    assert len(expected) and sentence.startswith("Front policies not significantly worse")
    for number in expected["trial"]:
        assert f"trial {number} (" in sentence
    # the WERs differ by less than a point: the figure's axis is widened, and says so
    assert "axis is drawn 3 points wide" in front
    assert "KiB" in section(text, "latency") and "µs)" in section(text, "latency")


def test_a_killed_search_reads_as_interrupted(page_study):
    text = render_report(StudyConfig.from_yaml(page_study))
    assert "The search was interrupted: trial 5 was running when its search process stopped" in text
    assert "Trials: 5 complete, 1 interrupted." in section(text, "front")
    assert not re.search(r"\d+ running", text)


def test_a_trial_with_a_fresh_heartbeat_is_running(page_study):
    cfg = StudyConfig.from_yaml(page_study)
    study = optuna.load_study(study_name=cfg.name, storage=storage_url(cfg))
    states = trial_states(study.get_trials(deepcopy=False), {5: 0.5}, grace_seconds=HEARTBEAT_SECONDS)
    assert states.counts == {"complete": 5, "running": 1} and states.stopped == []
    states = trial_states(study.get_trials(deepcopy=False), {5: 30.0}, grace_seconds=HEARTBEAT_SECONDS)
    assert states.counts == {"complete": 5, "stopped": 1} and states.stopped == [5]


def test_a_copied_study_folder_reads_its_own_trials(page_study, tmp_path, capsys):
    cfg = StudyConfig.from_yaml(page_study)
    copy = tmp_path / "copy"
    shutil.copytree(cfg.study_dir, copy)
    stored = (copy / "study.yaml.json").read_text()
    # The copy gets a trial the original lacks, so which storage a report read shows in its count.
    url = f"sqlite:///{(copy / 'optuna.db').resolve()}"
    optuna.load_study(study_name=cfg.name, storage=url).add_trial(
        create_trial(values=[0.5, 1.0], user_attrs={"origin": "sampler"}))
    assert "of 5 distinct complete trials" in render_report(cfg)

    assert main(["report", str(copy)]) == 0
    assert capsys.readouterr().out.strip() == str(copy / "report.html")
    text = (copy / "report.html").read_text()
    assert url in text and "of 6 distinct complete trials" in text
    # The copy is read, never written: its stored settings still name the folder it ran in.
    assert (copy / "study.yaml.json").read_text() == stored

    # A YAML pointing at the copy reads the copy too.
    moved = yaml.safe_load(page_study.read_text())
    moved["output_dir"] = str(copy)
    (tmp_path / "moved.yaml").write_text(yaml.safe_dump(moved))
    assert main(["report", str(tmp_path / "moved.yaml"), "--out", str(tmp_path / "moved.html")]) == 0
    assert "of 6 distinct complete trials" in (tmp_path / "moved.html").read_text()

    (tmp_path / "empty").mkdir()
    assert main(["report", str(tmp_path / "empty")]) == 2
    assert "has no study.yaml.json" in capsys.readouterr().err


def test_no_table_reaches_past_the_page(page_study, tmp_path):
    render = runpy.run_path(str(ANALYSIS / "render_report.py"), run_name="analysis_render_report")
    if render["find_chromium"]() is None:
        pytest.skip("chromium is not on PATH (Debian: apt-get install chromium)")
    report = tmp_path / "report.html"
    assert main(["report", str(page_study), "--out", str(report)]) == 0
    for width in (390, 1400, 1920):
        layout = render["measure_layout"](report, width)
        assert layout["width"] == width
        assert render["layout_problems"](layout) == [], width
        assert len(layout["tables"]) >= 6
        if width == 1920:  # on a wide screen the trial table is shown whole, not cut to a scrolling box
            assert layout["tables"][0]["table_width"] <= layout["tables"][0]["box_width"]
