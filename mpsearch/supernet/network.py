"""Supernet: a quantized copy of a model whose searched sites use MixedPrecisionWeight, and its logits.

Every entry of `group.prefixes()` of the search space (one per tied group, one per site of an untied
group) is a ChoiceSet: architecture logits over the combinations of the group's weight_bits and
sparsity choices, shared by every site it sets. The supernet searches widths and sparsity only: every
candidate uses the group's first method and first act_bits, and the derived policy names those.
"""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from mpsearch.quant import Policy, QuantConfig, apply, find_sites
from mpsearch.quant.modules import QuantModule
from mpsearch.quant.sites import Site
from mpsearch.space import Group, SearchSpace
from mpsearch.supernet.mixed import Choice, MixedPrecisionWeight, SupernetError


@dataclass(frozen=True)
class ChoiceSet:
    """One set of architecture logits: the parameter prefix, its group, the sites it sets, the candidates,
    and the config every candidate shares (the group's first method and act_bits)."""

    prefix: str
    group: Group
    sites: tuple[str, ...]
    choices: tuple[Choice, ...]
    base: QuantConfig

    def params(self, index: int) -> dict[str, int | str]:
        """The search-space parameters of candidate `index` (fields with one allowed value are fixed)."""
        choice = self.choices[index]
        values = {"weight_bits": choice.weight_bits, "act_bits": self.base.act_bits, "method": self.base.method,
                  "sparsity": choice.sparsity}
        return {f"{self.prefix}.{field}": value for field, value in values.items()
                if len(self.group.choices[field]) > 1}


def choice_sets(space: SearchSpace) -> list[ChoiceSet]:
    sets = []
    for group in space.groups:
        choices = tuple(Choice(bits, sparsity) for bits, sparsity
                        in itertools.product(group.choices["weight_bits"], group.choices["sparsity"]))
        base = QuantConfig(weight_bits=max(group.choices["weight_bits"]), act_bits=group.choices["act_bits"][0],
                           method=group.choices["method"][0])
        for prefix, sites in group.prefixes():
            sets.append(ChoiceSet(prefix, group, tuple(sites), choices, base))
    return sets


class Supernet(nn.Module):
    """A quantized deep copy of `model` (the float model is untouched) with one MixedPrecisionWeight per
    searched site and architecture logits per ChoiceSet, initialised to zero (uniform).

    quantize_activations=False leaves activations float during the search (every candidate of a site
    shares its activation width, so it does not decide between them, and the LSTMs keep their fused
    kernel); True quantizes them at each group's first act_bits. Sites in no group use the space's
    `rest` config throughout.
    """

    def __init__(self, model: nn.Module, space: SearchSpace, quantize_activations: bool = False) -> None:
        super().__init__()
        self.space = space
        self.sites: list[Site] = find_sites(model)
        names = [s.name for s in self.sites]
        if names != list(space.site_names):
            raise SupernetError("The search space was built for another model's sites; build it with "
                                "SearchSpace.from_yaml(path, find_sites(model)) for this model.")
        self.choice_sets = choice_sets(space)
        rules: dict[str, QuantConfig | None] = {}
        for choice_set in self.choice_sets:
            act_bits = choice_set.base.act_bits if quantize_activations else None
            for site in choice_set.sites:
                rules[site] = QuantConfig(weight_bits=choice_set.base.weight_bits, act_bits=act_bits,
                                          method=choice_set.base.method)
        for name in names:
            if name not in rules:
                rest = space.rest
                if rest is not None and not quantize_activations:
                    rest = dataclasses.replace(rest, act_bits=None)
                rules[name] = rest
        self.model = apply(model, Policy(rules, names))
        by_name = {s.name: s for s in self.sites}
        self.mixed: dict[str, MixedPrecisionWeight] = {}
        for choice_set in self.choice_sets:
            for site_name in choice_set.sites:
                site = by_name[site_name]
                module = self.model.get_submodule(site.module)
                if not isinstance(module, QuantModule):
                    raise SupernetError(f"Site '{site_name}' was not quantized; check the model's module types.")
                mixed = MixedPrecisionWeight(getattr(module, site.param), choice_set.choices, choice_set.base,
                                             site=site_name)
                module.weight_quantizers[site.param] = mixed
                self.mixed[site_name] = mixed
        self.logits = nn.ParameterList(nn.Parameter(torch.zeros(len(cs.choices))) for cs in self.choice_sets)

    # --- parameters -------------------------------------------------------------------------------------
    def weight_parameters(self) -> list[nn.Parameter]:
        """The model's trainable parameters (shared float weights, biases, learned quantizer parts)."""
        return [p for p in self.model.parameters() if p.requires_grad]

    def arch_parameters(self) -> list[nn.Parameter]:
        return list(self.logits)

    # --- probabilities ----------------------------------------------------------------------------------
    def probabilities(self, temperature: float = 1.0, generator: torch.Generator | None = None,
                      gumbel: bool = False) -> list[Tensor]:
        """softmax(logits / temperature) per ChoiceSet, or its Gumbel-softmax relaxation (noise drawn
        from `generator`) when `gumbel`."""
        probs = []
        for logits in self.logits:
            scores = logits
            if gumbel:
                uniform = torch.rand(logits.shape, generator=generator).clamp_(1e-10, 1.0 - 1e-7)
                scores = logits - torch.log(-torch.log(uniform)).to(logits.device)
            probs.append(torch.softmax(scores / temperature, dim=0))
        return probs

    def set_probs(self, probs: Sequence[Tensor]) -> None:
        """Give every searched site its ChoiceSet's mixing probabilities for the next forward passes."""
        if len(probs) != len(self.choice_sets):
            raise SupernetError(f"Need one probability vector per choice set ({len(self.choice_sets)}); "
                                f"got {len(probs)}.")
        for choice_set, p in zip(self.choice_sets, probs):
            for site in choice_set.sites:
                self.mixed[site].set_probs(p)

    def one_hot(self, indices: Sequence[int]) -> list[Tensor]:
        """Probabilities that select candidate indices[i] of ChoiceSet i alone."""
        return [torch.nn.functional.one_hot(torch.tensor(i), len(cs.choices)).to(torch.float32)
                for i, cs in zip(indices, self.choice_sets)]

    # --- deriving a policy ------------------------------------------------------------------------------
    def argmax(self) -> list[int]:
        return [int(logits.detach().argmax()) for logits in self.logits]

    def params_for(self, indices: Sequence[int]) -> dict[str, int | str]:
        params: dict[str, int | str] = {}
        for choice_set, index in zip(self.choice_sets, indices):
            params.update(choice_set.params(index))
        return params

    def derive(self, indices: Sequence[int] | None = None) -> tuple[dict[str, int | str], Policy]:
        """(search-space parameters, Policy) of the argmax candidate of every ChoiceSet (or of `indices`):
        the policy comes from `space.to_policy`, so it is a point of the space."""
        indices = self.argmax() if indices is None else list(indices)
        params = self.params_for(indices)
        return params, self.space.to_policy(params)

    def labels(self, indices: Sequence[int]) -> dict[str, str]:
        return {cs.prefix: cs.choices[i].label for cs, i in zip(self.choice_sets, indices)}

    def probability_table(self, probs: Sequence[Tensor]) -> dict[str, dict[str, float]]:
        return {cs.prefix: {c.label: round(float(v), 6) for c, v in zip(cs.choices, p.detach())}
                for cs, p in zip(self.choice_sets, probs)}

    def forward(self, *args, **kwargs):
        return self.model(*args, **kwargs)

