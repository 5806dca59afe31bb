import pytest
import torch

from mpsearch.errors import PolicyError
from mpsearch.hardware import Workload, expected_latency, expected_memory, latency
from mpsearch.quant.config import QuantConfig
from mpsearch.quant.policy import Policy

WORKLOAD = Workload(audio_seconds=2.0, encoder_frame_rate_hz=25, tokens_per_second=10)
CANDIDATES = [2, 4, QuantConfig(weight_bits=4, sparsity="2:4"), 8]


def _one_hot(picks):
    return [torch.nn.functional.one_hot(torch.tensor(k), len(CANDIDATES)).to(torch.float32) for k in picks]


def _as_policy(sites, picks):
    def config(choice):
        return QuantConfig(weight_bits=choice) if isinstance(choice, int) else choice

    return Policy({s.name: config(CANDIDATES[k]) for s, k in zip(sites, picks)})


@pytest.mark.parametrize("onchip_memory_bytes", [0, 12_000, 25_000, 1 << 20])
@pytest.mark.parametrize("picks", [[0, 0, 0, 0, 0], [3, 3, 3, 3, 3], [1, 2, 3, 0, 2], [3, 1, 1, 2, 0]])
def test_equals_plain_model_at_one_hot(sites, make_profile, onchip_memory_bytes, picks):
    profile = make_profile(onchip_memory_bytes=onchip_memory_bytes)
    choices = [CANDIDATES] * len(sites)
    report = latency(sites, _as_policy(sites, picks), profile, WORKLOAD)
    probs = _one_hot(picks)
    assert expected_latency(sites, choices, probs, profile, WORKLOAD).item() == pytest.approx(report.latency_ms,
                                                                                             rel=1e-6)
    assert expected_memory(sites, choices, probs, profile).item() == report.memory_bytes


def test_gradients_reach_the_logits(sites, make_profile):
    # 25 kB on chip: the uniform mixture sits near the limit, so the on-chip gate contributes too.
    profile = make_profile(onchip_memory_bytes=25_000)
    logits = [torch.zeros(len(CANDIDATES), requires_grad=True) for _ in sites]
    probs = [torch.softmax(z, dim=0) for z in logits]
    value = expected_latency(sites, [CANDIDATES] * len(sites), probs, profile, WORKLOAD)
    value.backward()
    for site, z in zip(sites, logits):
        assert torch.isfinite(z.grad).all()
        assert z.grad.abs().sum() > 0, site.name
    # Wider weights cost more, so raising their logit must raise the expected latency.
    assert logits[2].grad[3] > 0 > logits[2].grad[0]


def test_onchip_gate_pushes_memory_down_near_the_limit(sites, make_profile):
    choices = [CANDIDATES] * len(sites)
    probs = [torch.full((len(CANDIDATES),), 0.25, requires_grad=True) for _ in sites]
    memory = expected_memory(sites, choices, probs, make_profile()).item()

    def grads(capacity):
        ps = [p.detach().clone().requires_grad_(True) for p in probs]
        expected_latency(sites, choices, ps, make_profile(onchip_memory_bytes=capacity), WORKLOAD).backward()
        return ps[2].grad

    near, far = grads(int(memory * 1.01)), grads(int(memory * 100))
    # The extra pull toward 2 bits comes from the gate's slope, which only matters near capacity.
    assert (near[3] - near[0]) > (far[3] - far[0])


def test_mismatched_probabilities_are_named(sites, make_profile):
    choices = [CANDIDATES] * len(sites)
    probs = _one_hot([0] * len(sites))
    probs[1] = torch.ones(3) / 3
    with pytest.raises(PolicyError, match="'enc.lstm.weight_ih_l0' has 4 candidates"):
        expected_latency(sites, choices, probs, make_profile())
    with pytest.raises(PolicyError, match="one candidate list"):
        expected_memory(sites, choices[:2], probs, make_profile())
