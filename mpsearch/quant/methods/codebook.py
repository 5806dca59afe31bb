"""Codebook helpers shared by the centroid methods (gq, s8bqat): nearest-centroid search and the int8 grid.

Both methods target an 8-bit accelerator: their centroids are stored as int8 codes at a per-group scale
(the chip computes with int8 weights and decompresses the b-bit indices into them), so every codebook is
snapped to that grid before it is used, in training as at export.
"""

from __future__ import annotations

import torch
from torch import Tensor

# The chip's weight grid: symmetric int8, zero point 0.
INT8_MAX = 127


def groups(x: Tensor, per_channel: bool) -> Tensor:
    """x as (groups, values): one row per output channel (dim 0), or a single row."""
    return x.reshape(x.shape[0], -1) if per_channel and x.dim() > 1 else x.reshape(1, -1)


def nearest(v: Tensor, codes: Tensor) -> Tensor:
    """Index of the nearest entry of sorted `codes` for every value of v, in O(numel(v)) memory.

    `codes` is (n,) shared by every value, or (G, n) with v shaped (G, M) row by row. Ties between two
    neighbours go to the lower one; repeated codes are fine (any of them has the same value).
    """
    mids = (codes[..., 1:] + codes[..., :-1]) / 2
    if codes.dim() == 1:
        return torch.bucketize(v, mids)
    return torch.searchsorted(mids.contiguous(), v.contiguous())


def round_ste(x: Tensor, rounding) -> Tensor:
    """rounding.round(x) in value, identity in gradient (centroids keep learning through the int8 snap)."""
    return x + (rounding.round(x) - x).detach()
