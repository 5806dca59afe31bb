"""Expected latency and weight size of a supernet under its ChoiceSets' probabilities.

Both come from `mpsearch.hardware.differentiable` (linear in the probabilities, exact at one-hot), over
every site of the model: searched sites take their ChoiceSet's probabilities, the others their fixed
`rest` config with probability one. The penalties are normalised by the space's range (the all-widest
minus the all-narrowest policy) so that one lambda means the same trade-off on any model and profile:
lambda = 1 prices the whole latency range of the space at one unit of task loss.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from mpsearch.errors import ConfigError
from mpsearch.hardware import HardwareProfile, RooflineLatencyModel, expected_latency, expected_memory
from mpsearch.quant.config import QuantConfig
from mpsearch.supernet.network import Supernet

LatencySource = RooflineLatencyModel | HardwareProfile | str


def as_latency_model(source: LatencySource) -> RooflineLatencyModel:
    """A RooflineLatencyModel as given, or one for a profile (object, shipped name or YAML path)."""
    if isinstance(source, RooflineLatencyModel):
        return source
    if isinstance(source, (HardwareProfile, str)):
        return RooflineLatencyModel(source)
    raise ConfigError(f"Expected a hardware profile, a profile name or a RooflineLatencyModel; got "
                      f"{type(source).__name__}.")


class ExpectedCost:
    """`latency_ms(probs)` and `size_bytes(probs)` of a supernet, plus the space's range of each."""

    def __init__(self, supernet: Supernet, latency_model: LatencySource) -> None:
        self.latency_model = as_latency_model(latency_model)
        self.sites = supernet.sites
        self.choice_sets = supernet.choice_sets
        owner = {site: i for i, cs in enumerate(self.choice_sets) for site in cs.sites}
        rest = supernet.space.rest
        self._slots: list[int | None] = [owner.get(s.name) for s in self.sites]
        self._choices: list[list[QuantConfig | None]] = [
            [c.config(self.choice_sets[slot].base) for c in self.choice_sets[slot].choices] if slot is not None
            else [rest] for slot in self._slots]
        widest = [max(range(len(cs.choices)), key=lambda i, cs=cs: _footprint(cs.choices[i])) for cs in self.choice_sets]
        narrowest = [min(range(len(cs.choices)), key=lambda i, cs=cs: _footprint(cs.choices[i])) for cs in self.choice_sets]
        with torch.no_grad():
            hi, lo = supernet.one_hot(widest), supernet.one_hot(narrowest)
            self.latency_range = (float(self.latency_ms(lo)), float(self.latency_ms(hi)))
            self.size_range = (float(self.size_bytes(lo)), float(self.size_bytes(hi)))

    def _site_probs(self, probs: Sequence[Tensor]) -> list[Tensor]:
        one = torch.ones(1, dtype=torch.float64, device=probs[0].device if probs else None)
        return [probs[slot] if slot is not None else one for slot in self._slots]

    def latency_ms(self, probs: Sequence[Tensor]) -> Tensor:
        """Expected utterance latency in ms (float64 scalar), differentiable in `probs`."""
        return expected_latency(self.sites, self._choices, self._site_probs(probs), self.latency_model.profile,
                                self.latency_model.workload)

    def size_bytes(self, probs: Sequence[Tensor]) -> Tensor:
        """Expected weight storage in bytes (float64 scalar), differentiable in `probs`."""
        return expected_memory(self.sites, self._choices, self._site_probs(probs), self.latency_model.profile)

    def latency_penalty(self, probs: Sequence[Tensor]) -> Tensor:
        """(E[latency] - narrowest) / (widest - narrowest): 0 at the all-narrowest policy, 1 at the widest."""
        return self.normalised_latency(self.latency_ms(probs))

    def normalised_latency(self, latency_ms: Tensor) -> Tensor:
        lo, hi = self.latency_range
        return (latency_ms - lo) / _span(lo, hi)

    def size_penalty(self, probs: Sequence[Tensor]) -> Tensor:
        lo, hi = self.size_range
        return (self.size_bytes(probs) - lo) / _span(lo, hi)


def _footprint(choice) -> tuple[float, int]:
    config = choice.sparsity_config
    density = config.density if config is not None else 1.0
    return choice.weight_bits * density, choice.weight_bits


def _span(lo: float, hi: float) -> float:
    # A space whose policies all cost the same still gets a finite (and then constant) penalty.
    return hi - lo if hi > lo else max(abs(hi), 1.0)
