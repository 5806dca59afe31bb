"""Greedy decoding of frame-level label scores."""

from __future__ import annotations

import torch
from torch import Tensor


def ctc_greedy(log_probs: Tensor, lengths: Tensor, blank: int = 0) -> list[list[int]]:
    """Best path of each utterance: argmax per frame, repeats collapsed, blanks dropped.

    ``log_probs`` is (B, T, V) (any monotone scores work); frames at or past ``lengths`` are ignored.
    """
    best = log_probs.argmax(dim=-1)
    previous = torch.nn.functional.pad(best[:, :-1], (1, 0), value=-1)
    inside = torch.arange(best.shape[1], device=best.device)[None, :] < lengths.to(best.device)[:, None]
    keep = (best != previous) & (best != blank) & inside
    return [row[mask].tolist() for row, mask in zip(best, keep)]
