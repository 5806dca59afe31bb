"""export_int's file, and the executor as an implementation apart from torch."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

import mpsearch
from mpsearch.quant import Policy, QuantConfig, apply
from mpsearch.quant.nna import NNAError, calibrate_nna, export_int
from mpsearch.quant.nna.executor import IntegerModel, RNNTExecutor

MIXED = Policy({"_default": QuantConfig(weight_bits=8), r"re:encoder\.lstm\..*": QuantConfig(weight_bits=4),
                r"re:predictor\..*": QuantConfig(weight_bits=6)})
NNA_DIR = Path(mpsearch.__file__).parent / "quant" / "nna"
# Relative to mpsearch/quant: the numerics spec and the rounding modes are torch-free modules of quant itself.
EXECUTOR_FILES = ("nna/executor.py", "nna/numerics.py", "nna/errors.py", "nna/fileformat.py", "accelerator.py",
                  "rounding.py")


@pytest.fixture
def exported(tiny_rnnt, speech, tmp_path):
    model = apply(tiny_rnnt, MIXED, emulation="nna")
    calibrate_nna(model, [speech.calibration])
    path = tmp_path / "rnnt.npz"
    return model, path, export_int(model, path)


def test_header_names_type_version_architecture_sizes_and_numerics(exported):
    model, path, header = exported
    with np.load(path) as data:
        assert json.loads(str(data["__header__"])) == header
    assert header["_type"] == "mpsearch.NNAIntegerModel"
    assert (header["_version"], header["architecture"]) == (1, "rnnt")
    assert header["config"]["enc_hidden"] == 32 and header["config"]["enc_layers"] == 2
    assert header["numerics"] == model.encoder.lstm.numerics.to_dict()
    assert header["modules"]["joiner.add"]["inputs"] == ["encoder.proj", "predictor.proj"]
    assert header["modules"]["frontend.conv1"]["inputs"] == [None]


def test_sites_record_bits_and_packed_bytes(exported):
    _, _, header = exported
    site = header["sites"]["encoder.lstm.weight_hh_l1"]
    assert site == {"bits": 4, "shape": [128, 32], "numel": 4096, "packed_bytes": 2048}
    assert header["sites"]["predictor.embed"]["bits"] == 6
    assert header["sites"]["joiner.out"]["bits"] == 8


def test_arrays_are_integers_at_the_chips_widths(exported):
    _, path, _ = exported
    with np.load(path) as data:
        for key in data.files:
            assert data[key].dtype.kind in "iU", key
        codes = data["encoder.lstm.l0.weight_ih"]
        assert codes.dtype == np.int8 and np.abs(codes).max() <= 7  # 4-bit symmetric codes
        assert np.abs(data["predictor.proj.weight"]).max() <= 31
        assert data["encoder.proj.bias"].dtype == np.int32
        assert data["joiner.activation.lut"].shape == (256,)
        assert data["encoder.lstm.l1.gate_luts"].shape == (4, 256)


def test_export_needs_a_calibrated_nna_model(tiny_rnnt, tmp_path):
    with pytest.raises(NNAError, match="has no NNA modules"):
        export_int(tiny_rnnt, tmp_path / "x.npz")
    with pytest.raises(NNAError, match=r"'frontend\.conv1' is not calibrated; run calibrate_nna"):
        export_int(apply(tiny_rnnt, MIXED, emulation="nna"), tmp_path / "x.npz")


def test_executor_refuses_other_files(exported, tmp_path):
    _, _, header = exported
    with pytest.raises(NNAError, match="does not exist"):
        RNNTExecutor(tmp_path / "missing.npz")
    np.savez(tmp_path / "other.npz", __header__=np.array(json.dumps({**header, "_version": 99})))
    with pytest.raises(NNAError, match="version 99; this executor reads mpsearch.NNAIntegerModel version 1"):
        RNNTExecutor(tmp_path / "other.npz")
    np.savez(tmp_path / "lm.npz", __header__=np.array(json.dumps({**header, "architecture": "conformer"})))
    with pytest.raises(NNAError, match="architecture 'conformer'; RNNTExecutor runs 'rnnt' only"):
        RNNTExecutor(tmp_path / "lm.npz")


def test_executor_sources_import_nothing_from_torch():
    for name in EXECUTOR_FILES:
        tree = ast.parse((NNA_DIR.parent / name).read_text())
        nodes = list(ast.walk(tree))
        imported = {alias.name for node in nodes if isinstance(node, ast.Import) for alias in node.names}
        imported |= {node.module for node in nodes if isinstance(node, ast.ImportFrom)}
        assert not {m for m in imported if m and m.split(".")[0] == "torch"}, name
        assert imported <= {"__future__", "json", "math", "pathlib", "typing", "dataclasses", "numpy",
                             "collections.abc", "mpsearch.errors", "mpsearch.registry", "mpsearch.quant.accelerator",
                             "mpsearch.quant.rounding", "mpsearch.quant.nna.errors", "mpsearch.quant.nna.numerics",
                             "mpsearch.quant.nna.fileformat"}, name


def test_executor_decodes_in_a_process_where_torch_cannot_be_imported(exported, speech, tmp_path):
    model, path, _ = exported
    feats, feat_lens, _, _ = speech.evaluation
    np.save(tmp_path / "feats.npy", feats[0, : feat_lens[0]].numpy())
    model.eval()
    with torch.no_grad():
        expected = model.greedy_decode(feats[:1, : feat_lens[0]], feat_lens[:1])[0]
    # The quant packages' __init__ import torch; stand-ins let the executor's own files load alone.
    code = f"""
