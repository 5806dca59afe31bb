from types import SimpleNamespace

import pytest
import torch

from mpsearch.cli.main import main
from mpsearch.config import SensitivityConfig
from mpsearch.sensitivity import SensitivityReport, stage


class FakeStudy:
    """What the stage uses of a Study: cfg, dir, progress, baseline() and data.train.batches()."""

    def __init__(self, directory, model, batch, cfg):
        self.cfg = SimpleNamespace(sensitivity=cfg, data=SimpleNamespace(max_batch_frames=1000))
        self.dir = directory
        self.progress = False
        self.model = model
        self.batch = batch
        self.data_reads = 0

    def baseline(self):
        copy = type(self.model)(self.model.config)
        copy.load_state_dict(self.model.state_dict())
        return copy, {}

    @property
    def data(self):
        self.data_reads += 1
        study = self

        class Train:
            def batches(self, max_batch_frames, shuffle=False, seed=0, augment=False):
                assert max_batch_frames == 1000 and shuffle and not augment
                yield study.batch

        return SimpleNamespace(train=Train())


@pytest.fixture
def study(tmp_path, rnnt_case):
    model, batch = rnnt_case
    return FakeStudy(tmp_path, model, batch, SensitivityConfig(batches=1, min_probes=2, max_probes=3))


def test_the_report_is_written_then_reused(study):
    first = stage.ensure_sensitivity(study)
    assert (study.dir / "sensitivity.json").is_file() and (study.dir / "sensitivity.png").is_file()
    assert study.data_reads == 1
    (study.dir / "sensitivity.png").unlink()
    again = stage.ensure_sensitivity(study)
    assert again == first and study.data_reads == 1  # reused: no batches read
    assert (study.dir / "sensitivity.png").is_file()  # the missing plot is drawn again


def test_new_settings_or_weights_compute_it_again(study):
    first = stage.ensure_sensitivity(study)
    study.cfg.sensitivity = SensitivityConfig(batches=1, min_probes=2, max_probes=4)
    second = stage.ensure_sensitivity(study)
    assert second.key != first.key and study.data_reads == 2
    with torch.no_grad():
        study.model.joiner.out.weight.mul_(1.5)
    third = stage.ensure_sensitivity(study)
    assert third.key != second.key and study.data_reads == 3
    assert SensitivityReport.load(study.dir / "sensitivity.json") == third


def test_the_backend_can_be_overridden(study):
    pytest.importorskip("pyhessian")
    report = stage.ensure_sensitivity(study, backend="pyhessian")
    assert report.settings["backend"] == "pyhessian"
    assert stage.ensure_sensitivity(study).settings["backend"] == "hutchinson"


def test_cli_prints_the_table(tmp_path, monkeypatch, capsys, study):
    report = stage.ensure_sensitivity(study)
    seen = {}

    def fake_stage(real_study, backend=None):
        seen["backend"] = backend
        seen["dir"] = real_study.dir
        return report

    monkeypatch.setattr(stage, "ensure_sensitivity", fake_stage)
    path = tmp_path / "s.yaml"
    path.write_text(f"name: s\noutput_dir: {tmp_path / 'out'}\nmodel: {{name: rnnt}}\n"
                    "sensitivity: {batches: 1, bits: [2, 8]}\n")
    assert main(["sensitivity", str(path), "--backend", "pyhessian", "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert seen == {"backend": "pyhessian", "dir": tmp_path / "out"}
    assert all(site in out for site in report.sites) and "sensitivity.json" in out


def test_cli_rejects_an_unknown_backend(tmp_path, capsys):
    with pytest.raises(SystemExit):
        main(["sensitivity", str(tmp_path / "s.yaml"), "--backend", "nope"])
    assert "hutchinson" in capsys.readouterr().err


def test_a_truncated_report_is_set_aside_and_computed_again(study, caplog):
    first = stage.ensure_sensitivity(study)
    path = study.dir / "sensitivity.json"
    path.write_text(path.read_text()[: len(path.read_text()) // 2])
    again = stage.ensure_sensitivity(study)
    assert study.data_reads == 2 and again.key == first.key and again.traces == first.traces
    warnings = [r.getMessage() for r in caplog.records if r.name == "mpsearch.artifacts"]
    assert len(warnings) == 1 and str(path) in warnings[0] and "\n" not in warnings[0]
    assert (study.dir / "sensitivity-torn.json").is_file()
