from types import SimpleNamespace

import pytest
import torch

from mpsearch.cli.main import main
from mpsearch.config import SensitivityConfig
from mpsearch.sensitivity import SensitivityReport, stage
from mpsearch.study import StudyResult


class StageInputs:
    """The stage's explicit inputs: a folder, the float model, its training batches, the settings."""

    def __init__(self, directory, model, batch, cfg):
        self.cfg = SimpleNamespace(sensitivity=cfg)
        self.dir = directory
        self.model = model
        self.batch = batch
        self.data_reads = 0

    def batches(self, seed):
        self.data_reads += 1
        yield self.batch


def ensure(inputs, backend=None):
    cfg = inputs.cfg.sensitivity
    if backend is not None:
        cfg = cfg.model_copy(update={"backend": backend})
    return stage.ensure_sensitivity(inputs.dir, inputs.model, inputs.batches, cfg)


@pytest.fixture
def study(tmp_path, rnnt_case):
    model, batch = rnnt_case
    return StageInputs(tmp_path, model, batch, SensitivityConfig(batches=1, min_probes=2, max_probes=3))


def test_the_report_is_written_then_reused(study):
    first = ensure(study)
    assert (study.dir / "sensitivity.json").is_file() and (study.dir / "sensitivity.png").is_file()
    assert study.data_reads == 1
    (study.dir / "sensitivity.png").unlink()
    again = ensure(study)
    assert again == first and study.data_reads == 1  # reused: no batches read
    assert (study.dir / "sensitivity.png").is_file()  # the missing plot is drawn again


def test_new_settings_or_weights_compute_it_again(study):
    first = ensure(study)
    study.cfg.sensitivity = SensitivityConfig(batches=1, min_probes=2, max_probes=4)
    second = ensure(study)
    assert second.key != first.key and study.data_reads == 2
    with torch.no_grad():
        study.model.joiner.out.weight.mul_(1.5)
    third = ensure(study)
    assert third.key != second.key and study.data_reads == 3
    assert SensitivityReport.load(study.dir / "sensitivity.json") == third


def test_the_backend_can_be_overridden(study):
    pytest.importorskip("pyhessian")
    report = ensure(study, backend="pyhessian")
    assert report.settings["backend"] == "pyhessian"
    assert ensure(study).settings["backend"] == "hutchinson"


def test_cli_prints_the_table(tmp_path, capsys, study, stage_run):
    report = ensure(study)
    seen = stage_run("sensitivity", StudyResult(baseline={}, sensitivity=report))
    path = tmp_path / "s.yaml"
    path.write_text(f"name: s\noutput_dir: {tmp_path / 'out'}\nmodel: {{name: rnnt}}\n"
                    "sensitivity: {batches: 1, bits: [2, 8]}\n")
    assert main(["sensitivity", str(path), "--backend", "pyhessian", "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert seen == {"sensitivity_backend": "pyhessian", "dir": tmp_path / "out"}
    assert all(site in out for site in report.sites) and "sensitivity.json" in out


def test_the_model_is_left_unchanged(study):
    before = {k: v.clone() for k, v in study.model.state_dict().items()}
    config = study.model.config
    ensure(study)
    assert study.model.config is config
    assert all(torch.equal(before[k], v) for k, v in study.model.state_dict().items())


def test_cli_rejects_an_unknown_backend(tmp_path, capsys):
    with pytest.raises(SystemExit):
        main(["sensitivity", str(tmp_path / "s.yaml"), "--backend", "nope"])
    assert "hutchinson" in capsys.readouterr().err


def test_a_truncated_report_is_set_aside_and_computed_again(study, caplog):
    first = ensure(study)
    path = study.dir / "sensitivity.json"
    path.write_text(path.read_text()[: len(path.read_text()) // 2])
    again = ensure(study)
    assert study.data_reads == 2 and again.key == first.key and again.traces == first.traces
    warnings = [r.getMessage() for r in caplog.records if r.name == "mpsearch.artifacts"]
    assert len(warnings) == 1 and str(path) in warnings[0] and "\n" not in warnings[0]
    assert (study.dir / "sensitivity-torn.json").is_file()
