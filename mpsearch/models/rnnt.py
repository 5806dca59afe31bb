"""Streaming RNN transducer: subsampling front end, LSTM encoder, LSTM prediction network, joiner.

The transducer parts (front ends, Predictor, Joiner, greedy search) are shared with the Conformer's
transducer head.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import ClassVar, Literal, Protocol

import torch
from pydantic import Field
from torch import Tensor, nn

from mpsearch.config import Section
from mpsearch.models.ops import Add
from mpsearch.models.rnnt_loss import rnnt_loss

BLANK = 0
SUBSAMPLING_FACTOR = 4


class RNNTConfig(Section):
    """Hyper-parameters of :class:`RNNT`; ``n_mels`` and ``vocab_size`` come from the data."""

    n_mels: int = Field(80, ge=1)
    vocab_size: int = Field(30, ge=2)
    subsampling: Literal["conv", "stack"] = "conv"
    frontend_dim: int = Field(128, ge=1)
    enc_hidden: int = Field(192, ge=1)
    enc_layers: int = Field(3, ge=1)
    pred_embed: int = Field(64, ge=1)
    pred_hidden: int = Field(128, ge=1)
    pred_layers: int = Field(1, ge=1)
    joint_dim: int = Field(160, ge=1)
    dropout: float = Field(0.1, ge=0.0, lt=1.0)
    ctc_weight: float = Field(0.0, ge=0.0, description="weight of an auxiliary CTC loss in training")


def subsampled_lengths(lengths: Tensor) -> Tensor:
    """Valid output frames of either front end for ``lengths`` input frames: ceil(L / 4)."""
    return torch.div(lengths + SUBSAMPLING_FACTOR - 1, SUBSAMPLING_FACTOR, rounding_mode="floor")


class ConvSubsampling(nn.Module):
    """Two causal stride-2 Conv1d over time with the mel bins as channels: 4x fewer frames.

    Left-only padding keeps it streamable and means a valid output frame never reads a padded input
    frame, so batching with padding cannot change it.
    """

    def __init__(self, n_mels: int, out_dim: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv1d(n_mels, out_dim, kernel_size=3, stride=2)
        self.conv2 = nn.Conv1d(out_dim, out_dim, kernel_size=3, stride=2)
        self.activation = nn.ReLU()

    def forward(self, feats: Tensor, lengths: Tensor) -> tuple[Tensor, Tensor]:
        x = feats.transpose(1, 2)
        x = self.activation(self.conv1(nn.functional.pad(x, (2, 0))))
        x = self.activation(self.conv2(nn.functional.pad(x, (2, 0))))
        return x.transpose(1, 2), subsampled_lengths(lengths)


class StackSubsampling(nn.Module):
    """Stack 4 consecutive frames and project them with one Linear: 4x fewer frames."""

    def __init__(self, n_mels: int, out_dim: int) -> None:
        super().__init__()
        self.linear = nn.Linear(SUBSAMPLING_FACTOR * n_mels, out_dim)
        self.activation = nn.ReLU()

    def forward(self, feats: Tensor, lengths: Tensor) -> tuple[Tensor, Tensor]:
        batch, frames, n_mels = feats.shape
        # The last stack of an utterance may hold padding; zeroing it makes it match the zeros
        # that pad the same utterance when it is run alone.
        valid = torch.arange(frames, device=feats.device)[None, :] < lengths[:, None].to(feats.device)
        x = feats * valid[..., None]
        x = nn.functional.pad(x, (0, 0, 0, (-frames) % SUBSAMPLING_FACTOR))
        x = x.reshape(batch, -1, SUBSAMPLING_FACTOR * n_mels)
        return self.activation(self.linear(x)), subsampled_lengths(lengths)


FRONTENDS = {"conv": ConvSubsampling, "stack": StackSubsampling}


class LSTMEncoder(nn.Module):
    """Unidirectional LSTM layers and a Linear projection into the joint space.

    No packing: a unidirectional LSTM never lets later (padded) frames reach earlier valid ones,
    and plain tensors keep the nn.LSTM easy to replace with a quantised one.
    """

    def __init__(self, in_dim: int, hidden: int, layers: int, out_dim: int, dropout: float) -> None:
        super().__init__()
        self.lstm = nn.LSTM(in_dim, hidden, num_layers=layers, batch_first=True,
                            dropout=dropout if layers > 1 else 0.0)
        self.dropout = nn.Dropout(dropout)
        self.proj = nn.Linear(hidden, out_dim)

    def forward(self, x: Tensor) -> Tensor:
        x, _ = self.lstm(x)
        return self.proj(self.dropout(x))


LSTMState = tuple[Tensor, ...]


class Predictor(nn.Module):
    """Prediction network: Embedding -> LSTM -> Linear, fed the previous label (blank at start)."""

    def __init__(self, vocab_size: int, embed_dim: int, hidden: int, layers: int, out_dim: int,
                 dropout: float, blank: int = BLANK) -> None:
        super().__init__()
        self.blank = blank
        self.embed = nn.Embedding(vocab_size, embed_dim)
        self.dropout = nn.Dropout(dropout)
        self.lstm = nn.LSTM(embed_dim, hidden, num_layers=layers, batch_first=True,
                            dropout=dropout if layers > 1 else 0.0)
        self.proj = nn.Linear(hidden, out_dim)

    def forward(self, targets: Tensor, target_lengths: Tensor) -> Tensor:
        """(B, U) padded labels -> (B, U+1, out_dim): output u has seen labels before u."""
        valid = torch.arange(targets.shape[1], device=targets.device)[None, :] < target_lengths[:, None]
        labels = torch.where(valid, targets, self.blank)  # padding may be -1
        start = torch.full_like(labels[:, :1], self.blank)
        x = self.dropout(self.embed(torch.cat([start, labels], dim=1)))
        x, _ = self.lstm(x)
        return self.proj(self.dropout(x))

    def step(self, tokens: Tensor, state: LSTMState | None) -> tuple[Tensor, LSTMState]:
        """One label per utterance, (B,) -> (B, out_dim); state None starts a sequence."""
        x, state = self.lstm(self.embed(tokens)[:, None], state)
        return self.proj(x[:, 0]), state


class Joiner(nn.Module):
    """tanh(encoder projection + predictor projection) -> Linear to the vocabulary."""

    def __init__(self, joint_dim: int, vocab_size: int) -> None:
        super().__init__()
        self.add = Add()  # a module, so integer emulation can replace the add
        self.activation = nn.Tanh()
        self.out = nn.Linear(joint_dim, vocab_size)

    def forward(self, enc: Tensor, pred: Tensor) -> Tensor:
        return self.out(self.activation(self.add(enc, pred)))


Rows = slice | Tensor  # utterances of a batch: the first n (a slice) or any, by index


class GreedySteps(Protocol):
    """The two operations of greedy transducer search, on one padded batch whose encoder output was
    given when the steps were made: what depends on the encoder alone is prepared then, once for
    all frames."""

    def labels(self, frame: int, rows: Rows) -> Tensor:
        """(R,) the joiner's best label for each of `rows` at encoder frame `frame`."""

    def feed(self, rows: Rows, labels: Tensor) -> None:
        """Advance the prediction network of `rows` by one label each, (R,)."""


