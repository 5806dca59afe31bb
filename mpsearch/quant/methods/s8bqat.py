"""s8bqat: sub-8-bit QAT for an 8-bit accelerator (Zhen et al. 2022).

The 2^b centroids come from Lloyd-Max (1-D k-means) on the float baseline's weights, per channel or per
tensor, and are snapped to the chip's int8 grid. The paper derives its centroids per layer from the 32-bit
baseline (our reading; granularity per_tensor is that); per_channel, the default granularity here, fits a
table per output channel, and those 2^b int8 entries per channel are counted as weight storage wherever
size and latency are modelled (hardware.latency.CODEBOOK_TABLES), so its lower error is paid for. Training adds the Multi-Regional Absolute Cosine
(MRACos) regularizer, which pulls every weight toward the nearer of its two neighbouring centroids with
a period set by that region's own spacing, and every K steps a hard compressor snaps the float weights
onto their nearest centroid in place.

Training forward (option `train_forward`): "float" (default, as in the paper) trains the float weights,
which the regularizer and the hard compressor keep close to the centroids; "quantized" fake-quantizes to
the nearest centroid with a straight-through gradient, so the loss sees the deployed weights. Eval mode
and export always use the nearest centroid.

Schedule over a fine-tune of T steps: a soft phase (MRACos, a hard compression every `compress_every`
steps), then, for the last `recovery` fraction of the steps, a recovery phase: one last hard compression
starts it, and the rest trains the quantized forward (nearest centroid, straight-through) with the
codebook frozen and no regularizer, so the loss recovers what the last compression cost while the
deployed weights stay on the codebook. The paper (Zhen et al. 2022, arXiv:2206.15408, Sec. 3: the
MRACos regularizer and the periodic hard compressor) ends training with the hard compressor; the
recovery phase after it is our reading of how to keep the final compression from costing accuracy, and
`recovery: 0` gives the paper's schedule.
"""

from __future__ import annotations

import math
from typing import Any, ClassVar

import torch
from torch import Tensor

from mpsearch.errors import PolicyError
from mpsearch.quant.config import QuantConfig
from mpsearch.quant.methods.codebook import INT8_MAX, groups, nearest
from mpsearch.quant.options import check_choice, check_number
from mpsearch.quant.parts import MIN_SCALE, scale_shape
from mpsearch.quant.scheduled import RecoveryPhase
from mpsearch.quant.weight_quantizers import QUANTIZERS, WeightQuantizer

TRAIN_FORWARDS = ("float", "quantized")


@torch.no_grad()
def lloyd_max(rows: Tensor, levels: int, iterations: int = 30, tol: float = 1e-7) -> Tensor:
    """1-D k-means of every row of `rows` (G, M): (G, levels) ascending centroids.

    Deterministic: starts from the (k + 1/2)/levels quantiles, then alternates nearest-centroid
    assignment and cell means (an empty cell keeps its centroid) until no centroid moves by more than
    tol * max|x| or `iterations` are done. Vectorised over rows; memory O(G * M).
    """
    values = rows.detach().sort(dim=1).values.contiguous()
    count = values.shape[1]
    picks = ((torch.arange(levels, device=values.device) + 0.5) * count / levels).long().clamp_(max=count - 1)
    centroids = values[:, picks]
    ones = torch.ones_like(values)
    limit = tol * float(values.abs().max().clamp_min(MIN_SCALE))
    for _ in range(iterations):
        cell = nearest(values, centroids)
        sums = torch.zeros_like(centroids).scatter_add_(1, cell, values)
        counts = torch.zeros_like(centroids).scatter_add_(1, cell, ones)
        moved = torch.where(counts > 0, sums / counts.clamp_min(1.0), centroids)
        done = float((moved - centroids).abs().max()) <= limit
        centroids = moved
        if done:
            break
    return centroids


