"""QuantConfig: how one site is treated. Validated where it is built, naming the site and the field."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

from mpsearch.errors import PolicyError
from mpsearch.registry import Registry

if TYPE_CHECKING:
    from mpsearch.quant.sparsity import Sparsifier

MIN_BITS, MAX_BITS = 2, 8
GRANULARITIES = ("per_channel", "per_tensor")
# Sparsity method name -> Sparsifier class; the classes register themselves in `quant.sparsity`, which
# `mpsearch.quant` imports, so the names are known wherever a SparsityConfig is built.
SPARSIFIERS: Registry[type[Sparsifier]] = Registry("sparsity method")


@dataclass(frozen=True)
class SparsityConfig:
    """Unstructured (`magnitude`, `regrow`, `csp`: `fraction` of zeros) or N:M structured (`nm`: keep n of
    every m)."""

    method: str
    fraction: float | None = None
    n: int | None = None
    m: int | None = None

    def __post_init__(self) -> None:
        if self.method not in SPARSIFIERS:
            raise PolicyError(f"Unknown sparsity method '{self.method}'; valid choices: {', '.join(SPARSIFIERS)}.")
        if self.method == "nm":
            if not (self.n and self.m and 0 < self.n < self.m):
                raise PolicyError(f"N:M sparsity needs 0 < n < m; got n={self.n}, m={self.m}.")
        elif self.fraction is None or not 0.0 < self.fraction < 1.0:
            raise PolicyError(f"The 'fraction' of {self.method} sparsity must be in (0, 1); got {self.fraction}.")

    @property
    def density(self) -> float:
        """Fraction of weights kept."""
        return self.n / self.m if self.method == "nm" else 1.0 - self.fraction

    @classmethod
    def parse(cls, value: Any) -> SparsityConfig | None:
        """Accept None, a SparsityConfig, 'n:m' like '2:4', or a mapping."""
        if value is None or isinstance(value, SparsityConfig):
            return value
        if isinstance(value, str) and ":" in value:
            n, _, m = value.partition(":")
            if not (n.strip().isdigit() and m.strip().isdigit()):
                raise PolicyError(f"N:M sparsity must be written like '2:4'; got '{value}'.")
            return cls("nm", n=int(n), m=int(m))
        if isinstance(value, dict):
            unknown = set(value) - {"method", "fraction", "n", "m"}
            if unknown:
                raise PolicyError(f"Unknown sparsity key(s) {sorted(unknown)}; valid keys: method, fraction, n, m.")
            if "method" not in value:
                raise PolicyError(f"A sparsity mapping needs 'method' ({', '.join(SPARSIFIERS)}).")
            return cls(**value)
        raise PolicyError(f"Sparsity must be null, 'N:M' or a mapping with 'method'; got {value!r}.")


@dataclass(frozen=True)
class QuantConfig:
    """Weight bits, activation bits (None keeps activations float), method, granularity and sparsity."""

    weight_bits: int = 8
    act_bits: int | None = 8
    method: str = "uniform"
    granularity: str = "per_channel"
    symmetric: bool = True
    sparsity: SparsityConfig | None = None
    options: dict[str, Any] = field(default_factory=dict, hash=False)

    def __post_init__(self) -> None:
        for name in ("weight_bits", "act_bits"):
            bits = getattr(self, name)
            if bits is None and name == "act_bits":
                continue
            if not isinstance(bits, int) or isinstance(bits, bool) or not MIN_BITS <= bits <= MAX_BITS:
                raise PolicyError(f"The '{name}' must be an integer in [{MIN_BITS}, {MAX_BITS}]; got {bits!r}.")
        if self.granularity not in GRANULARITIES:
            raise PolicyError(f"The 'granularity' must be one of {', '.join(GRANULARITIES)}; got {self.granularity!r}.")
        object.__setattr__(self, "sparsity", SparsityConfig.parse(self.sparsity))

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        if self.sparsity is None:
            data["sparsity"] = None
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> QuantConfig:
        if not isinstance(data, dict):
            raise PolicyError(f"A QuantConfig must be a mapping; got {data!r}.")
        valid = {f for f in cls.__dataclass_fields__}
        unknown = set(data) - valid
        if unknown:
            raise PolicyError(f"Unknown QuantConfig key(s) {sorted(unknown)}; valid keys: {', '.join(sorted(valid))}.")
        return cls(**data)
