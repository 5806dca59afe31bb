"""What a model is trained on and how it is scored: speech recognition (WER/CER) or language modelling
(perplexity). The trainer only sees `loss(batch)`, `train_batches(seed)` and `evaluate(split)`."""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Protocol

import torch
from torch import nn

from mpsearch.data.pipeline import Batch, FeatureSet, SpeechData
from mpsearch.eval.perplexity import perplexity
from mpsearch.eval.wer import error_rates


class Task(Protocol):
    model: nn.Module

    def loss(self, batch) -> torch.Tensor: ...

    def train_batches(self, seed: int) -> Iterator: ...

    def evaluate(self, split: str) -> dict[str, float]: ...


class SpeechTask:
    """ASR: the model's forward returns the mean loss per utterance; greedy decoding gives WER."""

    def __init__(self, model: nn.Module, data: SpeechData, max_batch_frames: int, augment: bool = True):
        self.model = model
        self.data = data
        self.max_batch_frames = max_batch_frames
        self.augment = augment

    def loss(self, batch: Batch) -> torch.Tensor:
        return self.model(batch.feats, batch.feat_lens, batch.targets, batch.target_lens)

    def train_batches(self, seed: int) -> Iterator[Batch]:
        return self.data.train.batches(self.max_batch_frames, shuffle=True, seed=seed, augment=self.augment)

    @torch.no_grad()
    def transcribe(self, split: FeatureSet) -> tuple[list[str], list[str]]:
        was_training = self.model.training
        self.model.eval()
        refs, hyps = [], []
        try:
            for batch in split.batches(self.max_batch_frames):
                for ids, ref in zip(self.model.greedy_decode(batch.feats, batch.feat_lens), batch.texts):
                    refs.append(ref)
                    hyps.append(self.data.tokenizer.decode(ids))
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