def mracos(x: Tensor, centroids: Tensor, floor: Tensor) -> Tensor:
    """Multi-Regional Absolute Cosine of every value of x (G, M) for ascending centroids (G, n).

    Between neighbours c_j <= x <= c_j+1 it is 1 - |cos(pi (x - c_j) / (c_j+1 - c_j))|: 0 on both
    centroids, 1 midway, each region with its own period. Beyond the outermost centroid it rises the
    same way over half the edge region's width and then linearly with the matching slope, so outliers
    are always pulled back in. Region widths are at least `floor` (G, 1) (snapped centroids may coincide).
    """
    n = centroids.shape[1]
    region = torch.searchsorted(centroids.contiguous(), x.detach().contiguous(), right=True) - 1
    left = region.clamp(0, n - 2)
    c_left, c_right = centroids.gather(1, left), centroids.gather(1, left + 1)
    width = torch.maximum(c_right - c_left, floor)
    inner = 1.0 - torch.cos(math.pi * (x - c_left) / width).abs()
    below, above = x < centroids[:, :1], x > centroids[:, -1:]
    beyond = torch.where(below, centroids[:, :1] - x, x - centroids[:, -1:]) / width
    outer = torch.where(beyond <= 0.5, 1.0 - torch.cos(math.pi * beyond.clamp(max=0.5)),
                        1.0 + math.pi * (beyond - 0.5))
    return torch.where(below | above, outer, inner)


