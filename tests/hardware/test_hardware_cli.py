import itertools

import pandas as pd
import pytest

from mpsearch.cli import main as cli
from mpsearch.hardware.calibrate import predict_us
from mpsearch.hardware.profile import load_profile


@pytest.fixture(autouse=True)
def only_the_hardware_command(monkeypatch):
    # Other commands are built in parallel; this suite checks only its own.
    assert "mpsearch.cli.hardware" in cli._COMMAND_MODULES
    monkeypatch.setattr(cli, "_COMMAND_MODULES", ["mpsearch.cli.hardware"])


def test_calibrate_writes_a_loadable_profile(tmp_path, make_profile, capsys):
    truth = make_profile(name="truth", macs_per_cycle=64.0, offchip_bandwidth_gbps=8.0, layer_overhead_us=3.0,
                         onchip_bandwidth_gbps=None, activation_bandwidth_gbps=None)
    rows = [(i, o, 8, b, 1.0) for i, o, b in itertools.product((64, 512, 2048), (64, 512, 2048), (1, 16))]
    df = pd.DataFrame(rows, columns=["in_features", "out_features", "weight_bits", "batch", "time_us"])
    df["time_us"] = predict_us(df, truth)
    csv = tmp_path / "m.csv"
    df.to_csv(csv, index=False)
    base = tmp_path / "base.yaml"
    truth.model_copy(update={"macs_per_cycle": 20.0, "layer_overhead_us": 1.0}).save(base)
    out = tmp_path / "fitted-cpu.yaml"

    rc = cli.main(["hardware", "calibrate", "--measurements", str(csv), "--profile", str(out), "--base", str(base)])
    assert rc == 0
    printed = capsys.readouterr().out
    assert "median relative error" in printed and "worst" in printed
    fitted = load_profile(out)
    assert fitted.name == "fitted-cpu"
    assert fitted.macs_per_cycle == pytest.approx(64.0, rel=0.05)
    assert fitted.layer_overhead_us == pytest.approx(3.0, rel=0.05)


def test_calibrate_reports_a_missing_file(tmp_path, capsys):
    rc = cli.main(["hardware", "calibrate", "--measurements", str(tmp_path / "none.csv"),
                   "--profile", str(tmp_path / "out.yaml")])
    assert rc == 2
    assert "does not exist" in capsys.readouterr().err
    assert not (tmp_path / "out.yaml").exists()


def test_show_prints_the_profile(capsys):
    assert cli.main(["hardware", "show", "nna-int8"]) == 0
    out = capsys.readouterr().out
    assert "name: nna-int8" in out and "offchip_bandwidth_gbps" in out


def test_show_unknown_profile_lists_shipped(capsys):
    assert cli.main(["hardware", "show", "tpu9"]) == 2
    assert "nna-int8" in capsys.readouterr().err
