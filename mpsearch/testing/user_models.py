"""A user's own speech model and task adapter, as a study names them from its YAML:

    model: {factory: "mpsearch.testing.user_models:conv_rnn_ctc", params: {hidden: 32}}
    task: {adapter: "mpsearch.testing.user_models:CTCAdapter"}

The model is plain PyTorch on purpose (no mpsearch model class, no `kind`, no `greedy_decode`): its
forward maps features to per-frame log-probabilities, and the adapter makes a CTC loss and a greedy CTC
transcript of them.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from mpsearch.data.pipeline import Batch
from mpsearch.eval.decoding import ctc_greedy
from mpsearch.models.ctc_loss import ctc_loss as twice_differentiable_ctc_loss


class ConvRNNCTC(nn.Module):
    """A strided Conv1d front end (half the frames), one GRU (or LSTM) layer, a linear output over the
    vocabulary; index 0 is the CTC blank, as the study's tokenizer has it."""

    def __init__(self, n_mels: int, vocab_size: int, channels: int = 16, hidden: int = 32, rnn: str = "gru"):
        super().__init__()
        rnns = {"gru": nn.GRU, "lstm": nn.LSTM}
        if rnn not in rnns:
            raise ValueError(f"rnn must be one of {', '.join(rnns)}; got {rnn!r}")
        self.frontend = nn.Conv1d(n_mels, channels, kernel_size=3, stride=2, padding=1)
        self.encoder = rnns[rnn](channels, hidden, batch_first=True)
        self.output = nn.Linear(hidden, vocab_size)

    def forward(self, feats: Tensor, feat_lens: Tensor) -> tuple[Tensor, Tensor]:
        """(B, T, n_mels) features -> ((B, T', vocab) log-probabilities, (B,) frames per utterance)."""
        x = torch.relu(self.frontend(feats.transpose(1, 2))).transpose(1, 2)
        hidden, _ = self.encoder(x)
        lengths = torch.div(feat_lens + 1, 2, rounding_mode="floor").clamp(min=1, max=x.shape[1])
        return self.output(hidden).log_softmax(-1), lengths


def conv_rnn_ctc(n_mels: int, vocab_size: int, channels: int = 16, hidden: int = 32, rnn: str = "gru") -> ConvRNNCTC:
    """The model factory: the study passes `n_mels` and `vocab_size` from its data, the rest from
    `model.params`."""
    return ConvRNNCTC(n_mels, vocab_size, channels=channels, hidden=hidden, rnn=rnn)


class CTCAdapter:
    """CTC loss (torch's kernel: fast, but with no second derivative on CPU) and greedy CTC decoding of
    a model whose forward(feats, feat_lens) returns (log_probs, lengths)."""

    ctc_loss = staticmethod(nn.functional.ctc_loss)

    def loss(self, model: nn.Module, batch: Batch) -> Tensor:
        log_probs, lengths = model(batch.feats, batch.feat_lens)
        return self.ctc_loss(log_probs.transpose(0, 1), batch.targets, lengths, batch.target_lens, blank=0,
                             reduction="mean", zero_infinity=True)

    def decode(self, model: nn.Module, batch: Batch) -> Sequence[Sequence[int]]:
        log_probs, lengths = model(batch.feats, batch.feat_lens)
        return ctc_greedy(log_probs, lengths, blank=0)


class TwiceDifferentiableCTCAdapter(CTCAdapter):
    """The same with mpsearch's pure-PyTorch CTC loss (same values), which the sensitivity stage's and the
    supernet's second derivatives need."""

    ctc_loss = staticmethod(twice_differentiable_ctc_loss)
