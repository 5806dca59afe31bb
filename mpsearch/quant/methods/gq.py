"""gq: the General Quantizer (Zhen et al. 2022), learned mu-law centroids with soft-to-hard assignment.

The 2^b centroids are uniform in a mu-law companded space, so in weight space they are dense near zero
(where speech-model weights are) and sparse in the tails; mu (how strongly) and the scale (the outermost
centroid) are parameters trained with the weights, so the codebook adjusts itself during QAT. While the
temperature is above zero the training forward assigns every weight softly to its few nearest centroids
(softmax over negative distances); the trainer's hooks anneal the temperature to zero, after which (and
always in eval mode and at export) the assignment is hard. No regularizer is involved.

On the 8-bit accelerator the centroids are int8 codes: the codebook is snapped to the int8 grid at a
per-channel (or per-tensor) step scale/127, in training as in export, so `quantize_int` returns those
int8 codes and the chip decompresses b-bit indices (`export_indices`) into them.
"""

from __future__ import annotations

import math
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from mpsearch.errors import PolicyError
from mpsearch.quant.config import QuantConfig
from mpsearch.quant.methods.codebook import INT8_MAX, groups, nearest, round_ste
from mpsearch.quant.options import check_number
from mpsearch.quant.parts import MIN_SCALE, grad_scale, scale_shape
from mpsearch.quant.scheduled import ScheduledMethod
from mpsearch.quant.weight_quantizers import QUANTIZERS, WeightQuantizer

# The initial mu and clipping are the pair with the least squared error on the weight among these.
# Both lists are the same at every bit width and mu ~ 0 is the uniform grid, which is what keeps the
# initial error from growing with the bit width (the 8-bit codebook then covers every int8 code).
MU_CANDIDATES = (1e-3, 1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 255.0)
CLIP_CANDIDATES = (1.0, 0.9, 0.8, 0.7, 0.6, 0.5)


def mu_law_expand(u: Tensor, mu: Tensor) -> Tensor:
    """Inverse mu-law compander: u in [-1, 1] -> x in [-1, 1], dense near 0 for mu > 0 (mu -> 0: x = u)."""
    # expm1/log1p keep it exact for small mu, where (1 + mu)^|u| - 1 would cancel.
    return torch.sign(u) * torch.expm1(u.abs() * torch.log1p(mu)) / mu


def unit_centroids(bits: int, mu: Tensor) -> Tensor:
    """The 2^bits centroids in [-1, 1]: uniform in the companded domain, expanded to weight space."""
    u = torch.linspace(-1.0, 1.0, 2 ** bits, dtype=mu.dtype, device=mu.device)
    return mu_law_expand(u, mu)


