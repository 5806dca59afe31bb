"""analysis/compare_methods.py fine-tunes each row with the one training loop and the methods' hooks."""

import csv
import json
import runpy
from pathlib import Path

import pytest

ANALYSIS = Path(__file__).resolve().parents[2] / "analysis"


def test_a_method_row_is_fine_tuned_and_scored(make_study, tmp_path, monkeypatch, capsys):
    monkeypatch.syspath_prepend(str(ANALYSIS))
    script = runpy.run_path(str(ANALYSIS / "compare_methods.py"), run_name="analysis_compare_methods")
    out = tmp_path / "methods.csv"
    args = ["--study", str(make_study()), "--steps", "8", "--only", "^(float|gq-w4|uniform-w4|regrow-90-w8)$",
            "--out", str(out)]
    assert script["main"](args) == 2  # no baseline yet
    assert "--train-baseline" in capsys.readouterr().err
    assert script["main"]([*args, "--train-baseline"]) == 0
    rows = {r["row"]: r for r in csv.DictReader(out.open())}
    assert set(rows) == {"float", "gq-w4", "uniform-w4", "regrow-90-w8"}
    assert rows["gq-w4"]["steps"] == "8" and float(rows["gq-w4"]["avg_weight_bits"]) == 4.0
    gq = {k: float(v) for k, v in rows["gq-w4"].items() if k.endswith(("wer", "_low", "_high"))}
    assert gq["wer_ci_low"] <= gq["dev_wer"] <= gq["wer_ci_high"]
    assert gq["test_wer_ci_low"] <= gq["test_wer"] <= gq["test_wer_ci_high"]
    # gq ran before uniform-w4: its paired delta against it was filled in when uniform finished
    assert gq["delta_ci_low"] <= gq["delta_wer"] <= gq["delta_ci_high"]
    assert float(rows["uniform-w4"]["delta_wer"]) == 0.0
    assert rows["float"]["delta_wer"] in ("", "nan")
    assert rows["regrow-90-w8"]["sparsity"] == "regrow:0.9"
    details = json.loads(out.with_suffix(".details.json").read_text())
    assert len(details["gq-w4"]["loss"]) == 8 and details["float"]["loss"] == []
    assert len(details["gq-w4"]["dev"]["errors"]) == len(details["gq-w4"]["dev"]["words"]) > 0

    plot = runpy.run_path(str(ANALYSIS / "plot_methods.py"), run_name="analysis_plot_methods")
    assert plot["main"](["--csv", str(out), "--out", str(tmp_path / "methods.png")]) == 0
    assert (tmp_path / "methods.png").stat().st_size > 0 and (tmp_path / "methods-loss.png").stat().st_size > 0

    # Two rows compared across runs (here: the same run) on the same utterances, paired.
    paired = runpy.run_path(str(ANALYSIS / "paired_rows.py"), run_name="analysis_paired_rows")
    capsys.readouterr()
    assert paired["main"]([f"{out}:gq-w4", f"{out}:uniform-w4"]) == 0
    dev_line = capsys.readouterr().out.splitlines()[0]
    assert dev_line.startswith("dev: gq-w4") and f"{100 * gq['delta_wer']:+.2f} points" in dev_line
    other = tmp_path / "other.csv"
    details["uniform-w4"]["test"]["words"] = details["uniform-w4"]["test"]["words"][1:]
    other.with_suffix(".details.json").write_text(json.dumps(details))
    with pytest.raises(SystemExit, match="different test utterances"):
        paired["main"]([f"{out}:gq-w4", f"{other}:uniform-w4"])
    with pytest.raises(SystemExit, match="no row 'lsq-w4'"):
        paired["main"]([f"{out}:lsq-w4", f"{out}:uniform-w4"])
