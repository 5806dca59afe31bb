"""The study stage: supernet.json and one policy file per lambda, reused while nothing it depends on changed."""

import json
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from mpsearch.cli.main import main
from mpsearch.config import DataConfig, HardwareConfig, StudyConfig, SupernetConfig, TrainConfig
from mpsearch.errors import ConfigError
from mpsearch.hardware import RooflineLatencyModel
from mpsearch.models import RNNT, RNNTConfig
from mpsearch.quant import Policy, find_sites
from mpsearch.space import SearchSpace
from mpsearch.study import Study, StudyResult
from mpsearch.supernet import stage

SPACE = Path(__file__).resolve().parents[2] / "search_spaces" / "rnnt_groups.yaml"


def tiny_rnnt() -> RNNT:
    torch.manual_seed(0)
    return RNNT(RNNTConfig(n_mels=8, vocab_size=6, frontend_dim=8, enc_hidden=8, enc_layers=1, pred_embed=4,
                           pred_hidden=8, joint_dim=8, dropout=0.0))


class StageInputs:
    """The stage's explicit inputs: a folder, the float model, the space file, the settings, the baseline's
    key, a latency model and the training batches."""

    def __init__(self, directory, space):
        self.cfg = SimpleNamespace(
            supernet=SupernetConfig(lambdas=(0.0, 5.0), steps=3), search=SimpleNamespace(space=space),
            hardware=HardwareConfig(), train=TrainConfig(threads=1), data=DataConfig())
        self.dir = Path(directory)
        self.model = tiny_rnnt()
        gen = torch.Generator().manual_seed(0)
        self.batch = (torch.randn(2, 21, 8, generator=gen), torch.tensor([21, 13]),
                      torch.randint(1, 6, (2, 3), generator=gen), torch.tensor([3, 2]))
        self.baseline_key = "baseline-1"
        self.data_reads = 0

    def latency_model(self):
        return RooflineLatencyModel(self.cfg.hardware.profile)

    def batches(self, seed):
        self.data_reads += 1
        yield self.batch


def key(study):
    return stage.supernet_key(study.cfg.supernet, study.cfg.search.space, study.cfg.hardware, study.baseline_key)


def ensure(study):
    space = SearchSpace.from_yaml(study.cfg.search.space, find_sites(study.model))
    return stage.ensure_supernet(study.dir, study.model, space, study.latency_model(), study.cfg.supernet, key(study),
                                 study.batches, space_path=study.cfg.search.space, threads=study.cfg.train.threads)


@pytest.fixture
def study(tmp_path):
    return StageInputs(tmp_path, str(SPACE))


def test_the_sweep_is_written_then_reused(study):
    first = ensure(study)
    assert [c.lam for c in first] == [0.0, 5.0]
    data = json.loads((study.dir / "supernet.json").read_text())
    assert data["config_hash"] == key(study) and len(data["candidates"]) == 2
    for c in first:
        assert Policy.load(stage.policy_path(study.dir, c.lam)) == c.policy
        assert set(c.params) == {f"{g}.{f}" for g in ("encoder", "predictor", "joiner") for f in ("weight_bits", "method")}
    reads = study.data_reads
    again = ensure(study)
    assert study.data_reads == reads  # reused: no training
    assert [c.to_dict() for c in again] == [c.to_dict() for c in first]
    assert list(again[0].choices) == ["encoder", "predictor", "joiner"]  # the space's order, as the table shows it


def test_a_changed_setting_space_or_baseline_searches_again(study, tmp_path):
    ensure(study)
    reads = study.data_reads
    study.baseline_key = "baseline-2"
    ensure(study)
    assert study.data_reads > reads
    reads = study.data_reads
    space = tmp_path / "space.yaml"
    space.write_text(SPACE.read_text().replace("[2, 3, 4, 5, 6, 8]", "[4, 8]", 1))
    study.cfg.search.space = str(space)
    candidates = ensure(study)
    assert study.data_reads > reads
    assert all(c.params["encoder.weight_bits"] in (4, 8) for c in candidates)


def test_an_unset_search_space_is_a_one_line_error(study, tmp_path):
    cfg = StudyConfig.from_dict({"name": "s", "output_dir": str(tmp_path / "out"), "model": {"name": "rnnt"}})
    with pytest.raises(ConfigError, match="search.space is not set"):
        Study(cfg, progress=False).run("supernet")


def test_cli_prints_the_table(tmp_path, capsys, study, stage_run):
    candidates = ensure(study)
    seen = stage_run("supernet", StudyResult(baseline={}, supernet=candidates))
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
    first = ensure(study)
    path = study.dir / "supernet.json"
    path.write_text(path.read_text()[:40])
    reads = study.data_reads
    again = ensure(study)
    assert study.data_reads > reads and [c.params for c in again] == [c.params for c in first]
    warnings = [r.getMessage() for r in caplog.records if r.name == "mpsearch.artifacts"]
    assert len(warnings) == 1 and str(path) in warnings[0] and "\n" not in warnings[0]
    assert (study.dir / "supernet-torn.json").is_file()
