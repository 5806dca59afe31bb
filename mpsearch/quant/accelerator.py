"""NNANumerics: how the accelerator computes, as its hardware profile's `numerics:` section states it.

A config type, like QuantConfig: the hardware profile validates its section with it, so it lives outside
`quant.nna` (which holds the arithmetic itself, in `quant.nna.numerics`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields
from typing import Any

from mpsearch.errors import ConfigError
from mpsearch.quant.rounding import ROUNDINGS

# acc * M must fit int64 with room for a second term and the rounding constant (LSTM gates sum two
# int32 accumulators): 2 * 2^31 * 2^30 + 2^61 < 2^63.
MAX_MULTIPLIER_BITS = 30
MIN_MULTIPLIER_BITS = 8


@dataclass(frozen=True)
class NNANumerics:
    """How the accelerator computes, as stated by its hardware profile's `numerics:` section.

    activation_bits: signed activation width; every tensor between ops is an integer in
      [-2^(b-1), 2^(b-1)-1] with one per-tensor scale and zero point 0.
    accumulator_bits: matmul accumulators saturate to this signed width once, after the sum and the
      bias (int8 x int8 partial sums cannot overflow 32 bits below 2^16 terms, so only the bias add
      can reach the limit).
    multiplier_bits: requantisation multipliers M are unsigned integers below 2^multiplier_bits;
      out = saturate(round(acc * M / 2^shift)).
    rounding: how the right shift rounds, a mode of `mpsearch.quant.rounding.ROUNDINGS`: half_up (ties
      toward +inf, `(x + 2^(s-1)) >> s`), half_even (ties to even) or half_away (ties away from zero).
    cell_state_bits: signed width of the LSTM cell state.
    lut_bits: signed width of lookup-table entries (sigmoid, tanh); tables have 2^activation_bits
      entries indexed by the input code.
    """

    activation_bits: int = 8
    accumulator_bits: int = 32
    multiplier_bits: int = 15
    rounding: str = "half_up"
    cell_state_bits: int = 16
    lut_bits: int = 8

    def __post_init__(self) -> None:
        _check_int("activation_bits", self.activation_bits, 2, 8)
        _check_int("accumulator_bits", self.accumulator_bits, 16, 32)
        _check_int("multiplier_bits", self.multiplier_bits, MIN_MULTIPLIER_BITS, MAX_MULTIPLIER_BITS)
        _check_int("cell_state_bits", self.cell_state_bits, self.activation_bits, 16)
        _check_int("lut_bits", self.lut_bits, 2, 8)
        if self.rounding not in ROUNDINGS:
            raise ConfigError(f"The numerics 'rounding' must be one of {', '.join(ROUNDINGS)}; "
                           f"got {self.rounding!r}.")

    @property
    def act_range(self) -> tuple[int, int]:
        return signed_range(self.activation_bits)

    @property
    def acc_range(self) -> tuple[int, int]:
        return signed_range(self.accumulator_bits)

    @property
    def cell_range(self) -> tuple[int, int]:
        return signed_range(self.cell_state_bits)

    @property
    def lut_range(self) -> tuple[int, int]:
        return signed_range(self.lut_bits)

    @property
    def unit_scale(self) -> float:
        """Scale of LUT outputs in [-1, 1] (sigmoid, tanh): 1 / (2^(lut_bits-1) - 1), so 1.0 is exact."""
        return 1.0 / self.lut_range[1]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any] | None) -> NNANumerics:
        if data is None:
            return cls()
        if not isinstance(data, Mapping):
            raise ConfigError(f"The NNA 'numerics' must be a mapping; got {data!r}.")
        valid = [f.name for f in fields(cls)]
        unknown = sorted(set(data) - set(valid))
        if unknown:
            raise ConfigError(f"Unknown numerics key(s) {unknown}; valid keys: {', '.join(valid)}.")
        return cls(**data)

    @classmethod
    def from_profile(cls, profile: Any) -> NNANumerics:
        """From a HardwareProfile (its `numerics` field) or a profile mapping (its 'numerics' key).

        A profile without a numerics section gets the defaults. Duck-typed: quant never imports hardware.
        """
        if isinstance(profile, Mapping):
            return cls.from_dict(profile.get("numerics"))
        if not hasattr(profile, "numerics"):
            raise ConfigError(f"Expected a hardware profile or a profile mapping; got {type(profile).__name__}.")
        return cls.from_dict(profile.numerics)


def _check_int(name: str, value: Any, lo: int, hi: int) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or not lo <= value <= hi:
        raise ConfigError(f"The numerics '{name}' must be an integer in [{lo}, {hi}]; got {value!r}.")


def signed_range(bits: int) -> tuple[int, int]:
    """[-2^(b-1), 2^(b-1) - 1]: the full two's-complement range the chip saturates to."""
    return -(1 << (bits - 1)), (1 << (bits - 1)) - 1
