from typing import ClassVar

import pytest
from torch import nn

from mpsearch.quant import Site, find_sites


class TinySpeechModel(nn.Module):
    site_steps: ClassVar[dict[str, str]] = {"predictor": "token", "joiner": "joint"}

    def __init__(self):
        super().__init__()
        self.frontend = nn.Conv1d(8, 16, kernel_size=3, groups=2)
        self.encoder = nn.LSTM(16, 12, num_layers=2, batch_first=True)
        self.predictor = nn.Embedding(10, 6)
        self.joiner = nn.Linear(12, 10)


def test_finds_every_site_with_name_kind_shape_and_macs():
    sites = find_sites(TinySpeechModel())
    assert [s.name for s in sites] == [
        "frontend",
        "encoder.weight_ih_l0", "encoder.weight_hh_l0",
        "encoder.weight_ih_l1", "encoder.weight_hh_l1",
        "predictor", "joiner",
    ]
    by_name = {s.name: s for s in sites}
    assert by_name["frontend"] == Site("frontend", "frontend", "weight", "conv1d", (16, 4, 3), 16 * 4 * 3, "frame")
    assert by_name["encoder.weight_ih_l0"].kind == "lstm_ih"
    assert by_name["encoder.weight_ih_l0"].shape == (48, 16)
    assert by_name["encoder.weight_ih_l0"].macs == 48 * 16
    assert by_name["encoder.weight_hh_l1"].kind == "lstm_hh"
    assert by_name["encoder.weight_hh_l1"].shape == (48, 12)
    assert by_name["encoder.weight_ih_l1"].param == "weight_ih_l1"
    assert by_name["encoder.weight_ih_l1"].module == "encoder"
    assert by_name["predictor"].kind == "embedding" and by_name["predictor"].macs == 0
    assert by_name["predictor"].step == "token"
    assert by_name["joiner"] == Site("joiner", "joiner", "weight", "linear", (10, 12), 120, "joint")
    assert by_name["joiner"].numel == 120
    assert by_name["joiner"].to_dict()["shape"] == (10, 12)


def test_a_users_own_model_works_unchanged():
    class MyBlock(nn.Module):
        def __init__(self):
            super().__init__()
            self.layers = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
            self.norm = nn.LayerNorm(2)

        def forward(self, x):
            return self.norm(self.layers(x))

    sites = find_sites(MyBlock())
    assert [(s.name, s.kind, s.shape, s.step) for s in sites] == [
        ("layers.0", "linear", (8, 4), "frame"),
        ("layers.2", "linear", (2, 8), "frame"),
    ]


def test_bidirectional_lstm_lists_reverse_matrices():
    names = [s.name for s in find_sites(nn.Sequential(nn.LSTM(3, 4, bidirectional=True)))]
    assert names == ["0.weight_ih_l0", "0.weight_hh_l0", "0.weight_ih_l0_reverse", "0.weight_hh_l0_reverse"]


@pytest.mark.parametrize("module", [nn.ReLU(), nn.LayerNorm(3), nn.Conv2d(1, 1, 3)])
def test_modules_without_sites(module):
    assert find_sites(nn.Sequential(module)) == []
