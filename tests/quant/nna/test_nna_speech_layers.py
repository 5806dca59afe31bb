"""NNA emulation of the layers third-party speech models are built from: each one's emulated output
against the float module within the quantisation error, gradients on every weight, and a clean preflight."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from mpsearch.quant import Policy, QuantConfig, apply
from mpsearch.quant.apply import nna_preflight
from mpsearch.quant.nna import calibrate_nna, checking_grid

W8A8 = Policy.uniform(QuantConfig(weight_bits=8, act_bits=8))


def emulate(model: nn.Module, *inputs: torch.Tensor, tolerance: float = 0.1) -> nn.Module:
    """The NNA version of `model`, calibrated on `inputs`: no blockers, output within `tolerance` (relative)
    of the float model's, on its producers' grids, and a loss reaching every weight and bias."""
    model = model.eval()
    assert nna_preflight(model, W8A8, inputs) == []
    emulated = apply(model, W8A8, emulation="nna", example=inputs)
    calibrate_nna(emulated, [inputs])
    with torch.no_grad():
        ref = model(*inputs)
        with checking_grid():
            out = emulated(*inputs)
    ref, out = (t[0] if isinstance(t, tuple) else t for t in (ref, out))
    assert out.shape == ref.shape
    assert float((out - ref).norm() / ref.norm()) < tolerance
    emulated.train()
    out = emulated(*inputs)
    (out[0] if isinstance(out, tuple) else out).square().sum().backward()
    for name, param in emulated.named_parameters():
        assert param.grad is not None and param.grad.abs().sum() > 0, name
    return emulated


class ConvRecurrent(nn.Module):
    """Conv front end, a recurrent layer and a linear head: the shape of a small streaming CTC model."""

    def __init__(self, rnn: nn.Module, out_features: int):
        super().__init__()
        self.conv = nn.Conv1d(6, 8, 3, padding=1)
        self.relu = nn.ReLU()
        self.rnn = rnn
        self.head = nn.Linear(out_features, 5)

    def forward(self, x):
        y, _ = self.rnn(self.relu(self.conv(x)).transpose(1, 2))
        return self.head(y)


@pytest.mark.parametrize("bidirectional", [False, True])
def test_gru_layers_run_on_the_chip_integers(bidirectional):
    from mpsearch.quant.nna.gru import NNAGRU

    torch.manual_seed(0)
    gru = nn.GRU(8, 12, num_layers=2, batch_first=True, bidirectional=bidirectional)
    emulated = emulate(ConvRecurrent(gru, 24 if bidirectional else 12), torch.randn(3, 6, 10))
    assert isinstance(emulated.rnn, NNAGRU)


def test_bidirectional_lstm_runs_the_lstm_cell_both_ways():
    from mpsearch.quant.nna.lstm import NNALSTM

    torch.manual_seed(0)
    lstm = nn.LSTM(8, 12, num_layers=2, batch_first=True, bidirectional=True)
    emulated = emulate(ConvRecurrent(lstm, 24), torch.randn(3, 6, 10))
    assert isinstance(emulated.rnn, NNALSTM) and emulated.rnn.gate_scales.shape == (4, 4)
    # Both directions of a layer share one hidden scale: their concatenation is one int8 tensor.
    assert emulated.rnn.hidden_scales.shape == (2,)


class ConvNorm(nn.Module):
    def __init__(self, norm: nn.Module, act: nn.Module | None = None):
        super().__init__()
        self.conv = nn.Conv1d(4, 8, 3, padding=1)
        self.norm = norm
        self.act = act or nn.Identity()
        self.head = nn.Conv1d(8, 5, 1)

    def forward(self, x):
        return self.head(self.act(self.norm(self.conv(x))))


@pytest.mark.parametrize("groups", [1, 2, 8])
def test_group_norm_runs_the_layer_norm_kernel_per_group(groups):
    from mpsearch.quant.nna.norm import NNAGroupNorm

    torch.manual_seed(0)
    norm = nn.GroupNorm(groups, 8)
    with torch.no_grad():
        norm.weight.uniform_(0.5, 1.5)
        norm.bias.uniform_(-0.5, 0.5)
    emulated = emulate(ConvNorm(norm), torch.randn(2, 4, 20))
    assert isinstance(emulated.norm, NNAGroupNorm)


@pytest.mark.parametrize("approximate", ["none", "tanh"])
def test_gelu_of_either_form_is_one_table(approximate):
    from mpsearch.quant.nna.ops import NNAGELU

    torch.manual_seed(0)
    emulated = emulate(ConvNorm(nn.Identity(), nn.GELU(approximate=approximate)), torch.randn(2, 4, 20))
    assert isinstance(emulated.act, NNAGELU)


def test_batch_norm_after_a_conv_is_folded_into_it_in_eval_mode():
    torch.manual_seed(0)
    norm = nn.BatchNorm1d(8)
    with torch.no_grad():
        norm.running_mean.uniform_(-1, 1)
        norm.running_var.uniform_(0.5, 2)
        norm.weight.uniform_(0.5, 1.5)
        norm.bias.uniform_(-0.5, 0.5)
    model = ConvNorm(norm, nn.ReLU()).eval()
    x = torch.randn(2, 4, 20)
    folded = apply(model, W8A8)  # the fake-quant path folds it too
    assert isinstance(folded.norm, nn.Identity) and folded.conv.bias is not None
    emulated = emulate(model, x)
    assert isinstance(emulated.norm, nn.Identity)
    # In training mode batch statistics move every step: the chip cannot follow, and the preflight says so.
    blockers = nna_preflight(model.train(), W8A8, (x,))
    assert [(b.module, b.kind) for b in blockers] == [("norm", "BatchNorm1d")]
    assert "eval mode" in blockers[0].fix


def test_export_names_the_module_the_executor_cannot_run(tmp_path):
    from mpsearch.quant.nna import NNAError, export_int

    torch.manual_seed(0)
    x = torch.randn(2, 6, 10)
    for rnn, name in ((nn.GRU(8, 12, batch_first=True), "NNAGRU"),
                      (nn.LSTM(8, 6, batch_first=True, bidirectional=True), "bidirectional LSTM")):
        emulated = apply(ConvRecurrent(rnn, 12).eval(), W8A8, emulation="nna")
        calibrate_nna(emulated, [(x,)])
        with pytest.raises(NNAError, match=f"^'rnn' (has no integer export: No integer export for )?(is a )?{name}") \
                as info:
            export_int(emulated, tmp_path / "model.npz")
        assert "\n" not in str(info.value)
    assert not (tmp_path / "model.npz").exists()


def test_a_conv_gru_ctc_model_calibrates_and_fine_tunes_on_the_chip_integers():
    torch.manual_seed(0)
    model = ConvRecurrent(nn.GRU(8, 12, num_layers=2, batch_first=True, bidirectional=True), 24).eval()
    x, labels = torch.randn(2, 6, 12), torch.randint(1, 5, (2, 4))
    lengths, label_lengths = torch.full((2,), 12), torch.full((2,), 4)
    emulated = apply(model, W8A8, emulation="nna", example=(x,))
    calibrate_nna(emulated, [(x,), (torch.randn(2, 6, 12),)])
    emulated.train()
    optimizer = torch.optim.SGD(emulated.parameters(), lr=1e-2)
    losses = []
    for _ in range(3):
        optimizer.zero_grad()
        log_probs = emulated(x).log_softmax(-1).transpose(0, 1)
        loss = nn.functional.ctc_loss(log_probs, labels, lengths, label_lengths)
        loss.backward()
        for name, param in emulated.named_parameters():
            assert param.grad is not None and param.grad.abs().sum() > 0, name
        optimizer.step()
        losses.append(float(loss.detach()))
    assert losses[-1] < losses[0]


class PositionsThenLinear(nn.Module):
    def __init__(self, learned: bool):
        super().__init__()
        from mpsearch.models.ops import AddPositions

        self.proj = nn.Linear(6, 8)
        self.positions = AddPositions(32, 8, learned=learned)
        self.head = nn.Linear(8, 5)

    def forward(self, x):
        return self.head(self.positions(self.proj(x)))


@pytest.mark.parametrize("learned", [False, True])
def test_sinusoidal_and_learned_positions_are_an_integer_add_of_a_table(learned):
    from mpsearch.quant.nna.positions import NNAAddPositions

    torch.manual_seed(0)
    emulated = emulate(PositionsThenLinear(learned), torch.randn(2, 20, 6))
    assert isinstance(emulated.positions, NNAAddPositions)
    assert isinstance(emulated.positions.table, nn.Parameter) == learned


class SelfAttention(nn.Module):
    def __init__(self):
        super().__init__()
        self.proj = nn.Linear(6, 16)
        self.attention = nn.MultiheadAttention(16, 2, batch_first=True)
        self.head = nn.Linear(16, 5)

    def forward(self, x, padding):
        y = self.proj(x)
        return self.head(self.attention(y, y, y, key_padding_mask=padding, need_weights=False)[0])


def test_multihead_attention_runs_its_split_matmuls_and_softmax_on_the_chip():
    from mpsearch.quant.nna.transformer import NNAMatMul, NNASoftmax

    torch.manual_seed(0)
    padding = torch.zeros(2, 12, dtype=torch.bool)
    padding[1, 9:] = True
    emulated = emulate(SelfAttention(), torch.randn(2, 12, 6), padding)
    assert isinstance(emulated.attention.scores, NNAMatMul) and isinstance(emulated.attention.softmax, NNASoftmax)


def test_an_elman_rnn_is_a_blocker_naming_what_runs():
    blockers = nna_preflight(ConvRecurrent(nn.RNN(8, 12, batch_first=True), 12), W8A8, (torch.randn(2, 6, 10),))
    assert [(b.module, b.kind) for b in blockers] == [("rnn", "RNN")]
    assert "GRU" in blockers[0].fix and "LSTM" in blockers[0].fix