class FloatGreedySteps:
    """`GreedySteps` by the modules' own calls: ``predictor.step(tokens (B,), state) -> (out (B, J),
    state)`` with the state a tuple of tensors whose dim 1 is the batch (as nn.LSTM's), and
    ``joiner(enc (B, J), pred (B, J)) -> (B, V)``."""

    def __init__(self, predictor: nn.Module, joiner: nn.Module, enc_out: Tensor, blank: int) -> None:
        self.predictor, self.joiner = predictor, joiner
        self.frames = enc_out.transpose(0, 1)  # (T, B, J): each frame's rows are one block
        tokens = torch.full((enc_out.shape[0],), blank, dtype=torch.long, device=enc_out.device)
        self.pred_out, self.state = predictor.step(tokens, None)

    def labels(self, frame: int, rows: Rows) -> Tensor:
        return self.joiner(self.frames[frame, rows], self.pred_out[rows]).argmax(dim=-1)

    def feed(self, rows: Rows, labels: Tensor) -> None:
        out, state = self.predictor.step(labels, tuple(s[:, rows] for s in self.state))
        self.pred_out[rows] = out
        for old, new in zip(self.state, state):
            old[:, rows] = new


def greedy_steps(predictor: nn.Module, joiner: nn.Module, enc_out: Tensor, blank: int = BLANK) -> GreedySteps:
    """The steps the greedy search runs on: the joiner's own where it offers them, else `FloatGreedySteps`.

    The first module of the joiner (the joiner itself included) with a ``greedy_steps(predictor,
    joiner, enc_out, blank)`` method decides: it returns its steps, or None where it cannot run
    these parts. This is how modules swapped in from outside (NNA emulation's integer layers) run the
    search their own way, everything that stays fixed across frames prepared once, without the model
    importing them.
    """
    for module in joiner.modules():
        build = getattr(module, "greedy_steps", None)
        if callable(build):
            steps = build(predictor, joiner, enc_out, blank)
            if steps is not None:
                return steps
            break
    return FloatGreedySteps(predictor, joiner, enc_out, blank)


