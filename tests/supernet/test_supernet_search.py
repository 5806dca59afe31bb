"""The search: lambda = 0 keeps precision where it matters, a rising lambda lowers latency, and the derived
policies are points of the space; RNN-T (LSTM), Conformer and Transformer LM sites are all searched."""

import itertools
import math

import pytest
import torch
from torch import nn

from mpsearch.config import SupernetConfig
from mpsearch.hardware import RooflineLatencyModel, load_profile
from mpsearch.models import Conformer, ConformerConfig, TransformerLM, TransformerLMConfig
from mpsearch.quant import find_sites
from mpsearch.space import SearchSpace
from mpsearch.supernet import ExpectedCost, MixedPrecisionWeight, Supernet, search


class DistillLoss:
    """Mean squared distance to a teacher's outputs, scaled so quantization noise is felt."""

    def __init__(self, scale: float = 100.0) -> None:
        self.scale = scale

    def __call__(self, model, batch):
        *inputs, target = batch
        return self.scale * (model(*inputs) - target).pow(2).mean()


class Regressor(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.hidden = nn.Linear(16, 32)
        self.out = nn.Linear(32, 4)

    def forward(self, x):
        return self.out(torch.tanh(self.hidden(x)))


def test_lambda_zero_moves_a_sensitive_site_toward_the_highest_precision():
    torch.manual_seed(0)
    model = Regressor()
    with torch.no_grad():
        # One outlier per output channel: at 2 or 4 bits the per-channel grid rounds the other inputs away.
        model.hidden.weight.mul_(3.0)
        model.hidden.weight[:, 0] = 6.0
    gen = torch.Generator().manual_seed(0)
    xs = [torch.randn(32, 16, generator=gen) for _ in range(4)]
    with torch.no_grad():
        batches = [(x, model(x)) for x in xs]
    space = SearchSpace.from_dict({"groups": {"all": {"sites": "*", "weight_bits": [2, 4, 8], "tied": False}}},
                                  find_sites(model))
    for gumbel in (False, True):
        cfg = SupernetConfig(lambdas=(0.0,), steps=20, gumbel=gumbel)
        (candidate,) = search(model, space, "nna-int8", cfg, batches=batches, loss_fn=DistillLoss(10.0))
        probs = candidate.probabilities["all[hidden]"]
        assert max(probs, key=probs.get) == "8b" and probs["8b"] > 0.8, probs
        assert candidate.params["all[hidden].weight_bits"] == 8


def test_a_rising_lambda_gives_monotonically_lower_modelled_latency(toy, toy_space):
    model, batches = toy
    before = {k: v.clone() for k, v in model.state_dict().items()}
    latency_model = RooflineLatencyModel(load_profile("nna-int8"))
    cfg = SupernetConfig(lambdas=(0.0, 0.3, 3.0, 30.0), steps=15, gumbel=True)
    candidates = search(model, toy_space, latency_model, cfg, batches=batches, loss_fn=DistillLoss())
    latencies = [c.latency_ms for c in candidates]
    assert [c.lam for c in candidates] == [0.0, 0.3, 3.0, 30.0]
    assert all(a >= b for a, b in itertools.pairwise(latencies)), latencies
    assert latencies[-1] < latencies[0]
    # A large lambda reaches the cheapest point of the space.
    narrowest, _ = ExpectedCost(Supernet(model, toy_space), latency_model).latency_range
    assert candidates[-1].latency_ms == pytest.approx(narrowest)
    for c in candidates:
        # A point of the space, with the first method of the two the joiner allows.
        assert toy_space.to_policy(c.params) == c.policy
        assert toy_space.params_for(c.policy) == c.params
        assert c.params["joiner[joiner].method"] == "uniform"
        report = latency_model(find_sites(model), c.policy)
        assert c.latency_ms == report.latency_ms and c.size_bytes == report.memory_bytes
        assert c.expected_latency_ms == pytest.approx(c.latency_ms, rel=0.02)
        assert math.isfinite(c.final_loss)
    # The float model is untouched, and every lambda starts from it: the sweep is reproducible.
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    again = search(model, toy_space, latency_model, cfg.model_copy(update={"lambdas": (3.0,)}), batches=batches,
                   loss_fn=DistillLoss())
    assert again[0].params == candidates[2].params and again[0].probabilities == candidates[2].probabilities


def test_a_callable_batch_source_is_drawn_epoch_by_epoch(toy, toy_space):
    model, batches = toy
    seeds = []

    def epoch(seed):
        seeds.append(seed)
        return batches[:3]

    cfg = SupernetConfig(lambdas=(1.0,), steps=4, warmup_steps=1, seed=2)
    search(model, toy_space, "nna-int8", cfg, batches=epoch, loss_fn=DistillLoss())
    # 4 weight batches + 3 logit batches = 7 batches: three epochs of three.
    assert seeds == [2000, 2001, 2002]


def _smoke(model, space_dict, batch):
    space = SearchSpace.from_dict(space_dict, find_sites(model))
    supernet = Supernet(model, space)
    mixed = {name for name, m in supernet.model.named_modules() if hasattr(m, "weight_quantizers")
             for q in m.weight_quantizers.values() if isinstance(q, MixedPrecisionWeight)}
    assert mixed and set(supernet.mixed) == {s for g in space.groups for s in g.sites}
    cfg = SupernetConfig(lambdas=(0.0, 10.0), steps=2, temperature_start=1.0, temperature_end=1.0)
    candidates = search(model, space, "nna-int8", cfg, batches=[batch])
    for c in candidates:
        assert math.isfinite(c.final_loss) and c.latency_ms > 0
        assert c.policy.site_names == [s.name for s in find_sites(model)]
    return space, supernet, candidates


def test_conformer_sites_are_found_and_mixed():
    torch.manual_seed(0)
    model = Conformer(ConformerConfig(n_mels=8, vocab_size=6, d_model=16, n_heads=2, n_layers=1, conv_kernel=3,
                                      dropout=0.0))
    gen = torch.Generator().manual_seed(0)
    batch = (torch.randn(2, 24, 8, generator=gen), torch.tensor([24, 18]), torch.randint(1, 6, (2, 3), generator=gen),
             torch.tensor([3, 2]))
    _, supernet, _ = _smoke(model, {"groups": {
        "attention": {"sites": "re:encoder\\.blocks\\.\\d+\\.attn\\..*", "weight_bits": [4, 8], "sparsity": [None, "2:4"]},
        "blocks": {"sites": "re:encoder\\.blocks\\.\\d+\\.(ff1|ff2|conv)\\..*", "weight_bits": [2, 4, 8], "tied": False},
    }}, batch)
    assert "encoder.blocks.0.attn.q" in supernet.mixed and "encoder.blocks.0.conv.depthwise" in supernet.mixed
    assert "frontend.conv1" not in supernet.mixed  # in no group: the space's rest (8 bits)


def test_transformer_lm_sites_are_found_and_mixed():
    torch.manual_seed(0)
    model = TransformerLM(TransformerLMConfig(vocab_size=6, d_model=16, n_heads=2, n_layers=1, dropout=0.0))
    batch = (torch.randint(1, 6, (3, 7), generator=torch.Generator().manual_seed(0)), torch.tensor([7, 5, 3]))
    _, supernet, candidates = _smoke(model, {"groups": {
        "embedding": {"sites": ["embed", "head"], "weight_bits": [4, 8]},
        "blocks": {"sites": "blocks.*", "weight_bits": [2, 4, 8], "sparsity": [None, "2:4"]},
    }}, batch)
    assert set(supernet.mixed) == {s.name for s in find_sites(model)}
    assert {"embedding.weight_bits", "blocks.weight_bits", "blocks.sparsity"} == set(candidates[0].params)