import sys, types
sys.modules["torch"] = None
import mpsearch
for name in ("mpsearch.quant", "mpsearch.quant.nna"):
    package = types.ModuleType(name)
    package.__path__ = [{str(NNA_DIR.parent)!r} if name == "mpsearch.quant" else {str(NNA_DIR)!r}]
    sys.modules[name] = package
import numpy as np
from mpsearch.quant.nna.executor import RNNTExecutor
executor = RNNTExecutor({str(path)!r})
print(executor.greedy_decode(executor.quantize_features(np.load({str(tmp_path / "feats.npy")!r}))))
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == str(expected)


class TimeMajorLSTM(nn.Module):
    """An LSTM that is not batch first, fed one state it returned before."""

    def __init__(self):
        super().__init__()
        self.inp = nn.Linear(6, 8)
        self.lstm = nn.LSTM(8, 12, num_layers=2)

    def forward(self, x, state=None):
        return self.lstm(self.inp(x), state)


def test_lstm_time_major_unbatched_and_with_state_matches_the_executor(tmp_path):
    torch.manual_seed(1)
    model = apply(TimeMajorLSTM(), Policy.uniform(QuantConfig(weight_bits=5)), emulation="nna")
    x = torch.randn(9, 3, 6)
    calibrate_nna(model, [(x,)])
    export_int(model, tmp_path / "lstm.npz")
    graph = IntegerModel(tmp_path / "lstm.npz")
    with torch.no_grad():
        first, state = model(x[:5])
        second, _ = model(x[5:], state)
        alone, _ = model(x[:, 1])  # unbatched (T, F)
    lstm = model.lstm
    codes = graph.linear("inp", graph.quantize_input("inp", x.numpy()))
    out_a, state_a = graph.lstm("lstm", codes[:5])
    out_b, _ = graph.lstm("lstm", codes[5:], state_a)
    np.testing.assert_array_equal(torch.round(first / lstm.out_scale).long().numpy(), out_a)
    np.testing.assert_array_equal(torch.round(second / lstm.out_scale).long().numpy(), out_b)
    np.testing.assert_array_equal(torch.round(alone / lstm.out_scale).long().numpy(),
                                  np.concatenate([out_a, out_b])[:, 1])


@pytest.mark.parametrize("stride, padding, dilation", [(1, 0, 1), (2, 1, 2), (3, 2, 1)])
def test_conv1d_strides_padding_and_dilation_match_the_executor(tmp_path, stride, padding, dilation):
    torch.manual_seed(2)
    conv = nn.Conv1d(3, 5, 3, stride=stride, padding=padding, dilation=dilation)
    float_model = nn.Sequential(conv, nn.ReLU())
    model = apply(float_model, Policy.uniform(QuantConfig(weight_bits=3)), emulation="nna")
    x = torch.randn(2, 3, 17)
    calibrate_nna(model, [(x,)])
    export_int(model, tmp_path / "conv.npz")
    graph = IntegerModel(tmp_path / "conv.npz")
    with torch.no_grad():
        expected = torch.round(model(x) / model[0].out_scale).long().numpy()
    for b in range(2):
        codes = graph.conv1d("0", graph.quantize_input("0", x[b].numpy()))
        np.testing.assert_array_equal(np.maximum(codes, 0), expected[b])
