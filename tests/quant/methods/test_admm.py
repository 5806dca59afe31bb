from itertools import pairwise

import pytest
import torch

from mpsearch.errors import PolicyError
from mpsearch.quant import QUANTIZERS, QuantConfig
from mpsearch.quant.methods.admm import AdmmQuantizer


def admm(w, bits=3, **options):
    cfg = QuantConfig(weight_bits=bits, act_bits=None, method="admm", options=options)
    return QUANTIZERS.get("admm").from_config(cfg, w)


def test_trains_float_weights_and_deploys_the_uniform_grid():
    assert QUANTIZERS.get("admm") is AdmmQuantizer
    w = torch.randn(8, 12, generator=torch.Generator().manual_seed(0))
    q = admm(w)
    uniform = QUANTIZERS.get("uniform").from_config(QuantConfig(weight_bits=3, act_bits=None), w)
    assert not q.quantized_in_training and torch.equal(q(w), w)
    q.eval()
    assert torch.equal(q(w), uniform(w)) and torch.equal(q.z, uniform(w)) and not q.u.any()
    codes, scale, _ = q.quantize_int(w)
    assert torch.equal(codes.float() * scale, uniform(w))


def test_primal_residual_falls_on_a_toy_least_squares_problem():
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(256, 16, generator=gen)
    target = torch.randn(4, 16, generator=gen)
    y = x @ target.T
    weight = torch.nn.Parameter(target + 0.3 * torch.randn(4, 16, generator=gen))
    q = admm(weight.detach(), bits=3, rho=1.0, rho_growth=1.05, update_every=10)
    opt = torch.optim.SGD([weight], lr=0.05)
    for step in range(1, 301):
        opt.zero_grad()
        loss = torch.nn.functional.mse_loss(x @ q(weight).T, y) + q.loss_term(weight)
        loss.backward()
        opt.step()
        q.on_step(weight, step, 300)
    residuals = q.residuals
    assert len(residuals) == 30 and q.rho == pytest.approx(1.05 ** 30)
    assert residuals[-1] < 0.05 * residuals[0]
    # Once rho dominates the loss's curvature, every update brings W closer to the grid.
    assert all(later < earlier for earlier, later in pairwise(residuals[3:]))
    q.eval()
    # W has converged onto the grid: deploying Q(W) loses almost nothing.
    assert float((q(weight) - weight).detach().norm()) < 0.1 * residuals[0]


def test_penalty_and_options():
    w = torch.randn(4, 6, generator=torch.Generator().manual_seed(2))
    q = admm(w, rho=2.0)
    assert float(q.penalty(w)) == pytest.approx(float((w - q.z).pow(2).sum()))
    with pytest.raises(PolicyError, match="'rho' must be a number in \\(0, inf\\]"):
        admm(w, rho=0)
    with pytest.raises(PolicyError, match="'update_every'"):
        admm(w, update_every=0)
