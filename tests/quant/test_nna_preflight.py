"""The NNA preflight: every blocker of a model found in one call and reported at once."""

import pytest
import torch
from torch import nn

from mpsearch.models.ops import Add
from mpsearch.quant import Policy, QuantConfig, apply
from mpsearch.quant.apply import nna_preflight
from mpsearch.quant.nna import calibrate_nna
from mpsearch.quant.nna.preflight import Blocker, NNABlockedError

W8A8 = Policy.uniform(QuantConfig(weight_bits=8, act_bits=8))


class Blocked(nn.Module):
    """Three problems: an InstanceNorm, a Mish, and an inline float product between two layers."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv1d(4, 8, 3, padding=1)
        self.norm = nn.InstanceNorm1d(8, affine=True)
        self.act = nn.Mish()
        self.proj = nn.Linear(8, 8)
        self.out = nn.Linear(8, 5)
        self.add = Add()

    def forward(self, x):
        y = self.act(self.norm(self.conv(x))).transpose(1, 2)
        z = self.proj(y)
        return self.out(self.add(z, y) * 2.0)


class ConvLSTM(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv1d(4, 8, 3, padding=1)
        self.relu = nn.ReLU()
        self.lstm = nn.LSTM(8, 8, batch_first=True)
        self.out = nn.Linear(8, 5)

    def forward(self, x):
        y, _ = self.lstm(self.relu(self.conv(x)).transpose(1, 2))
        return self.out(y)


def test_every_blocker_is_listed_by_one_call_with_one_batch():
    x = torch.randn(2, 4, 6)
    blockers = nna_preflight(Blocked(), Policy({"_default": QuantConfig(weight_bits=8, act_bits=8), "proj": None}),
                             (x,))
    assert all(isinstance(b, Blocker) for b in blockers)
    where = [(b.module, b.kind) for b in blockers]
    assert ("proj", "site") in where
    assert ("norm", "InstanceNorm1d") in where and ("act", "Mish") in where
    assert ("out", "NNALinear") in where  # the inline `* 2.0` before it
    inline = next(b for b in blockers if b.module == "out")
    assert "MulBackward0" in inline.why and "op as a module" in inline.fix
    # The InstanceNorm's and Mish's float outputs are reported once, where they are, not again downstream.
    assert len(blockers) == 4


def test_apply_raises_one_error_listing_all_blockers():
    with pytest.raises(NNABlockedError) as info:
        apply(Blocked(), W8A8, emulation="nna")
    message = str(info.value)
    assert "2 blocker(s)" in message
    assert "Module 'norm' (InstanceNorm1d)" in message and "Module 'act' (Mish)" in message
    assert [b.module for b in info.value.blockers] == ["norm", "act"]


def test_a_supported_model_passes_and_calibrates_after_the_preflight():
    torch.manual_seed(0)
    model = ConvLSTM()
    x = torch.randn(2, 4, 6)
    assert nna_preflight(model, W8A8, (x,)) == []
    emulated = apply(model, W8A8, emulation="nna", example=(x,))
    calibrate_nna(emulated, [(x,)])
    with torch.no_grad():
        out, ref = emulated(x), model(x)
    assert float((out - ref).norm() / ref.norm()) < 0.1