@QUANTIZERS.register("s8bqat")
class SubEightBitQuantizer(RecoveryPhase, WeightQuantizer):
    """Lloyd-Max int8 codebook of 2^b centroids, MRACos regularizer, periodic hard compression.

    The centroids are a buffer fitted once on the weight given at construction (the float baseline);
    `set_bits` refits them on the next weight the quantizer sees. Options: `reg_weight` (the
    regularizer's weight in the loss; it is a mean over the site's weights, 0 to disable),
    `compress_every` (steps between hard compressions, 0 for none), `train_forward` (float or
    quantized), `lloyd_iters`, `rounding` (int8 snapping), `recovery` (the fraction of the fine-tune's
    steps, at its end, in the recovery phase; see the module docstring).
    """

    options: ClassVar[dict[str, Any]] = {"rounding": "half_even", "reg_weight": 1.0, "compress_every": 100,
                                         "train_forward": "float", "lloyd_iters": 30, "recovery": 0.1}

    def __init__(self, bits: int, weight: Tensor, per_channel: bool = True, rounding: str = "half_even",
                 reg_weight: float = 1.0, compress_every: int = 100, train_forward: str = "float",
                 lloyd_iters: int = 30, recovery: float = 0.1) -> None:
        super().__init__(bits, True, per_channel, rounding)
        self.reg_weight = float(reg_weight)
        self.compress_every = int(compress_every)
        self.train_forward = train_forward
        self.lloyd_iters = int(lloyd_iters)
        self.recovery = float(recovery)
        # Set by the training hooks' on_step: whether the fine-tune is in its recovery phase.
        self.recovering = False
        centroids = lloyd_max(groups(weight, per_channel), self.levels, self.lloyd_iters)
        self.register_buffer("centroids", centroids)

    @classmethod
    def check_config(cls, cfg: QuantConfig) -> None:
        super().check_config(cfg)
        if not cfg.symmetric:
            raise PolicyError("Method 's8bqat' stores its centroids on the chip's int8 grid, which has no "
                              "zero point; set 'symmetric: true'.")
        check_number("reg_weight", cfg.options.get("reg_weight", 1.0), 0.0)
        check_number("compress_every", cfg.options.get("compress_every", 100), 0, integer=True)
        check_choice("train_forward", cfg.options.get("train_forward", "float"), TRAIN_FORWARDS)
        check_number("lloyd_iters", cfg.options.get("lloyd_iters", 30), 1, 1000, integer=True)
        check_number("recovery", cfg.options.get("recovery", 0.1), 0.0, 1.0)

    @classmethod
    def from_config(cls, cfg: QuantConfig, weight: Tensor) -> SubEightBitQuantizer:
        cls.check_config(cfg)
        return cls(cfg.weight_bits, weight, cfg.granularity == "per_channel",
                   *(cls.option(cfg, k) for k in ("rounding", "reg_weight", "compress_every", "train_forward",
                                                  "lloyd_iters", "recovery")))

    @property
    def levels(self) -> int:
        return 2 ** self.bits

    @property
    def quantized_in_training(self) -> bool:
        return self.train_forward == "quantized" or self.recovering

    @torch.no_grad()
    def fit(self, weight: Tensor) -> None:
        """Refit the centroids by Lloyd-Max on `weight` at the current bit width."""
        self.centroids = lloyd_max(groups(weight, self.per_channel), self.levels, self.lloyd_iters)

    def _fitted(self, weight: Tensor) -> None:
        if self.centroids.shape[1] != self.levels:  # set_bits changed the width since the last fit
            self.fit(weight)

    def step(self) -> Tensor:
        """Per-group int8 step (G, 1): the largest centroid magnitude maps to 127."""
        return self.centroids.abs().amax(dim=1, keepdim=True).clamp_min(MIN_SCALE) / INT8_MAX

    def codes(self) -> Tensor:
        """The centroids on the int8 grid, (G, 2^bits), integer-valued floats, ascending."""
        return self.rounding.round(self.centroids / self.step())

    @torch.no_grad()
    def codebook(self) -> Tensor:
        """The snapped centroids in weight space, (channels or 1, 2^bits)."""
        return self.codes() * self.step()

    def scale_and_zero_point(self, w: Tensor) -> tuple[Tensor, Tensor | None]:
        self._fitted(w)
        return self.step().reshape(scale_shape(w.shape, self.per_channel)), None

    def _codes_of(self, w: Tensor) -> Tensor:
        """Every weight's int8 code (its nearest snapped centroid), shaped like w, as float."""
        codes = self.codes()
        rows = groups(w.detach(), self.per_channel) / self.step()
        return codes.gather(1, nearest(rows, codes)).reshape(w.shape)

    def forward(self, w: Tensor) -> Tensor:
        self._fitted(w)
        if self.training and self.train_forward == "float" and not self.recovering:
            return w
        scale, _ = self.scale_and_zero_point(w)
        return self._codes_of(w) * scale + (w - w.detach())

    @torch.no_grad()
    def quantize_int(self, w: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        scale, _ = self.scale_and_zero_point(w)
        return self._codes_of(w).to(torch.int8), scale.clone(), torch.zeros_like(scale, dtype=torch.int8)

    def regularizer(self, w: Tensor) -> Tensor:
        """MRACos of the weights (mean over the site): 0 when every weight sits on a centroid."""
        self._fitted(w)
        step = self.step()
        return mracos(groups(w, self.per_channel), self.codes() * step, step).mean()

    @torch.no_grad()
    def hard_compress(self, weight: Tensor) -> None:
        """Snap the float weight, in place, onto its nearest centroid."""
        self._fitted(weight)
        scale, _ = self.scale_and_zero_point(weight)
        weight.copy_(self._codes_of(weight) * scale)

    # --- training hooks -----------------------------------------------------------------------
    def loss_term(self, weight: Tensor) -> Tensor | None:
        # In the recovery phase the weights sit on the codebook by construction: nothing to pull.
        return self.reg_weight * self.regularizer(weight) if self.reg_weight > 0 and not self.recovering else None

    def on_step(self, weight: Tensor, step: int, total_steps: int) -> None:
        recovering = self.in_recovery(step, total_steps)
        if recovering and not self.recovering:
            self.hard_compress(weight)  # the last hard compression: the recovery phase starts from it
        elif not recovering and self.compress_every and step > 0 and step % self.compress_every == 0:
            self.hard_compress(weight)
        self.recovering = recovering

    def on_finish(self, weight: Tensor) -> None:
        self.hard_compress(weight)

    def extra_repr(self) -> str:
        return (f"bits={self.bits}, per_channel={self.per_channel}, reg_weight={self.reg_weight:g}, "
                f"compress_every={self.compress_every}, train_forward={self.train_forward}, "
                f"recovery={self.recovery:g}")
