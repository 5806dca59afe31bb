"""Expected latency and memory under per-site probabilities over candidate configs, for DNAS.

Both are linear in the probabilities: each candidate's cost comes from the plain roofline model, so at
one-hot probabilities they equal `latency()` exactly.

The on-chip decision depends on the whole model's memory, so it is taken at the *expected* memory with a
straight-through gate: the forward pass uses the hard decision (expected memory <= onchip_memory_bytes,
exact at one-hot), the backward pass the gradient of sigmoid((capacity - memory) / (temperature *
capacity)). With the default temperature 0.05 the gate's slope is felt within a few percent of capacity,
which tells the search that shrinking a model just over the limit buys the on-chip speed-up.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from mpsearch.errors import PolicyError
from mpsearch.hardware.latency import RooflineLatencyModel, Workload
from mpsearch.hardware.profile import HardwareProfile
from mpsearch.quant.config import QuantConfig
from mpsearch.quant.sites import Site

Choice = QuantConfig | int | None
DEFAULT_ONCHIP_TEMPERATURE = 0.05


def _as_config(choice: Choice) -> QuantConfig | None:
    if choice is None or isinstance(choice, QuantConfig):
        return choice
    if isinstance(choice, int) and not isinstance(choice, bool):
        return QuantConfig(weight_bits=choice)
    raise PolicyError(f"A candidate must be a QuantConfig, a bit width or None (float); got {choice!r}.")


def _checked(sites: Sequence[Site], choices: Sequence[Sequence[Choice]], probs: Sequence[torch.Tensor]):
    if not len(sites) == len(choices) == len(probs):
        raise PolicyError(f"Need one candidate list and one probability vector per site; got {len(sites)} sites, "
                          f"{len(choices)} candidate lists and {len(probs)} probability vectors.")
    for site, cands, p in zip(sites, choices, probs):
        if p.dim() != 1 or p.shape[0] != len(cands):
            raise PolicyError(f"Site '{site.name}' has {len(cands)} candidates but probabilities of shape "
                              f"{tuple(p.shape)}; pass a 1-D tensor with one entry per candidate.")
    return [[_as_config(c) for c in cands] for cands in choices]


def _costs(values: list[float], like: torch.Tensor) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.float64, device=like.device)


def expected_memory(sites: Sequence[Site], choices: Sequence[Sequence[Choice]], probs: Sequence[torch.Tensor],
                    profile: HardwareProfile | str) -> torch.Tensor:
    """Expected weight storage in bytes (float64 scalar): sum over sites of sum_k p_k * bytes(choice_k)."""
    model = RooflineLatencyModel(profile)
    configs = _checked(sites, choices, probs)
    total = torch.zeros((), dtype=torch.float64, device=probs[0].device if probs else None)
    for site, cfgs, p in zip(sites, configs, probs):
        total = total + (p.to(torch.float64) * _costs([model.weight_bytes(site, c) for c in cfgs], p)).sum()
    return total


def expected_latency(sites: Sequence[Site], choices: Sequence[Sequence[Choice]], probs: Sequence[torch.Tensor],
                     profile: HardwareProfile | str, workload: Workload | None = None, *,
                     onchip_temperature: float = DEFAULT_ONCHIP_TEMPERATURE) -> torch.Tensor:
    """Expected utterance latency in milliseconds (float64 scalar), differentiable in `probs`.

    `choices[i]` lists site i's candidates (QuantConfig, bit width or None for float); `probs[i]` is a
    1-D tensor of their probabilities. See the module docstring for the on-chip gate.
    """
    model = RooflineLatencyModel(profile, workload)
    configs = _checked(sites, choices, probs)
    on_terms, off_terms = [], []
    for site, cfgs, p in zip(sites, configs, probs):
        p64 = p.to(torch.float64)
        on_terms.append((p64 * _costs([model.site_latency(site, c, onchip=True).time_us for c in cfgs], p)).sum())
        off_terms.append((p64 * _costs([model.site_latency(site, c, onchip=False).time_us for c in cfgs], p)).sum())
    if not sites:
        return torch.zeros((), dtype=torch.float64)
    on_us, off_us = torch.stack(on_terms).sum(), torch.stack(off_terms).sum()

    memory = expected_memory(sites, choices, probs, model.profile)
    capacity = float(model.profile.onchip_memory_bytes)
    hard = (memory <= capacity).to(torch.float64)
    if capacity > 0 and onchip_temperature > 0:
        soft = torch.sigmoid((capacity - memory) / (onchip_temperature * capacity))
        gate = hard + soft - soft.detach()
    else:
        gate = hard
    return (gate * on_us + (1.0 - gate) * off_us) / 1e3
