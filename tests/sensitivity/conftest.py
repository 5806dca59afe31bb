import pytest
import torch
from torch import nn

from mpsearch.models import RNNT, RNNTConfig


class TinyMLP(nn.Module):
    """Linear -> tanh -> Linear with a mean squared error loss; forward(x, y) returns the loss."""

    def __init__(self) -> None:
        super().__init__()
        self.hidden = nn.Linear(4, 6)
        self.out = nn.Linear(6, 3)

    def forward(self, x, y):
        return (self.out(torch.tanh(self.hidden(x))) - y).pow(2).mean()


class TinyLSTM(nn.Module):
    """LSTM -> Linear on every step, mean squared error."""

    def __init__(self) -> None:
        super().__init__()
        self.lstm = nn.LSTM(3, 4, batch_first=True)
        self.head = nn.Linear(4, 2)

    def forward(self, x, y):
        out, _ = self.lstm(x)
        return (self.head(out) - y).pow(2).mean()


@pytest.fixture
def mlp_case():
    torch.manual_seed(0)
    model = TinyMLP().double()
    gen = torch.Generator().manual_seed(1)
    batches = [(torch.randn(16, 4, generator=gen, dtype=torch.float64),
                torch.randn(16, 3, generator=gen, dtype=torch.float64)) for _ in range(2)]
    return model, batches


@pytest.fixture
def lstm_case():
    torch.manual_seed(0)
    model = TinyLSTM().double()
    gen = torch.Generator().manual_seed(2)
    batches = [(torch.randn(5, 7, 3, generator=gen, dtype=torch.float64),
                torch.randn(5, 7, 2, generator=gen, dtype=torch.float64))]
    return model, batches


def tiny_rnnt() -> RNNT:
    torch.manual_seed(0)
    return RNNT(RNNTConfig(n_mels=8, vocab_size=6, frontend_dim=8, enc_hidden=8, enc_layers=1, pred_embed=4,
                           pred_hidden=8, joint_dim=8, dropout=0.0))


@pytest.fixture
def rnnt_case():
    """A tiny RNN-T and one padded batch of three utterances."""
    gen = torch.Generator().manual_seed(0)
    feats = torch.randn(3, 21, 8, generator=gen)
    targets = torch.randint(1, 6, (3, 4), generator=gen)
    targets[1, 2:] = -1
    targets[2, 1:] = -1
    return tiny_rnnt(), (feats, torch.tensor([21, 13, 6]), targets, torch.tensor([4, 2, 1]))