@QUANTIZERS.register("gq")
class GeneralQuantizer(ScheduledMethod, WeightQuantizer):
    """Learned mu-law codebook of 2^b int8 centroids; soft-to-hard assignment annealed by the trainer's hooks.

    Parameters: `log_mu` (one per tensor) and `log_scale` (per channel or per tensor), so mu and the scale
    stay positive. Hard assignment picks the nearest centroid in weight space; its value carries the
    codebook's gradient (to mu and the scale) and a straight-through gradient to the weight (zero beyond
    the outermost centroid). Soft assignment (training with temperature t > 0) mixes the `neighbours`
    nearest centroids with softmax(-distance / (t * local spacing)); it is built from (weights x
    neighbours) tensors only, never (weights x 2^b), and equals the hard assignment as t -> 0.

    Options: `mu` (initial mu; default: searched with the clipping for the least error), `temperature`
    (start of the anneal, in units of the local centroid spacing), `anneal_end` (fraction of training at
    which it reaches 0), `neighbours` (centroids in the soft assignment), `rounding` (int8 snapping).
    """

    options: ClassVar[dict[str, Any]] = {"rounding": "half_even", "mu": None, "temperature": 0.5,
                                         "anneal_end": 0.75, "neighbours": 3}

    def __init__(self, bits: int, weight: Tensor, per_channel: bool = True, rounding: str = "half_even",
                 mu: float | None = None, temperature: float = 0.5, anneal_end: float = 0.75,
                 neighbours: int = 3) -> None:
        super().__init__(bits, True, per_channel, rounding)
        self.start_temperature = float(temperature)
        self.anneal_end = float(anneal_end)
        self.neighbours = int(neighbours)
        self.temperature = 0.0  # hard until the hooks start the anneal
        w = weight.detach()
        init_mu, init_scale = self._initial_codebook(w, mu)
        self.log_mu = nn.Parameter(torch.tensor(math.log(init_mu), dtype=w.dtype, device=w.device))
        self.log_scale = nn.Parameter(init_scale.log())
        self.values_per_scale = max(groups(w, per_channel).shape[1], 1)
        self.values = max(w.numel(), 1)

    @classmethod
    def check_config(cls, cfg: QuantConfig) -> None:
        super().check_config(cfg)
        if not cfg.symmetric:
            raise PolicyError("Method 'gq' places its mu-law centroids symmetrically about zero with no zero "
                              "point; set 'symmetric: true'.")
        check_number("mu", cfg.options.get("mu"), 0.0, 1e6, lo_open=True, allow_none=True)
        check_number("temperature", cfg.options.get("temperature", 0.5), 0.0, 1e3)
        check_number("anneal_end", cfg.options.get("anneal_end", 0.75), 0.0, 1.0, lo_open=True)
        check_number("neighbours", cfg.options.get("neighbours", 3), 2, 16, integer=True)

    @classmethod
    def from_config(cls, cfg: QuantConfig, weight: Tensor) -> GeneralQuantizer:
        cls.check_config(cfg)
        return cls(cfg.weight_bits, weight, cfg.granularity == "per_channel",
                   *(cls.option(cfg, k) for k in ("rounding", "mu", "temperature", "anneal_end",
                                                  "neighbours")))

    @torch.no_grad()
    def _initial_codebook(self, w: Tensor, mu: float | None) -> tuple[float, Tensor]:
        rows = groups(w, self.per_channel)
        absmax = rows.abs().amax(dim=1).clamp_min(MIN_SCALE)
        clips = torch.tensor(CLIP_CANDIDATES, dtype=w.dtype, device=w.device)
        best: tuple[float, float, Tensor] | None = None
        for candidate in (MU_CANDIDATES if mu is None else (float(mu),)):
            mu_value = torch.tensor(candidate, dtype=w.dtype, device=w.device)
            codes = self.rounding.round(INT8_MAX * unit_centroids(self.bits, mu_value))
            errors = []
            for clip in CLIP_CANDIDATES:
                step = (clip * absmax / INT8_MAX)[:, None]
                errors.append((codes[nearest(rows / step, codes)] * step - rows).pow(2).sum(dim=1))
            error, choice = torch.stack(errors).min(dim=0)  # the best clipping per group
            if best is None or float(error.sum()) < best[0]:
                best = (float(error.sum()), candidate, clips[choice] * absmax)
        _, best_mu, scale = best
        return best_mu, scale.reshape(scale_shape(w.shape, self.per_channel))

    # --- the codebook -------------------------------------------------------------------------
    @property
    def levels(self) -> int:
        return 2 ** self.bits

    @property
    def mu(self) -> Tensor:
        return grad_scale(self.log_mu, 1.0 / math.sqrt(self.values)).exp()

    @property
    def scale(self) -> Tensor:
        """The outermost centroid's magnitude, per channel (shaped to broadcast) or per tensor."""
        return grad_scale(self.log_scale, 1.0 / math.sqrt(self.values_per_scale)).exp()

    def step(self) -> Tensor:
        """The int8 grid step the centroids are snapped to (scale / 127)."""
        return self.scale.clamp_min(MIN_SCALE) / INT8_MAX

    def codes(self) -> Tensor:
        """The centroids as int8 codes (float, integer-valued, ascending), differentiable in mu."""
        return round_ste(INT8_MAX * unit_centroids(self.bits, self.mu), self.rounding)

    @torch.no_grad()
    def int8_codes(self) -> Tensor:
        """The codebook on the chip's int8 grid, shape (2^bits,): weight = int8_codes[index] * step."""
        return self.codes().to(torch.int8)

    @torch.no_grad()
    def codebook(self) -> Tensor:
        """The centroids in weight space: (channels, 2^bits) per channel, (1, 2^bits) per tensor."""
        return self.step().reshape(-1, 1) * self.codes()

    def scale_and_zero_point(self, w: Tensor) -> tuple[Tensor, Tensor | None]:
        return self.step(), None

    # --- assignment ---------------------------------------------------------------------------
    def set_temperature(self, temperature: float) -> None:
        """Soft assignment in training while temperature > 0 (in local centroid spacings); 0 is hard."""
        if isinstance(temperature, bool) or not isinstance(temperature, (int, float)) \
                or not math.isfinite(temperature) or temperature < 0:
            raise PolicyError(f"The GQ temperature must be a finite number >= 0; got {temperature!r}.")
        self.temperature = float(temperature)

    def temperature_at(self, progress: float) -> float:
        """Linear anneal from the start temperature at progress 0 to 0 at `anneal_end`, 0 afterwards."""
        # Still our reading of the paper, whose Sec. 3 we could not check: the linear schedule, the
        # distance in units of the local centroid spacing, and quantizing in every forward (the paper
        # ablates a "quantization frequency", so it may quantize only every few steps).
        return self.start_temperature * max(0.0, 1.0 - progress / self.anneal_end)

    @property
    def quantized_in_training(self) -> bool:
        return self.temperature == 0.0

    def forward(self, w: Tensor) -> Tensor:
        step, codes = self.step(), self.codes()
        if self.training and self.temperature > 0:
            return self._soft(w, codes, step)
        return self._hard(w, codes, step)

    def _hard(self, w: Tensor, codes: Tensor, step: Tensor) -> Tensor:
        v = (w / step).detach()
        q = codes[nearest(v, codes.detach())] * step
        inside = v.abs() <= INT8_MAX
        return q + (w - w.detach()) * inside

    def _soft(self, w: Tensor, codes: Tensor, step: Tensor) -> Tensor:
        n = codes.numel()
        k = min(self.neighbours, n)
        v = w / step
        fixed = codes.detach()
        idx = nearest(v.detach(), fixed)
        # A window of k consecutive centroids around the nearest one (for even k, on v's side of it).
        start = idx - k // 2
        if k % 2 == 0:
            start = start + (v.detach() >= fixed[idx]).long()
        window = start.clamp_(0, n - k).unsqueeze(-1) + torch.arange(k, device=w.device)
        lo, hi = (idx - 1).clamp(min=0), (idx + 1).clamp(max=n - 1)
        # Distances in units of the local spacing, so one temperature means the same softness at every
        # bit width and in the dense centre as in the tails; at least one int8 step (snapped centroids
        # may coincide).
        spacing = ((fixed[hi] - fixed[lo]) / (hi - lo).clamp(min=1)).clamp(min=1.0)
        near = codes[window]
        distance = (v.unsqueeze(-1) - near).abs() / spacing.unsqueeze(-1)
        weights = torch.softmax(distance / -self.temperature, dim=-1)
        return (weights * near).sum(dim=-1) * step

    # --- export -------------------------------------------------------------------------------
    @torch.no_grad()
    def indices(self, w: Tensor) -> Tensor:
        """The hard assignment: index (0 .. 2^bits - 1) of every weight's centroid, as int64."""
        return nearest(w / self.step(), self.codes())

    @torch.no_grad()
    def quantize_int(self, w: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """(int8 codes on the chip grid, step, zero point 0): codes * step equals the hard forward."""
        step, codebook = self.step(), self.codes()
        codes = codebook[nearest(w / step, codebook)].to(torch.int8)
        return codes, step.detach().clone(), torch.zeros_like(step, dtype=torch.int8)

    @torch.no_grad()
    def export_indices(self, w: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """(uint8 indices < 2^bits, int8 codebook (2^bits,), step): weight = codebook[index] * step.

        The storage form: b-bit indices plus one int8 codebook per tensor and one step per channel.
        """
        return self.indices(w).to(torch.uint8), self.int8_codes(), self.step().detach().clone()

    # --- training hooks -----------------------------------------------------------------------
    def on_step(self, weight: Tensor, step: int, total_steps: int) -> None:
        self.set_temperature(self.temperature_at(step / total_steps))

    def on_finish(self, weight: Tensor) -> None:
        self.set_temperature(0.0)

    def get_extra_state(self) -> dict[str, Any]:
        return {"temperature": self.temperature}

    def set_extra_state(self, state: dict[str, Any]) -> None:
        self.temperature = float(state.get("temperature", 0.0))

    def extra_repr(self) -> str:
        mu = float(self.log_mu.detach().exp())
        return (f"bits={self.bits}, per_channel={self.per_channel}, mu={mu:.3g}, "
                f"temperature={self.temperature:g}, neighbours={self.neighbours}")
