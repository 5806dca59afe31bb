import pytest
import torch

from mpsearch.errors import PolicyError
from mpsearch.quant import QUANTIZERS, QuantConfig
from mpsearch.quant.methods.admm import AdmmQuantizer
from mpsearch.quant.parts import BitWidth, least_squares_scale


def admm(w, bits=3, **options):
    cfg = QuantConfig(weight_bits=bits, act_bits=None, method="admm", options=options)
    return QUANTIZERS.get("admm").from_config(cfg, w)


def test_trains_float_weights_and_deploys_the_least_squares_grid():
    assert QUANTIZERS.get("admm") is AdmmQuantizer
    w = torch.randn(8, 12, generator=torch.Generator().manual_seed(0))
    q = admm(w)
    assert not q.quantized_in_training and torch.equal(q(w), w)
    q.eval()
    alpha = least_squares_scale(w, BitWidth(3), per_channel=True)
    grid = torch.round((w / alpha).clamp(-3, 3)) * alpha
    assert torch.allclose(q(w), grid) and torch.allclose(q.z, grid) and not q.u.any()
    codes, scale, _ = q.quantize_int(w)
    assert torch.allclose(codes.float() * scale, grid)


@pytest.mark.parametrize(("bits", "target"), [(2, 0.50), (3, 0.22)])
def test_projection_is_the_least_squares_fit(bits, target):
    v = torch.randn(256, 256, generator=torch.Generator().manual_seed(0))
    q = admm(v, bits=bits)
    z = q.project(v)
    assert float((z - v).norm() / v.norm()) <= target
    # A fixed point of Leng et al.'s alternation: alpha = <V, q> / <q, q> for the codes of alpha.
    alpha = least_squares_scale(v, BitWidth(bits), per_channel=True)
    codes = torch.round((v / alpha).clamp(-(2 ** (bits - 1) - 1), 2 ** (bits - 1) - 1))
    assert torch.allclose(alpha, (v * codes).sum(1, keepdim=True) / (codes * codes).sum(1, keepdim=True), rtol=1e-5)
    assert torch.allclose(z, codes * alpha)


def test_dual_is_rescaled_when_rho_grows():
    w = torch.randn(6, 10, generator=torch.Generator().manual_seed(3))
    q = admm(w, rho=0.5, rho_growth=2.0)
    q.u.normal_(generator=torch.Generator().manual_seed(4))
    moved = w + 0.1
    rho, multiplier = q.rho, q.rho * (q.u + moved - q.project(moved + q.u))
    q.admm_update(moved)
    assert q.rho == pytest.approx(2 * rho)
    # The unscaled dual y = rho * U is what the update defines; raising rho must not change it.
    assert torch.allclose(q.rho * q.u, multiplier, atol=1e-6)


@pytest.mark.parametrize("bits", [2, 3])
def test_converges_on_a_toy_regression(bits):
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(256, 16, generator=gen)
    target = torch.randn(8, 16, generator=gen)
    y = x @ target.T + 0.1 * torch.randn(256, 8, generator=gen)
    weight = torch.nn.Parameter(target + 0.3 * torch.randn(8, 16, generator=gen))
    q = admm(weight.detach(), bits=bits, rho=0.3, rho_growth=1.2, updates=24, recovery=0.0)
    opt = torch.optim.SGD([weight], lr=0.05)
    for step in range(1, 601):
        opt.zero_grad()
        task = torch.nn.functional.mse_loss(x @ q(weight).T, y)
        (task + q.loss_term(weight)).backward()
        opt.step()
        q.on_step(weight, step, 600)
    residuals = q.residuals
    assert len(residuals) == 24 and q.rho == pytest.approx(0.3 * 1.2 ** 24)
    # W lands on the grid (an unscaled dual leaves it about 1e-2 of the way off here) ...
    assert residuals[-1] < 1e-4 * residuals[0]
    # ... and the penalty that got it there has faded against the task loss.
    penalty = float(q.loss_term(weight).detach())
    assert penalty < 0.05 * float(task.detach())
    q.eval()
    with torch.no_grad():
        deployed = float(torch.nn.functional.mse_loss(x @ q(weight).T, y))
    assert deployed == pytest.approx(float(task.detach()), rel=1e-3)


def test_penalty_and_options():
    w = torch.randn(4, 6, generator=torch.Generator().manual_seed(2))
    q = admm(w, rho=2.0)
    assert float(q.penalty(w)) == pytest.approx(float((w - q.z).pow(2).sum()))
    with pytest.raises(PolicyError, match="'rho' must be a number in \\(0, inf\\]"):
        admm(w, rho=0)
    with pytest.raises(PolicyError, match="'updates'"):
        admm(w, updates=0)
    with pytest.raises(PolicyError, match="'recovery'"):
        admm(w, recovery=1.5)


def test_schedule_spans_any_fine_tune_then_recovers_on_the_grid():
    w = torch.randn(8, 12, generator=torch.Generator().manual_seed(5))
    q = admm(w)  # defaults: 4 updates, the last 20% of the steps on the grid
    assert list(q.update_steps(200)) == [40, 80, 120, 160] and q.recovery_start(200) == 160
    assert list(q.update_steps(15)) == [3, 6, 9, 12]  # a search trial's short fine-tune gets it whole
    assert list(admm(w, updates=100).update_steps(10)) == list(range(1, 9))
    q.train()
    for step in range(160):
        q.on_step(w, step, 200)
    assert not q.recovering and torch.equal(q(w), w) and q.loss_term(w) is not None
    q.on_step(w, 160, 200)
    # Recovery: the training forward is the deployed grid (straight-through), and the penalty is gone.
    weight = w.clone().requires_grad_(True)
    out = q(weight)
    q.eval()
    assert q.recovering and q.quantized_in_training and torch.equal(out.detach(), q(w))
    assert q.loss_term(weight) is None
    out.sum().backward()
    alpha = least_squares_scale(w, BitWidth(3), per_channel=True)
    in_range = (w / alpha).abs() <= 3  # straight through inside the clamp range, zero outside it
    assert torch.equal(weight.grad, in_range.float()) and in_range.float().mean() > 0.8
