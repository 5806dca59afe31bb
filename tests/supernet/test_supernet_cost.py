"""The supernet's expected latency and size are the latency model's, exactly, at one-hot probabilities."""

import itertools

import pytest
import torch

from mpsearch.hardware import RooflineLatencyModel, Workload, load_profile
from mpsearch.supernet import ExpectedCost, Supernet
from mpsearch.supernet.cost import as_latency_model


@pytest.fixture
def latency_model():
    return RooflineLatencyModel(load_profile("nna-int8"), Workload(audio_seconds=2.0, tokens_per_second=8.0))


def test_expected_latency_matches_the_latency_model_at_every_one_hot_point(toy, toy_space, latency_model):
    model, _ = toy
    supernet = Supernet(model, toy_space)
    cost = ExpectedCost(supernet, latency_model)
    sizes = [len(cs.choices) for cs in supernet.choice_sets]
    for indices in itertools.islice(itertools.product(*map(range, sizes)), 0, None, 5):
        _, policy = supernet.derive(indices)
        report = latency_model(supernet.sites, policy)
        probs = supernet.one_hot(indices)
        assert float(cost.latency_ms(probs)) == pytest.approx(report.latency_ms, rel=1e-12)
        assert float(cost.size_bytes(probs)) == pytest.approx(report.memory_bytes, rel=1e-12)
    lo, hi = cost.latency_range
    assert lo < hi
    assert float(cost.latency_penalty(supernet.one_hot([2, 4, 2]))) == pytest.approx(1.0)
    assert float(cost.latency_penalty(supernet.one_hot([0, 1, 0]))) == pytest.approx(0.0)


def test_expected_latency_is_the_probability_weighted_mean_and_differentiable(toy, toy_space, latency_model):
    model, _ = toy
    supernet = Supernet(model, toy_space)
    cost = ExpectedCost(supernet, latency_model)
    # Vary one ChoiceSet, hold the others one-hot: the expectation is linear in its probabilities (the
    # tiny toy model sits on chip at every point, so the on-chip gate does not switch).
    logits = torch.tensor([0.2, -0.4, 1.0], requires_grad=True)
    p = torch.softmax(logits, 0)
    probs = [supernet.one_hot([2, 0, 0])[0], supernet.one_hot([0, 4, 0])[1], p]
    corners = [float(cost.latency_ms([probs[0], probs[1], supernet.one_hot([0, 0, k])[2]])) for k in range(3)]
    expected = cost.latency_ms(probs)
    assert float(expected.detach()) == pytest.approx(sum(float(pk) * c for pk, c in zip(p.detach(), corners)), rel=1e-6)
    assert corners[0] < corners[2]  # 2 bits cost less than 8 on the joiner
    expected.backward()
    # d E / d logit_k = p_k (cost_k - E): the widest candidate's logit raises the latency, the narrowest's lowers it.
    assert float(logits.grad[2]) > 0 > float(logits.grad[0])


def test_a_profile_name_or_object_is_accepted():
    assert as_latency_model("nna-int8").profile.name == "nna-int8"
    assert as_latency_model(load_profile("cpu-int8")).profile.name == "cpu-int8"
