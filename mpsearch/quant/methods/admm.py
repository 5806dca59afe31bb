"""admm: quantization by the alternating direction method of multipliers (Leng et al. 2018, as used by
Xu et al. 2021).

The float weight W trains on loss + rho/2 ||W - Z + U||^2, where Z is a quantized copy and U the scaled
dual; every K steps the projection Z = Q_b(W + U) and the dual update U += W - Z pull W onto the quantized
set, with rho optionally growing at each update. The projection is Leng et al.'s least-squares fit: per
channel, the scale alpha and the integer codes q of min ||V - alpha q|| are found by alternating
q = clamp(round(V / alpha)) and alpha = <V, q> / <q, q> (parts.least_squares_scale). U is the scaled dual
y / rho, so when rho is multiplied by k, U is divided by k (Boyd et al. 2011, section 3.4.1); without that
the multiplier rho * U would grow with rho and push W past the grid. The training forward is the float W;
eval mode and export use Q_b(W) on the same least-squares grid, which the penalty has driven W close to.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from torch import Tensor

from mpsearch.quant.config import QuantConfig
from mpsearch.quant.options import check_number
from mpsearch.quant.parts import least_squares_scale
from mpsearch.quant.scheduled import ScheduledMethod
from mpsearch.quant.weight_quantizers import QUANTIZERS, UniformQuantizer


@QUANTIZERS.register("admm")
class AdmmQuantizer(ScheduledMethod, UniformQuantizer):
    """A uniform grid at the least-squares scale, plus ADMM's auxiliary Z and dual U (buffers shaped like W).

    Options: `rho` (penalty at the start), `rho_growth` (rho is multiplied by it after every update, and U
    divided by it), `update_every` (steps between ADMM updates), `rounding`. `residuals` records
    ||W - Z|| at every update (the primal residual), for monitoring convergence. Asymmetric grids keep
    the searched min/max range of the uniform quantizer (the least-squares fit has no zero point).
    """

    options: ClassVar[dict[str, Any]] = {"rounding": "half_even", "rho": 0.1, "rho_growth": 1.1,
                                         "update_every": 25}

    def __init__(self, bits: int, weight: Tensor, symmetric: bool = True, per_channel: bool = True,
                 rounding: str = "half_even", rho: float = 0.1, rho_growth: float = 1.1,
                 update_every: int = 25) -> None:
        super().__init__(bits, symmetric, per_channel, rounding)
        self.rho0 = float(rho)
        self.rho_growth = float(rho_growth)
        self.update_every = int(update_every)
        w = weight.detach()
        self.register_buffer("z", self.project(w))
        self.register_buffer("u", torch.zeros_like(w))
        # Updates done so far: rho follows from it, so a resumed run continues the same schedule.
        self.register_buffer("updates", torch.zeros((), dtype=torch.long, device=w.device))
        self.residuals: list[float] = []

    @classmethod
    def check_config(cls, cfg: QuantConfig) -> None:
        super().check_config(cfg)
        check_number("rho", cfg.options.get("rho", 0.1), 0.0, lo_open=True)
        check_number("rho_growth", cfg.options.get("rho_growth", 1.1), 1.0, 10.0)
        check_number("update_every", cfg.options.get("update_every", 25), 1, integer=True)

    @classmethod
    def from_config(cls, cfg: QuantConfig, weight: Tensor) -> AdmmQuantizer:
        cls.check_config(cfg)
        return cls(cfg.weight_bits, weight, cfg.symmetric, cfg.granularity == "per_channel",
                   *(cls.option(cfg, k) for k in ("rounding", "rho", "rho_growth", "update_every")))

    @property
    def quantized_in_training(self) -> bool:
        return False

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
        return w if self.training else super().forward(w)

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
    def loss_term(self, weight: Tensor) -> Tensor | None:
        return self.penalty(weight)

    def on_step(self, weight: Tensor, step: int, total_steps: int) -> None:
        if step > 0 and step % self.update_every == 0:
            self.admm_update(weight)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, rho={self.rho:g}, rho_growth={self.rho_growth:g}, " \
               f"update_every={self.update_every}"
