"""Roofline latency and memory of a policy on a hardware profile, per site and per utterance.

Per site and step: time = max(compute, weight reads, activation traffic) + layer_overhead_us.
- compute: MACs / (macs_per_cycle * narrow-weight speed-up * clock); scaled by density only when the
  profile `skips_zero_weights`.
- weight reads: when the whole model's weights fit in `onchip_memory_bytes`, each site's first step of
  an utterance reads its weights from off-chip memory (overlapped with its compute, like any read) and
  every later step reads them on chip; otherwise every step re-reads them from off-chip memory. So an
  on-chip model is never slower than the same model off chip, and fewer bits never cost time. An
  embedding reads one row per step.
- activation traffic: inputs read plus outputs written, at the chip's activation width.
Weight storage counts the codebooks of the centroid methods: where sub-8-bit weights are stored packed,
an s8bqat or gq weight is a b-bit index into a table of 2^b int8 centroids that the chip holds beside it
(CODEBOOK_TABLES says how many tables a site has).
Steps per utterance come from the site's `step` and the Workload: frame -> frames, token -> tokens,
joint -> frames + tokens (greedy RNN-T runs the joiner once per frame and once per emitted token),
lm -> `lm_tokens` (default: tokens). With `chunk_frames`, frame sites run once per chunk on
`chunk_frames` frames at a time (weights read once per chunk), except the recurrent matrices (`lstm_hh`,
`gru_hh`, `rnn_hh`), which need the previous frame's state.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from typing import Any

from mpsearch.config import Section
from mpsearch.errors import ConfigError, PolicyError
from mpsearch.hardware.profile import (
    FLOAT_BITS,
    NATIVE_CONTAINER_BITS,
    HardwareProfile,
    NonNegative,
    Positive,
    PositiveInt,
    load_profile,
)
from mpsearch.quant.config import QuantConfig
from mpsearch.quant.policy import Policy
from mpsearch.quant.sites import RECURRENT_KINDS, Site

log = logging.getLogger(__name__)

STEPS = ("frame", "token", "joint", "lm")
BOUNDS = ("compute", "memory", "activation")
# Float compute on an int8 datapath: 32-bit lanes hold a quarter of the 8-bit ones.
FLOAT_MAC_RATE_DIVISOR = 4.0
# Methods whose weights index a table of 2^b int8 centroids, and how many tables a site holds: s8bqat
# fits one per quantization group (each output channel unless granularity is per_tensor), gq one per
# tensor (with a step per channel). Weights stored in full int8 containers hold the centroid's int8 value
# itself and need no table, which is also how a compiler stores a layer whose tables would outweigh the
# savings. The per-channel scales are not counted for any method (every method has the same ones).
CODEBOOK_TABLES = {"s8bqat": "per_group", "gq": "per_tensor"}
CODEBOOK_ENTRY_BITS = 8
_BYTES_PER_US_PER_GBPS = 1e3


class Workload(Section):
    """One utterance as the latency model sees it.

    audio_seconds: utterance length. encoder_frame_rate_hz: encoder frames per second after
    subsampling. tokens_per_second: emitted tokens per second of audio. chunk_frames: frames per chunk
    for chunked (Conformer-style) encoders; None runs frame sites once per frame. lm_tokens: tokens the
    LM scores per utterance; None: the emitted tokens.
    """

    audio_seconds: Positive = 1.0
    encoder_frame_rate_hz: Positive = 25.0
    tokens_per_second: NonNegative = 12.0
    chunk_frames: PositiveInt | None = None
    lm_tokens: NonNegative | None = None

    @property
    def frames(self) -> float:
        return self.audio_seconds * self.encoder_frame_rate_hz

    @property
    def tokens(self) -> float:
        return self.audio_seconds * self.tokens_per_second

    def steps(self, site: Site) -> tuple[float, int]:
        """(invocations per utterance, frames per invocation) for `site`."""
        if site.step == "frame":
            if self.chunk_frames and site.kind not in RECURRENT_KINDS:
                return self.frames / self.chunk_frames, self.chunk_frames
            return self.frames, 1
        if site.step == "token":
            return self.tokens, 1
        if site.step == "joint":
            return self.frames + self.tokens, 1
        if site.step == "lm":
            return (self.tokens if self.lm_tokens is None else self.lm_tokens), 1
        raise ConfigError(f"Site '{site.name}' has step '{site.step}', which the latency model does not know; "
                          f"valid steps: {', '.join(STEPS)}.")


@dataclass(frozen=True)
class StepCost:
    """Microseconds of one invocation of one site, before the fixed overhead."""

    compute_us: float
    weight_read_us: float
    activation_us: float

    @property
    def roof_us(self) -> float:
        return max(self.compute_us, self.weight_read_us, self.activation_us)

    @property
    def bound(self) -> str:
        terms = (self.compute_us, self.weight_read_us, self.activation_us)
        return BOUNDS[terms.index(max(terms))]


@dataclass(frozen=True)
class SiteLatency:
    """One row of a LatencyReport: a site's storage and its time over one utterance."""

    name: str
    kind: str
    step: str
    weight_bits: int
    act_bits: int
    density: float
    weight_bytes: int
    steps: float
    compute_us: float
    weight_read_us: float
    activation_us: float
    time_us: float
    bound: str
    onchip: bool


