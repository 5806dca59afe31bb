"""The study stage: supernet.json and one policy file per lambda, reused while nothing it depends on changed."""

import json
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from mpsearch.cli.main import main
from mpsearch.config import DataConfig, HardwareConfig, SupernetConfig, TrainConfig
from mpsearch.errors import ConfigError
from mpsearch.hardware import RooflineLatencyModel
from mpsearch.models import RNNT, RNNTConfig
from mpsearch.quant import Policy
from mpsearch.supernet import stage

SPACE = Path(__file__).resolve().parents[2] / "search_spaces" / "rnnt_groups.yaml"


def tiny_rnnt() -> RNNT:
    torch.manual_seed(0)
    return RNNT(RNNTConfig(n_mels=8, vocab_size=6, frontend_dim=8, enc_hidden=8, enc_layers=1, pred_embed=4,
                           pred_hidden=8, joint_dim=8, dropout=0.0))


class FakeStudy:
    """What the stage uses of a Study: cfg, dir, progress, baseline(), baseline_key, latency_model(), data."""

    def __init__(self, directory, space):
        self.cfg = SimpleNamespace(
            supernet=SupernetConfig(lambdas=(0.0, 5.0), steps=3), search=SimpleNamespace(space=space),
            hardware=HardwareConfig(), train=TrainConfig(threads=1), data=DataConfig())
        self.dir = Path(directory)
        self.progress = False
        self.model = tiny_rnnt()
        gen = torch.Generator().manual_seed(0)
        self.batch = (torch.randn(2, 21, 8, generator=gen), torch.tensor([21, 13]),
                      torch.randint(1, 6, (2, 3), generator=gen), torch.tensor([3, 2]))
        self.baseline_key = "baseline-1"
        self.data_reads = 0

    def baseline(self):
        copy = RNNT(self.model.config)
        copy.load_state_dict(self.model.state_dict())
        return copy, {}

    def latency_model(self):
        return RooflineLatencyModel(self.cfg.hardware.profile)

    @property
    def data(self):
        study = self

        class Train:
            def batches(self, max_batch_frames, shuffle=False, seed=0, augment=False):
                assert shuffle and not augment
                study.data_reads += 1
                yield study.batch

        return SimpleNamespace(train=Train())


@pytest.fixture
def study(tmp_path):
    return FakeStudy(tmp_path, str(SPACE))


def test_the_sweep_is_written_then_reused(study):
    first = stage.ensure_supernet(study)
    assert [c.lam for c in first] == [0.0, 5.0]
    data = json.loads((study.dir / "supernet.json").read_text())
    assert data["config_hash"] == stage.supernet_key(study) and len(data["candidates"]) == 2
    for c in first:
        assert Policy.load(stage.policy_path(study.dir, c.lam)) == c.policy
        assert set(c.params) == {f"{g}.{f}" for g in ("encoder", "predictor", "joiner") for f in ("weight_bits", "method")}
    reads = study.data_reads
    again = stage.ensure_supernet(study)
    assert study.data_reads == reads  # reused: no training
    assert [c.to_dict() for c in again] == [c.to_dict() for c in first]
    assert list(again[0].choices) == ["encoder", "predictor", "joiner"]  # the space's order, as the table shows it


def test_a_changed_setting_space_or_baseline_searches_again(study, tmp_path):
    stage.ensure_supernet(study)
    reads = study.data_reads
    study.baseline_key = "baseline-2"
    stage.ensure_supernet(study)
    assert study.data_reads > reads
    reads = study.data_reads
    space = tmp_path / "space.yaml"
    space.write_text(SPACE.read_text().replace("[2, 3, 4, 5, 6, 8]", "[4, 8]", 1))
    study.cfg.search.space = str(space)
    candidates = stage.ensure_supernet(study)
    assert study.data_reads > reads
    assert all(c.params["encoder.weight_bits"] in (4, 8) for c in candidates)


def test_an_unset_search_space_is_a_one_line_error(study):
    study.cfg.search.space = None
    with pytest.raises(ConfigError, match="search.space is not set"):
        stage.ensure_supernet(study)


def test_cli_prints_the_table(tmp_path, monkeypatch, capsys, study):
    candidates = stage.ensure_supernet(study)
    seen = {}

    def fake_stage(real_study):
        seen["dir"] = real_study.dir
        return candidates

    monkeypatch.setattr(stage, "ensure_supernet", fake_stage)
    path = tmp_path / "s.yaml"
    path.write_text(f"name: s\noutput_dir: {tmp_path / 'out'}\nmodel: {{name: rnnt}}\n"
                    f"search: {{space: {SPACE}}}\nsupernet: {{lambdas: [0, 1], steps: 2}}\n")
    assert main(["supernet", str(path), "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert seen == {"dir": tmp_path / "out"}
    lines = out.splitlines()
    assert lines[0].split()[:2] == ["lambda", "expected"] and "encoder" in lines[0] and "joiner" in lines[0]
    assert "supernet.json" in out and len(lines) == 2 + len(candidates) + 1


def test_a_truncated_sweep_is_set_aside_and_searched_again(study, caplog):
    first = stage.ensure_supernet(study)
    path = study.dir / "supernet.json"
    path.write_text(path.read_text()[:40])
    reads = study.data_reads
    again = stage.ensure_supernet(study)
    assert study.data_reads > reads and [c.params for c in again] == [c.params for c in first]
    warnings = [r.getMessage() for r in caplog.records if r.name == "mpsearch.artifacts"]
    assert len(warnings) == 1 and str(path) in warnings[0] and "\n" not in warnings[0]
    assert (study.dir / "supernet-torn.json").is_file()
