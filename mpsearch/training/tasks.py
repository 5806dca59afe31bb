"""What a model is trained on and how it is scored: speech recognition (WER/CER) or language modelling
(perplexity). The trainer only sees `loss(batch)`, `train_batches(seed)` and `evaluate(split)`.

A speech model meets the study's batches through a TaskAdapter: by default the built-in models'
contract (the forward returns the loss, `greedy_decode` the token ids); a study's `task.adapter` names
another, for a model of the user's own with another forward."""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Iterator, Sequence
from typing import Any, Protocol, runtime_checkable

import torch
from torch import nn

from mpsearch.data.pipeline import Batch, FeatureSet, SpeechData
from mpsearch.errors import ConfigError, MpsearchError
from mpsearch.eval.perplexity import perplexity
from mpsearch.eval.wer import error_rates


class Task(Protocol):
    model: nn.Module

    def loss(self, batch) -> torch.Tensor: ...

    def train_batches(self, seed: int) -> Iterator: ...

    def evaluate(self, split: str) -> dict[str, float]: ...


@runtime_checkable
class TaskAdapter(Protocol):
    """How a model trains on and transcribes a batch of the study's speech data (a `Batch`: `feats`
    (B, T, n_mels) zero padded, `feat_lens` (B,), `targets` (B, U) token ids zero padded, `target_lens`
    (B,), `texts`). Token ids are the tokenizer's: 0 is the blank, 1 unknown, then the alphabet
    (`vocab_size` symbols in all). Name one in a study as `task: {adapter: "package.module:Name"}`; a
    class is built with no arguments.

    `loss` is every stage's loss: training, calibration (under no_grad), the trials' fine-tunes, and the
    Hessian of the sensitivity stage and the supernet's, which need it twice differentiable (torch's CTC
    kernel is not on CPU; mpsearch.models.ctc_loss.ctc_loss is, with the same arguments)."""

    def loss(self, model: nn.Module, batch: Batch) -> torch.Tensor:
        """The batch's mean loss: a scalar tensor with gradients (no backward)."""
        ...

    def decode(self, model: nn.Module, batch: Batch) -> Sequence[Sequence[int]]:
        """The token ids of each utterance, in batch order (called in eval mode, without gradients)."""
        ...


class ForwardLossGreedyDecode:
    """The built-in speech models' contract: `model(feats, feat_lens, targets, target_lens)` returns the
    loss and `model.greedy_decode(feats, feat_lens)` the token ids."""

    def loss(self, model: nn.Module, batch: Batch) -> torch.Tensor:
        return model(batch.feats, batch.feat_lens, batch.targets, batch.target_lens)

    def decode(self, model: nn.Module, batch: Batch) -> Sequence[Sequence[int]]:
        return model.greedy_decode(batch.feats, batch.feat_lens)


def load_adapter(spec: str) -> TaskAdapter:
    """The adapter `task.adapter` names: a class (built with no arguments) or an object, with callable
    `loss` and `decode`."""
    from mpsearch.dotted_path import load_object, raised

    adapter: Any = load_object(spec, "task.adapter")
    if isinstance(adapter, type):
        try:
            adapter = adapter()
        except Exception as exc:  # noqa: BLE001  (the user's code: whatever it raises is one line)
            raise ConfigError(f"task.adapter '{spec}' could not be built with no arguments ({raised(exc)}); give "
                              "its parameters defaults, or name an instance.") from None
    missing = [m for m in ("loss", "decode") if not callable(getattr(adapter, m, None))]
    if missing:
        raise ConfigError(f"task.adapter '{spec}' has no {' or '.join(m + '(model, batch)' for m in missing)}; an "
                          "adapter needs both (see mpsearch.training.tasks.TaskAdapter).")
    return adapter


class FixedBatchTask:
    """One batch, given again at every step, with nothing to evaluate: for the benchmarks and contract checks
    that train a model on a fixed input through the one training loop. `loss(model, batch)` defaults to the
    model's forward on the batch's items (the built-in models return their loss)."""

    def __init__(self, model: nn.Module, batch: Any,
                 loss: Callable[[nn.Module, Any], torch.Tensor] | None = None):
        self.model = model
        self.batch = batch
        self._loss = loss if loss is not None else (lambda model, batch: model(*batch))

    def loss(self, batch: Any) -> torch.Tensor:
        return self._loss(self.model, batch)

    def train_batches(self, seed: int) -> Iterator[Any]:
        return itertools.repeat(self.batch)

    def evaluate(self, split: str) -> dict[str, float]:
        return {}