@torch.no_grad()
def transducer_greedy_search(enc_out: Tensor, enc_lengths: Tensor, predictor: nn.Module, joiner: nn.Module,
                             max_symbols_per_frame: int = 5, blank: int = BLANK,
                             make_steps: Callable[..., GreedySteps] = greedy_steps) -> list[list[int]]:
    """Greedy transducer decoding of a padded batch, frame-synchronous, on the steps that
    ``make_steps(predictor, joiner, enc_out, blank)`` makes (by default the joiner's own where it offers
    them, see `greedy_steps`; `FloatGreedySteps` runs the modules' own calls).

    At each frame an utterance emits labels until the joiner prefers blank or it has emitted
    ``max_symbols_per_frame`` labels. All utterances advance one encoder frame together; the joiner
    scores every utterance still emitting at once, and those that emit a label advance their
    prediction network in one batched call. Utterances are taken longest first, so the ones still
    within their length at a frame are the first n rows.
    """
    batch, frames = enc_out.shape[:2]
    lengths = [min(int(n), frames) for n in enc_lengths.tolist()]
    order = sorted(range(batch), key=lambda b: -lengths[b])
    if order != list(range(batch)):
        enc_out = enc_out.index_select(0, torch.tensor(order, device=enc_out.device))
    lengths = [lengths[b] for b in order]
    steps = make_steps(predictor, joiner, enc_out, blank)
    hypotheses: list[list[int]] = [[] for _ in range(batch)]
    active = batch
    for t in range(lengths[0] if batch else 0):
        while lengths[active - 1] <= t:
            active -= 1
        rows: Rows = slice(0, active)
        members = list(range(active))
        for _ in range(max_symbols_per_frame):
            labels = steps.labels(t, rows).tolist()
            emitted = [i for i, label in enumerate(labels) if label != blank]
            if not emitted:
                break
            if len(emitted) < len(members):
                members = [members[i] for i in emitted]
                labels = [labels[i] for i in emitted]
                rows = torch.tensor(members, device=enc_out.device)
            for row, label in zip(members, labels):
                hypotheses[row].append(label)
            steps.feed(rows, torch.tensor(labels, device=enc_out.device))
    result: list[list[int]] = [[] for _ in range(batch)]
    for row, b in enumerate(order):
        result[b] = hypotheses[row]
    return result


