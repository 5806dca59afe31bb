"""HardwareProfile: what the latency model knows about one accelerator, loaded from YAML.

Units: clock in MHz, bandwidths in GB/s (1e9 bytes per second), memory in bytes, times in microseconds.
"""

from __future__ import annotations

import itertools
import logging
from importlib import resources
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import AfterValidator, Field, ValidationInfo, field_validator

from mpsearch.artifacts import write_text
from mpsearch.config import Section
from mpsearch.errors import ConfigError
from mpsearch.quant.accelerator import NNANumerics
from mpsearch.quant.config import MAX_BITS, MIN_BITS

log = logging.getLogger(__name__)

# Float sites under `float_policy: fp32` store and move 32-bit words.
FLOAT_BITS = 32
# Without on-the-fly decompression a narrower weight still occupies the chip's native byte.
NATIVE_CONTAINER_BITS = 8
_YAML_HEADER = "# mpsearch hardware profile. Units: MHz, bytes, GB/s (1e9 bytes/s), microseconds.\n"


def _above(bound: float):
    def check(value: float) -> float:
        if not value > bound:
            raise ValueError(f"must be > {bound:g}")
        return value

    return AfterValidator(check)


def _at_least(bound: float):
    def check(value: float) -> float:
        if not value >= bound:
            raise ValueError(f"must be >= {bound:g}")
        return value

    return AfterValidator(check)


Positive = Annotated[float, _above(0)]
NonNegative = Annotated[float, _at_least(0)]
PositiveInt = Annotated[int, _at_least(1)]