class SpeechTask:
    """ASR: the adapter (default: the model's forward returns the mean loss per utterance) gives the loss;
    its greedy decoding gives WER."""

    def __init__(self, model: nn.Module, data: SpeechData, max_batch_frames: int, augment: bool = True,
                 adapter: TaskAdapter | None = None):
        self.model = model
        self.data = data
        self.max_batch_frames = max_batch_frames
        self.augment = augment
        self.adapter = adapter if adapter is not None else ForwardLossGreedyDecode()

    def loss(self, batch: Batch) -> torch.Tensor:
        return self.adapter.loss(self.model, batch)

    def train_batches(self, seed: int) -> Iterator[Batch]:
        return self.data.train.batches(self.max_batch_frames, shuffle=True, seed=seed, augment=self.augment)

    @torch.no_grad()
    def transcribe(self, split: FeatureSet) -> tuple[list[str], list[str]]:
        was_training = self.model.training
        self.model.eval()
        refs, hyps = [], []
        try:
            for batch in split.batches(self.max_batch_frames):
                decoded = list(self.adapter.decode(self.model, batch))
                if len(decoded) != len(batch):
                    raise MpsearchError(f"{type(self.adapter).__name__}.decode returned {len(decoded)} transcripts "
                                        f"for a batch of {len(batch)} utterances; return one list of token ids "
                                        "per utterance.")
                for ids, ref in zip(decoded, batch.texts):
                    refs.append(ref)
                    hyps.append(self.data.tokenizer.decode([int(i) for i in ids]))
        finally:
            self.model.train(was_training)
        return refs, hyps

    def evaluate(self, split: str) -> dict[str, float]:
        refs, hyps = self.transcribe(self.data.split(split))
        return error_rates(refs, hyps)


class LanguageModelTask:
    """LM over the tokenizer's units: batches of token sequences; scored by perplexity."""

    def __init__(self, model: nn.Module, data: SpeechData, batch_tokens: int = 4096):
        self.model = model
        self.data = data
        self.batch_tokens = batch_tokens

    def _batches(self, split: FeatureSet, shuffle: bool, seed: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        order = sorted(range(len(split)), key=lambda i: split.tokens[i].numel())
        groups, current = [], []
        for i in order:
            if current and (split.tokens[i].numel() + 1) * (len(current) + 1) > self.batch_tokens:
                groups.append(current)
                current = []
            current.append(i)
        if current:
            groups.append(current)
        if shuffle:
            g = torch.Generator().manual_seed(seed)
            groups = [groups[j] for j in torch.randperm(len(groups), generator=g).tolist()]
        for group in groups:
            seqs = [split.tokens[i] for i in group]
            lengths = torch.tensor([s.numel() for s in seqs])
            yield torch.nn.utils.rnn.pad_sequence(seqs, batch_first=True), lengths

    def loss(self, batch) -> torch.Tensor:
        tokens, lengths = batch
        return self.model(tokens, lengths)

    def train_batches(self, seed: int):
        return self._batches(self.data.train, True, seed)

    def evaluate(self, split: str) -> dict[str, float]:
        batches = self._batches(self.data.split(split), False, 0)
        return {"perplexity": perplexity(self.model, batches),
                "unigram_perplexity": unigram_perplexity(self.data.train.tokens, self.data.split(split).tokens)}


def unigram_perplexity(train: list[torch.Tensor], held_out: list[torch.Tensor], end_symbol: int = 0) -> float:
    """The reference an LM must beat: add-one smoothed unigram counts, one end symbol per sentence."""
    counts = torch.ones(1 + max(int(t.max()) for t in train + held_out if t.numel()), dtype=torch.float64)
    for t in train:
        counts += torch.bincount(t, minlength=counts.numel())
    counts[end_symbol] += len(train)
    log_p = torch.log(counts / counts.sum())
    nll = sum(float(-log_p[t].sum() - log_p[end_symbol]) for t in held_out)
    return math.exp(nll / sum(t.numel() + 1 for t in held_out))