class RNNT(nn.Module):
    """Streaming RNN transducer for characters; returns its loss from ``forward``."""

    kind: ClassVar[str] = "transducer"
    config_class: ClassVar[type[Section]] = RNNTConfig
    site_steps: ClassVar[dict[str, str]] = {
        "frontend": "frame", "encoder": "frame", "predictor": "token", "joiner": "joint",
    }

    def __init__(self, config: RNNTConfig) -> None:
        super().__init__()
        self.config = config
        self.frontend = FRONTENDS[config.subsampling](config.n_mels, config.frontend_dim)
        self.encoder = LSTMEncoder(config.frontend_dim, config.enc_hidden, config.enc_layers,
                                   config.joint_dim, config.dropout)
        self.predictor = Predictor(config.vocab_size, config.pred_embed, config.pred_hidden,
                                   config.pred_layers, config.joint_dim, config.dropout)
        self.joiner = Joiner(config.joint_dim, config.vocab_size)

    def output_lengths(self, feat_lens: Tensor) -> Tensor:
        """Encoder frames produced for ``feat_lens`` feature frames."""
        return subsampled_lengths(feat_lens)

    def encode(self, feats: Tensor, feat_lens: Tensor) -> tuple[Tensor, Tensor]:
        """(B, T, n_mels) features -> (B, T', joint_dim) encoder output and its lengths."""
        x, lengths = self.frontend(feats, feat_lens)
        return self.encoder(x), lengths

    def forward(self, feats: Tensor, feat_lens: Tensor, targets: Tensor, target_lens: Tensor) -> Tensor:
        """Mean transducer loss over the utterances of a padded batch."""
        enc, enc_lens = self.encode(feats, feat_lens)
        loss = transducer_loss(enc, enc_lens, targets, target_lens, self.predictor, self.joiner)
        if self.training and self.config.ctc_weight > 0:
            loss = loss + self.config.ctc_weight * auxiliary_ctc_loss(enc, enc_lens, targets, target_lens, self.joiner)
        return loss

    def greedy_decode(self, feats: Tensor, feat_lens: Tensor,
                      max_symbols_per_frame: int = 5) -> list[list[int]]:
        """Greedy label sequences (without blanks) per utterance of a padded batch; call eval() first."""
        with torch.no_grad():
            enc, enc_lens = self.encode(feats, feat_lens)
        return transducer_greedy_search(enc, enc_lens, self.predictor, self.joiner, max_symbols_per_frame)


def auxiliary_ctc_loss(enc: Tensor, enc_lens: Tensor, targets: Tensor, target_lens: Tensor,
                       joiner: nn.Module) -> Tensor:
    """CTC on the joiner fed a zero predictor output: it pulls the encoder towards the labels early,
    which shortens the transducer's long start where it only learns the label prior, and adds no
    weights (so no site that inference would not run)."""
    log_probs = joiner(enc, torch.zeros_like(enc)).log_softmax(dim=-1)
    losses = nn.functional.ctc_loss(log_probs.transpose(0, 1), targets, enc_lens, target_lens, blank=BLANK,
                                    reduction="none", zero_infinity=True)
    return losses.mean()


def transducer_loss(enc: Tensor, enc_lens: Tensor, targets: Tensor, target_lens: Tensor,
                    predictor: Predictor, joiner: Joiner) -> Tensor:
    """Mean RNN-T loss over utterances from encoder output already in the joint space."""
    # Trimming to the longest utterance keeps the (B, T, U+1, J) joint as small as the batch allows.
    max_t, max_u = int(enc_lens.max()), int(target_lens.max())
    enc, targets = enc[:, :max_t], targets[:, :max_u]
    pred = predictor(targets, target_lens)
    logits = joiner(enc[:, :, None, :], pred[:, None, :, :])
    return rnnt_loss(logits, targets, enc_lens, target_lens, blank=BLANK, reduction="mean")