class HardwareProfile(Section):
    """One accelerator (or CPU) as the roofline latency model sees it. Frozen; unknown keys are errors.

    Fields and units:
      name, description: free text (the loader fills `name` from the file name when absent).
      clock_mhz: core clock, MHz.
      macs_per_cycle: multiply-accumulates per cycle with 8-bit weights.
      narrow_weight_speedup: {bits: factor >= 1}, MAC throughput multiplier for narrower weights the
        chip packs into its lanes; a width runs at the factor of the narrowest listed width at least as
        wide as itself (2-bit weights ride in 4-bit lanes), or 1. Empty: no speed-up.
      float_macs_per_cycle: MAC rate for float sites under `float_policy: fp32`; None: macs_per_cycle / 4.
      skips_zero_weights: the datapath skips pruned weights, so compute scales with density.
      onchip_memory_bytes: weight storage on chip; when a model's weights all fit, only each site's
        first step of an utterance reads them off chip.
      offchip_bandwidth_gbps: off-chip weight reads, GB/s.
      onchip_bandwidth_gbps: on-chip weight reads, GB/s, at least the off-chip bandwidth; None: free.
      activation_bandwidth_gbps: activation traffic (inputs read, outputs written), GB/s; None: as
        onchip_bandwidth_gbps; both None: free.
      supported_weight_bits: weight widths the chip runs.
      decompress_on_the_fly: narrower weights are stored packed and expanded on chip, so storage and
        off-chip traffic scale with bits; otherwise each weight occupies a byte.
      sparse_format: how pruned weights are stored: none (zeros kept), bitmask (one bit per weight plus
        the kept values) or index (kept values each with a `sparse_index_bits` index).
      activation_bits: width the chip moves activations at; a narrower act_bits still moves at this width.
      layer_overhead_us: fixed cost per site per step (launch, DMA setup), microseconds.
      float_policy: a site the policy keeps float is an error (`reject`) or runs in 32 bits (`fp32`).
      numerics: the chip's integer arithmetic for NNA emulation (keys of
        mpsearch.quant.nna.NNANumerics: activation_bits, accumulator_bits, multiplier_bits, rounding,
        cell_state_bits, lut_bits); validated here, kept as the mapping; None: not an NNA profile.
    """

    name: str = ""
    description: str = ""
    clock_mhz: Positive
    macs_per_cycle: Positive
    narrow_weight_speedup: dict[int, float] = Field(default_factory=dict)
    float_macs_per_cycle: Positive | None = None
    skips_zero_weights: bool = False
    onchip_memory_bytes: Annotated[int, _at_least(0)]
    offchip_bandwidth_gbps: Positive
    onchip_bandwidth_gbps: Positive | None = None
    activation_bandwidth_gbps: Positive | None = None
    supported_weight_bits: list[int]
    decompress_on_the_fly: bool
    sparse_format: Literal["none", "bitmask", "index"] = "none"
    sparse_index_bits: int | None = Field(None, validate_default=True)
    activation_bits: PositiveInt = 8
    layer_overhead_us: NonNegative = 0.0
    float_policy: Literal["reject", "fp32"] = "reject"
    numerics: dict[str, Any] | None = None

    @field_validator("numerics")
    @classmethod
    def _numerics_are_valid(cls, value: dict[str, Any] | None, info: ValidationInfo) -> dict[str, Any] | None:
        if value is None:
            return value
        try:
            numerics = NNANumerics.from_dict(value)
        except ConfigError as exc:
            # "The numerics 'x' must ..." reads "'numerics' key 'x' must ..." after the field name.
            raise ValueError(str(exc).rstrip(".").replace("The numerics '", "key '", 1)) from None
        moved = info.data.get("activation_bits")
        if moved is not None and numerics.activation_bits != moved:
            raise ValueError(f"must have activation_bits equal to the profile's activation_bits ({moved})")
        return value

    @field_validator("onchip_bandwidth_gbps")
    @classmethod
    def _onchip_not_slower(cls, value: float | None, info: ValidationInfo) -> float | None:
        offchip = info.data.get("offchip_bandwidth_gbps")
        # A slower on-chip path would make fitting on chip cost time, and fewer bits with it.
        if value is not None and offchip is not None and value < offchip:
            raise ValueError(f"must be >= offchip_bandwidth_gbps ({offchip:g})")
        return value

    @field_validator("supported_weight_bits")
    @classmethod
    def _bits_in_range(cls, value: list[int]) -> list[int]:
        if not value:
            raise ValueError("must list at least one width")
        bad = [b for b in value if not MIN_BITS <= b <= MAX_BITS]
        if bad:
            raise ValueError(f"must hold widths in [{MIN_BITS}, {MAX_BITS}] (bad: {bad})")
        return sorted(set(value))

    @field_validator("narrow_weight_speedup")
    @classmethod
    def _speedup_grows_as_bits_shrink(cls, value: dict[int, float]) -> dict[int, float]:
        for bits, factor in value.items():
            if not MIN_BITS <= bits <= MAX_BITS or not factor >= 1.0:
                raise ValueError(f"must map widths in [{MIN_BITS}, {MAX_BITS}] to factors >= 1 (bad: {bits}: {factor})")
        ordered = [value[b] for b in sorted(value)]
        # Fewer bits must never run slower, or the search would learn to avoid narrow widths for no reason.
        if any(a < b for a, b in itertools.pairwise(ordered)):
            raise ValueError("must not decrease as the width shrinks")
        return dict(sorted(value.items()))

    @field_validator("sparse_index_bits")
    @classmethod
    def _index_bits_with_index_format(cls, value: int | None, info: ValidationInfo) -> int | None:
        fmt = info.data.get("sparse_format")
        if fmt == "index" and (value is None or value < 1):
            raise ValueError("must be an integer >= 1 when sparse_format is 'index'")
        if fmt != "index" and value is not None:
            raise ValueError(f"is only used with sparse_format 'index' (sparse_format is '{fmt}'); remove it")
        return value

    def speedup(self, weight_bits: int) -> float:
        """MAC throughput multiplier for `weight_bits`-wide weights."""
        wider = [b for b in self.narrow_weight_speedup if b >= weight_bits]
        return self.narrow_weight_speedup[min(wider)] if wider else 1.0

    def stored_bits(self, weight_bits: int) -> int:
        """Bits one dense weight occupies in memory."""
        if weight_bits >= NATIVE_CONTAINER_BITS or self.decompress_on_the_fly:
            return weight_bits
        return NATIVE_CONTAINER_BITS

    def to_yaml(self) -> str:
        return _YAML_HEADER + yaml.safe_dump(self.to_dict(), sort_keys=False, default_flow_style=None, width=100)

    def save(self, path: str | Path) -> None:
        write_text(path, self.to_yaml())

    @classmethod
    def from_yaml(cls, path: str | Path, source: str | None = None) -> HardwareProfile:
        path = Path(path)
        source = source or str(path)
        if not path.is_file():
            raise ConfigError(f"Profile file '{path}' does not exist; pass a shipped profile name "
                              f"({', '.join(shipped_profiles())}) or the path of a profile YAML.")
        try:
            data = yaml.safe_load(path.read_text())
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
            raise ConfigError(f"{source}: YAML syntax error{where}; fix the YAML syntax.") from None
        if not isinstance(data, dict):
            raise ConfigError(f"{source}: a hardware profile must be a YAML mapping; got {type(data).__name__}.")
        data.setdefault("name", path.stem)
        return cls.from_dict(data, source=source)


def shipped_profiles() -> list[str]:
    """Names of the profiles shipped in mpsearch/hardware/profiles/."""
    folder = resources.files("mpsearch.hardware") / "profiles"
    return sorted(p.name[: -len(".yaml")] for p in folder.iterdir() if p.name.endswith(".yaml"))


def load_profile(name_or_path: str | Path) -> HardwareProfile:
    """Load a shipped profile by bare name (`nna-int8`) or a user's profile YAML by path."""
    text = str(name_or_path)
    looks_like_path = isinstance(name_or_path, Path) or text.endswith((".yaml", ".yml")) or "/" in text or "\\" in text
    if looks_like_path:
        return HardwareProfile.from_yaml(text)
    if text not in shipped_profiles():
        raise ConfigError(f"Unknown hardware profile '{text}'; shipped profiles: {', '.join(shipped_profiles())} "
                          "(or pass the path of a profile YAML).")
    with resources.as_file(resources.files("mpsearch.hardware") / "profiles" / f"{text}.yaml") as path:
        profile = HardwareProfile.from_yaml(path, source=f"{text}.yaml")
    log.debug("loaded shipped hardware profile %s", text)
    return profile