@dataclass(frozen=True)
class LatencyReport:
    """Per-site rows and utterance totals: latency_ms, memory_bytes (weight storage), avg_weight_bits."""

    rows: list[SiteLatency]
    latency_ms: float
    memory_bytes: int
    avg_weight_bits: float
    onchip: bool
    profile: str
    workload: dict[str, Any] = field(default_factory=dict)

    def metrics(self) -> dict[str, float]:
        """The hardware metrics of a trial, under TrialResult's names."""
        return {"latency_ms": self.latency_ms, "size_bytes": self.memory_bytes,
                "avg_weight_bits": self.avg_weight_bits}

    def to_dict(self) -> dict[str, Any]:
        return {"profile": self.profile, "workload": self.workload, "latency_ms": self.latency_ms,
                "memory_bytes": self.memory_bytes, "avg_weight_bits": self.avg_weight_bits,
                "onchip": self.onchip, "sites": [asdict(r) for r in self.rows]}

    def to_frame(self):
        """Per-site rows as a pandas DataFrame."""
        import pandas as pd

        return pd.DataFrame([asdict(r) for r in self.rows], columns=list(SiteLatency.__dataclass_fields__))


def _io_features(site: Site) -> tuple[int, int]:
    if site.kind == "embedding":
        return 0, site.shape[1]
    if site.kind == "conv1d" and site.shape[1] == 1:
        # A depthwise conv (one input channel per group) reads as many channels as it writes.
        return site.shape[0], site.shape[0]
    return site.shape[1], site.shape[0]


