"""The mixed weight: one shared float weight, every candidate quantized, mixed by the probabilities."""

import dataclasses

import pytest
import torch
from torch import nn

from mpsearch.quant import Policy, apply
from mpsearch.quant.modules import QuantLSTM
from mpsearch.supernet import MixedPrecisionWeight, Supernet, SupernetError
from mpsearch.supernet.mixed import Choice


def _weight_of(model: nn.Module, site: str) -> torch.Tensor:
    module_name, _, param = site.rpartition(".") if "weight_" in site else (site, "", "weight")
    return model.get_submodule(module_name).quantized(param)


def test_every_searched_site_is_mixed_and_lstms_are_reparametrised_in_place(toy, toy_space):
    model, _ = toy
    supernet = Supernet(model, toy_space)
    assert set(supernet.mixed) == {s for g in toy_space.groups for s in g.sites}
    encoder = supernet.model.encoder
    assert isinstance(encoder, QuantLSTM)
    assert isinstance(encoder.weight_quantizers["weight_hh_l1"], MixedPrecisionWeight)
    # The shared float weights are the model's own parameter names; the float model is untouched.
    assert {n for n, _ in supernet.model.named_parameters()} >= {n for n, _ in model.named_parameters()}
    assert all(not isinstance(m, QuantLSTM) for m in model.modules())
    # A tied group shares one set of logits; an untied one has a set per site.
    assert [cs.prefix for cs in supernet.choice_sets] == ["encoder", "predictor", "joiner[joiner]"]
    assert [len(cs.choices) for cs in supernet.choice_sets] == [3, 6, 3]


@pytest.mark.parametrize("indices, quantize_activations", [([2, 4, 0], False), ([0, 1, 2], True), ([1, 3, 1], False)])
def test_one_hot_mixture_equals_the_single_quantized_weight(toy, toy_space, indices, quantize_activations):
    model, batches = toy
    supernet = Supernet(model, toy_space, quantize_activations=quantize_activations)
    # One-hot logits (large enough that the softmax is exactly one-hot in float32).
    with torch.no_grad():
        for logits, index in zip(supernet.logits, indices):
            logits.copy_(torch.nn.functional.one_hot(torch.tensor(index), logits.numel()) * 1e4)
    probs = supernet.probabilities(1.0)
    assert all(torch.equal(p, q) for p, q in zip(probs, supernet.one_hot(indices)))
    supernet.set_probs(probs)

    _, policy = supernet.derive()
    if not quantize_activations:  # the supernet then searches with float activations
        policy = Policy({s: dataclasses.replace(policy.resolve(s), act_bits=None) for s in policy.site_names},
                        policy.site_names)
    single = apply(model, policy)
    for site in supernet.mixed:
        cfg = policy.resolve(site)
        module_name, _, param = site.rpartition(".") if "weight_" in site else (site, "", "weight")
        sparsifier = single.get_submodule(module_name).weight_sparsifiers
        if param in sparsifier:  # quant.apply's masks start dense and follow a schedule: set the final one
            sparsifier[param].update(getattr(single.get_submodule(module_name), param))
        assert torch.equal(_weight_of(supernet.model, site), _weight_of(single, site)), (site, cfg)
    feats, tokens, _ = batches[0]
    with torch.no_grad():
        supernet.model.eval()
        single.eval()
        assert torch.equal(supernet(feats, tokens), single(feats, tokens))


def test_the_mixture_is_the_probability_weighted_sum_and_reaches_the_logits():
    weight = torch.randn(8, 12)
    choices = [Choice(2), Choice(4), Choice(8, "2:4")]
    from mpsearch.quant import QuantConfig

    mixed = MixedPrecisionWeight(weight, choices, QuantConfig(), site="w")
    logits = torch.tensor([0.3, -0.2, 0.5], requires_grad=True)
    probs = torch.softmax(logits, 0)
    mixed.set_probs(probs)
    out = mixed(weight)
    expected = sum(p * mixed.candidate(weight, k) for k, p in enumerate(probs))
    assert torch.allclose(out, expected, atol=1e-6)
    assert (mixed.candidate(weight, 2) == 0).float().mean() == 0.5  # 2:4 keeps half
    out.pow(2).sum().backward()
    assert logits.grad is not None and logits.grad.abs().sum() > 0


def test_missing_or_misshapen_probabilities_are_errors(toy, toy_space):
    model, batches = toy
    supernet = Supernet(model, toy_space)
    feats, tokens, _ = batches[0]
    with pytest.raises(SupernetError, match="no mixing probabilities"):
        supernet(feats, tokens)
    with pytest.raises(SupernetError, match="3 candidates"):
        supernet.mixed["joiner"].set_probs(torch.ones(4) / 4)
