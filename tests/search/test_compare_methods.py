"""analysis/compare_methods.py fine-tunes each row with the one training loop and the methods' hooks."""

import csv
import runpy
from pathlib import Path

ANALYSIS = Path(__file__).resolve().parents[2] / "analysis"


def test_a_method_row_is_fine_tuned_and_scored(make_study, tmp_path, monkeypatch, capsys):
    monkeypatch.syspath_prepend(str(ANALYSIS))
    script = runpy.run_path(str(ANALYSIS / "compare_methods.py"), run_name="analysis_compare_methods")
    out = tmp_path / "methods.csv"
    args = ["--study", str(make_study()), "--steps", "2", "--only", "^(float|gq-w4)$", "--out", str(out)]
    assert script["main"](args) == 2  # no baseline yet
    assert "--train-baseline" in capsys.readouterr().err
    assert script["main"]([*args, "--train-baseline"]) == 0
    rows = {r["row"]: r for r in csv.DictReader(out.open())}
    assert set(rows) == {"float", "gq-w4"}
    assert rows["gq-w4"]["steps"] == "2" and float(rows["gq-w4"]["avg_weight_bits"]) == 4.0
    assert 0.0 <= float(rows["gq-w4"]["dev_wer"])