class RooflineLatencyModel:
    """`(sites, policy) -> LatencyReport` for one profile and workload; `latency()` is the usual entry."""

    def __init__(self, profile: HardwareProfile | str, workload: Workload | None = None):
        self.profile = load_profile(profile) if isinstance(profile, str) else profile
        self.workload = workload or Workload()

    def widths(self, site: Site, cfg: QuantConfig | None) -> tuple[int, int, float]:
        """(weight bits, activation bits, density) the chip runs `site` at; PolicyError if it cannot."""
        p = self.profile
        if cfg is None:
            if p.float_policy == "reject":
                raise PolicyError(f"Site '{site.name}' is kept float, but profile '{p.name}' runs integer weights "
                                  f"only (float_policy: reject); give it a bit width in "
                                  f"{p.supported_weight_bits} or use a profile with float_policy: fp32.")
            return FLOAT_BITS, FLOAT_BITS, 1.0
        if cfg.weight_bits not in p.supported_weight_bits:
            raise PolicyError(f"Site '{site.name}' has weight_bits {cfg.weight_bits}, which profile '{p.name}' "
                              f"does not support; supported widths: {p.supported_weight_bits}.")
        act_bits = max(cfg.act_bits or p.activation_bits, p.activation_bits)
        density = cfg.sparsity.density if cfg.sparsity is not None else 1.0
        return cfg.weight_bits, act_bits, density

    def weight_bytes(self, site: Site, cfg: QuantConfig | None) -> int:
        """Storage of `site`'s weights, sparse-format overhead and codebooks included."""
        bits, _, density = self.widths(site, cfg)
        return self._weight_bytes(site, bits, density, cfg)

    def codebook_bits(self, site: Site, cfg: QuantConfig | None) -> int:
        """Bits of the centroid tables `site`'s weights index (0 for grid methods and int8 storage)."""
        layout = CODEBOOK_TABLES.get(cfg.method) if cfg is not None else None
        if layout is None or self.profile.stored_bits(cfg.weight_bits) >= NATIVE_CONTAINER_BITS:
            return 0
        tables = site.shape[0] if layout == "per_group" and cfg.granularity == "per_channel" else 1
        return tables * 2 ** cfg.weight_bits * CODEBOOK_ENTRY_BITS

    def _weight_bytes(self, site: Site, bits: int, density: float, cfg: QuantConfig | None = None) -> int:
        stored = bits if bits == FLOAT_BITS else self.profile.stored_bits(bits)
        total = self._stored_bits(site, stored, density)
        tables = self.codebook_bits(site, cfg)
        if tables:
            # A compiler stores the centroids' int8 values themselves when the tables would cost more.
            total = min(total + tables, self._stored_bits(site, NATIVE_CONTAINER_BITS, density))
        return math.ceil(total / 8)

    def _stored_bits(self, site: Site, stored: int, density: float) -> int:
        p = self.profile
        dense = site.numel * stored
        if density >= 1.0 or p.sparse_format == "none":
            return dense
        kept = round(site.numel * density)
        if p.sparse_format == "bitmask":
            sparse = kept * stored + site.numel
        else:
            sparse = kept * (stored + p.sparse_index_bits)
        # A compiler keeps a layer dense when its sparse encoding would be larger.
        return min(dense, sparse)

    def step_cost(self, site: Site, cfg: QuantConfig | None, frames_per_step: int = 1,
                  onchip: bool = False) -> StepCost:
        """Compute, weight-read and activation microseconds of one invocation of `site`."""
        p = self.profile
        bits, act_bits, density = self.widths(site, cfg)
        weight_bytes = self._weight_bytes(site, bits, density, cfg)

        if bits == FLOAT_BITS:
            mac_rate = p.float_macs_per_cycle or p.macs_per_cycle / FLOAT_MAC_RATE_DIVISOR
        else:
            mac_rate = p.macs_per_cycle * p.speedup(bits)
        macs = site.macs * frames_per_step * (density if p.skips_zero_weights else 1.0)
        compute_us = macs / (mac_rate * p.clock_mhz)

        read_bytes = weight_bytes / site.shape[0] if site.kind == "embedding" else weight_bytes
        if onchip:
            read_us = read_bytes / (p.onchip_bandwidth_gbps * _BYTES_PER_US_PER_GBPS) if p.onchip_bandwidth_gbps else 0.0
        else:
            read_us = read_bytes / (p.offchip_bandwidth_gbps * _BYTES_PER_US_PER_GBPS)

        n_in, n_out = _io_features(site)
        act_bandwidth = p.activation_bandwidth_gbps or p.onchip_bandwidth_gbps
        act_bytes = (n_in + n_out) * frames_per_step * act_bits / 8
        act_us = act_bytes / (act_bandwidth * _BYTES_PER_US_PER_GBPS) if act_bandwidth else 0.0
        return StepCost(compute_us, read_us, act_us)

    def site_latency(self, site: Site, cfg: QuantConfig | None, onchip: bool) -> SiteLatency:
        """One site's row over one utterance, given whether the whole model sits on chip."""
        bits, act_bits, density = self.widths(site, cfg)
        weight_bytes = self._weight_bytes(site, bits, density, cfg)
        steps, frames_per_step = self.workload.steps(site)
        offchip_cost = self.step_cost(site, cfg, frames_per_step, onchip=False)
        cost = self.step_cost(site, cfg, frames_per_step, onchip=True) if onchip else offchip_cost
        # Fractional steps are expected counts; the off-chip first step is at most the steps there are.
        first = min(steps, 1.0) if onchip else 0.0
        return SiteLatency(
            name=site.name, kind=site.kind, step=site.step, weight_bits=bits, act_bits=act_bits,
            density=density, weight_bytes=weight_bytes, steps=steps,
            compute_us=steps * cost.compute_us,
            weight_read_us=steps * cost.weight_read_us + first * (offchip_cost.weight_read_us - cost.weight_read_us),
            activation_us=steps * cost.activation_us,
            time_us=steps * (cost.roof_us + self.profile.layer_overhead_us) + first * (offchip_cost.roof_us - cost.roof_us),
            bound=cost.bound, onchip=onchip)

    def __call__(self, sites: Iterable[Site], policy: Policy) -> LatencyReport:
        sites = list(sites)
        configs = [policy.resolve(s.name) for s in sites]
        memory = sum(self.weight_bytes(s, c) for s, c in zip(sites, configs))
        onchip = memory <= self.profile.onchip_memory_bytes
        rows = [self.site_latency(s, c, onchip) for s, c in zip(sites, configs)]
        numel = sum(s.numel for s in sites)
        avg_bits = sum(r.weight_bits * s.numel for r, s in zip(rows, sites)) / numel if numel else 0.0
        report = LatencyReport(rows=rows, latency_ms=sum(r.time_us for r in rows) / 1e3, memory_bytes=memory,
                               avg_weight_bits=avg_bits, onchip=onchip, profile=self.profile.name,
                               workload=self.workload.to_dict())
        log.debug("latency on %s: %.3f ms, %d bytes (%s chip)", self.profile.name, report.latency_ms, memory,
                  "on" if onchip else "off")
        return report


def latency(sites: Iterable[Site], policy: Policy, profile: HardwareProfile | str,
            workload: Workload | None = None) -> LatencyReport:
    """Modelled latency and weight memory of `policy` over `sites` on `profile` for one utterance."""
    return RooflineLatencyModel(profile, workload)(sites, policy)
