"""admm: quantization by the alternating direction method of multipliers (Leng et al. 2018, as used by
Xu et al. 2021).

The float weight W trains on loss + rho/2 ||W - Z + U||^2, where Z is a quantized copy and U the scaled
dual; every K steps the projection Z = Q_b(W + U) and the dual update U += W - Z pull W onto the quantized
set, with rho optionally growing at each update. The projection is Leng et al.'s least-squares fit: per
channel, the scale alpha and the integer codes q of min ||V - alpha q|| are found by alternating
q = clamp(round(V / alpha)) and alpha = <V, q> / <q, q> (parts.least_squares_scale). U is the scaled dual
y / rho, so when rho is multiplied by k, U is divided by k (Boyd et al. 2011, section 3.4.1); without that
the multiplier rho * U would grow with rho and push W past the grid.

The schedule is a function of the fine-tune's length, so a 15-step trial and a 2,000-step fine-tune both
get it whole: `updates` ADMM updates spread evenly over the first (1 - `recovery`) of the steps, rho
multiplied by `rho_growth` at each, then a recovery phase: training on Q_b(W) with straight-through
gradients and no penalty (the "masked retraining" after ADMM of Zhang et al. 2018 and Ren et al. 2019,
ADMM-NN). Why the recovery phase: under AdamW a weight moves at most about lr per step whatever rho is, so
with a fine-tune's small lr W cannot travel the whole way to the grid, and the dual, which integrates the
residual, then overshoots (measured on the shipped RNN-T at 3 bits: ||W - Z|| stalls at a fifth of ||Z||
for rho from 0.1 to 580). Before the recovery phase the training forward is the float W; in it, and in
eval mode and export, the forward is Q_b(W) on the same least-squares grid.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from torch import Tensor

from mpsearch.quant.config import QuantConfig
from mpsearch.quant.options import check_number
from mpsearch.quant.parts import least_squares_scale
from mpsearch.quant.scheduled import RecoveryPhase
from mpsearch.quant.weight_quantizers import QUANTIZERS, UniformQuantizer


@QUANTIZERS.register("admm")
class AdmmQuantizer(RecoveryPhase, UniformQuantizer):
    """A uniform grid at the least-squares scale, plus ADMM's auxiliary Z and dual U (buffers shaped like W).

    Options: `rho` (penalty at the start), `rho_growth` (rho is multiplied by it after every update, and U
    divided by it), `updates` (ADMM updates over the fine-tune), `recovery` (the fraction of the steps,
    at the end, trained on the grid without the penalty; 0: ADMM to the last step), `rounding`.
    `residuals` records ||W - Z|| at every update (the primal residual), for monitoring convergence.
    Asymmetric grids keep the searched min/max range of the uniform quantizer (the least-squares fit has
    no zero point).
    """

    # Defaults measured on the shipped RNN-T at 3 bits, 100-200 steps (rho 0.1 to 10, growth 1 to 2, 4 to 10
    # updates): 4 updates from rho 0.3 doubling shrank ||W - Z|| the most before recovery.
    options: ClassVar[dict[str, Any]] = {"rounding": "half_even", "rho": 0.3, "rho_growth": 2.0, "updates": 4,
                                         "recovery": 0.2}

    def __init__(self, bits: int, weight: Tensor, symmetric: bool = True, per_channel: bool = True,
                 rounding: str = "half_even", rho: float = 0.3, rho_growth: float = 2.0, updates: int = 4,
                 recovery: float = 0.2) -> None:
        super().__init__(bits, symmetric, per_channel, rounding)
        self.rho0 = float(rho)
        self.rho_growth = float(rho_growth)
        self.n_updates = int(updates)
        self.recovery = float(recovery)
        self.recovering = False
        w = weight.detach()
        self.register_buffer("z", self.project(w))
        self.register_buffer("u", torch.zeros_like(w))
        # Updates done so far: rho follows from it, so a resumed run continues the same schedule.
        self.register_buffer("updates", torch.zeros((), dtype=torch.long, device=w.device))
        self.residuals: list[float] = []

    @classmethod
    def check_config(cls, cfg: QuantConfig) -> None:
        super().check_config(cfg)
        check_number("rho", cls.option(cfg, "rho"), 0.0, lo_open=True)
        check_number("rho_growth", cls.option(cfg, "rho_growth"), 1.0, 10.0)
        check_number("updates", cls.option(cfg, "updates"), 1, integer=True)
        check_number("recovery", cls.option(cfg, "recovery"), 0.0, 1.0)

    @classmethod
    def from_config(cls, cfg: QuantConfig, weight: Tensor) -> AdmmQuantizer:
        cls.check_config(cfg)
        return cls(cfg.weight_bits, weight, cfg.symmetric, cfg.granularity == "per_channel",
                   *(cls.option(cfg, k) for k in ("rounding", "rho", "rho_growth", "updates",
                                                                    "recovery")))

    @property
    def quantized_in_training(self) -> bool:
        return self.recovering

    @property
    def rho(self) -> float:
        return self.rho0 * self.rho_growth ** int(self.updates)

    def scale_and_zero_point(self, w: Tensor) -> tuple[Tensor, Tensor | None]:
        if self.width.mode == "asymmetric":
            return super().scale_and_zero_point(w)
        return least_squares_scale(w, self.width, self.per_channel), None

    @torch.no_grad()
    def project(self, x: Tensor) -> Tensor:
        """Q_b(x): alpha * q with the least-squares scale alpha and codes q of x, per channel."""
        return super().forward(x)

    def forward(self, w: Tensor) -> Tensor:
        return w if self.training and not self.recovering else super().forward(w)

    def penalty(self, w: Tensor) -> Tensor:
        """rho/2 ||W - Z + U||^2 (a sum over the site's weights)."""
        return 0.5 * self.rho * (w - self.z + self.u).pow(2).sum()

    @torch.no_grad()
    def admm_update(self, w: Tensor) -> float:
        """Z = Q_b(W + U), U += W - Z, then rho *= rho_growth and U /= rho_growth (the multiplier rho * U is
        unchanged); returns (and records) the primal residual ||W - Z||."""
        w = w.detach()
        self.z.copy_(self.project(w + self.u))
        self.u.add_(w - self.z)
        self.updates += 1
        self.u.div_(self.rho_growth)
        residual = float((w - self.z).norm())
        self.residuals.append(residual)
        return residual

    # --- training hooks -----------------------------------------------------------------------
    def update_steps(self, total_steps: int) -> range:
        """The steps after which ADMM updates Z and U: `updates` of them, evenly spaced before recovery."""
        every = max(1, self.recovery_start(total_steps) // self.n_updates)
        return range(every, min(self.n_updates * every, self.recovery_start(total_steps)) + 1, every)

    def loss_term(self, weight: Tensor) -> Tensor | None:
        # In the recovery phase the forward is on the grid by construction: nothing to pull.
        return None if self.recovering else self.penalty(weight)

    def on_step(self, weight: Tensor, step: int, total_steps: int) -> None:
        if step in self.update_steps(total_steps):
            self.admm_update(weight)
        self.recovering = self.in_recovery(step, total_steps)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, rho={self.rho:g}, rho_growth={self.rho_growth:g}, " \
               f"updates={self.n_updates}, recovery={self.recovery:g}"
