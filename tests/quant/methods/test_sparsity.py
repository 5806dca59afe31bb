from itertools import pairwise

import pytest
import torch
from torch import nn

from mpsearch.errors import PolicyError
from mpsearch.quant import Policy, QuantConfig, apply, export_weights, quantized_sites
from mpsearch.quant.config import SparsityConfig
from mpsearch.quant.methods.hooks import training_hooks
from mpsearch.quant.modules import QuantModule
from mpsearch.quant.sparsity import (
    CompressedSensingSparsifier,
    MagnitudeSparsifier,
    NMSparsifier,
    RegrowSparsifier,
    make_sparsifier,
)
from mpsearch.testing.toy_models import ToySpeechModel, toy_batch


def make_model():
    torch.manual_seed(0)
    return ToySpeechModel(n_mels=8, hidden=12, vocab=10, encoder_layers=1)


def batch():
    return toy_batch(make_model(), batch=2, frames=7, tokens=3)


def sparse_sites(model):
    for name, module in model.named_modules():
        if isinstance(module, QuantModule):
            for param, sparsifier in module.weight_sparsifiers.items():
                yield module.site_name(name, param), getattr(module, param), sparsifier


def run_schedule(model, total_steps, lr=1e-2):
    """A few optimiser steps on a stand-in loss, driven by the training hooks as the trainer drives them."""
    hooks = training_hooks(model, total_steps)
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    feats, tokens = batch()
    for step in range(1, total_steps + 1):
        opt.zero_grad()
        loss = model(feats, tokens).pow(2).mean()
        if hooks.extra_loss is not None:
            loss = loss + hooks.extra_loss()
        loss.backward()
        opt.step()
        hooks.after_step(step)
    return hooks


@pytest.mark.parametrize("method", ["magnitude", "regrow", "csp"])
@pytest.mark.parametrize("fraction", [0.5, 0.75])
def test_unstructured_sparsity_reaches_the_scheduled_fraction_exactly(method, fraction):
    sparsity = {"method": method, "fraction": fraction}
    model = apply(make_model(), Policy.uniform(QuantConfig(weight_bits=8, act_bits=None, sparsity=sparsity,
                                                           options={"sparsity_every": 3})))
    total = 12
    hooks = training_hooks(model, total)
    seen = {name: [s.sparsity] for name, _, s in sparse_sites(model)}
    assert all(levels == [0.0] for levels in seen.values())  # gradual: dense at the start
    opt = torch.optim.SGD(model.parameters(), lr=1e-2)
    feats, tokens = batch()
    for step in range(1, total + 1):
        opt.zero_grad()
        loss = model(feats, tokens).pow(2).mean()
        (loss + hooks.extra_loss() if hooks.extra_loss else loss).backward()
        opt.step()
        hooks.after_step(step)
        for name, _, s in sparse_sites(model):
            seen[name].append(s.sparsity)
    for name, weight, s in sparse_sites(model):
        levels = seen[name]
        assert all(b >= a - 1e-9 for a, b in pairwise(levels)), f"{name}: sparsity went down {levels}"
        assert 0 < levels[4] < fraction  # partway through the cubic ramp
        assert int((~s.mask).sum()) == round(fraction * weight.numel())  # exactly the target, counted
    eval_weights = {name: w for name, (w, *_) in export_weights(model).items()}
    for name, weight, s in sparse_sites(model):
        assert torch.equal(eval_weights[name][~s.mask], torch.zeros_like(eval_weights[name][~s.mask]))


def test_cubic_schedule_and_finish():
    w = torch.randn(8, 16, generator=torch.Generator().manual_seed(0))
    s = MagnitudeSparsifier(w, SparsityConfig("magnitude", fraction=0.8), every=5, start=0.2, end=0.6)
    assert s.schedule_steps(100) == (20, 60)
    assert s.fraction_at(10, 100) == 0 and s.fraction_at(60, 100) == pytest.approx(0.8)
    assert s.fraction_at(40, 100) == pytest.approx(0.8 * (1 - 0.5 ** 3))
    s.on_finish(w)  # a run stopped early still ends at the target
    assert int((~s.mask).sum()) == round(0.8 * w.numel())


def test_csp_soft_thresholds_to_the_scheduled_support_and_pulls_toward_it():
    gen = torch.Generator().manual_seed(2)
    w = torch.randn(6, 20, generator=gen)
    s = CompressedSensingSparsifier(w, SparsityConfig("csp", fraction=0.5), rho=2.0)
    assert float(s.compression_error(w)) == 0.0  # dense until the first update
    s.update(w, 0.5)
    theta = w.abs()[~s.mask].max()
    assert int((~s.mask).sum()) == 60 and bool((w.abs()[s.mask] >= theta).all())
    assert torch.allclose(s.code[s.mask], torch.sign(w[s.mask]) * (w.abs()[s.mask] - theta))
    assert not s.code[~s.mask].any()
    weight = w.clone().requires_grad_(True)
    s.loss_term(weight).backward()
    assert torch.allclose(weight.grad, 2.0 * (w - s.code))  # pruned to zero, survivors shrink by theta
    s.on_step(w, 100, 100)  # the end of the schedule: the support is final, the pull stops
    assert s.loss_term(weight) is None


def _prune_while_training(sparsifier, weight, wanted, steps=100):
    sparsifier.on_step(weight, 0, steps)
    opt = torch.optim.SGD([weight], lr=0.05)
    for step in range(1, steps + 1):
        opt.zero_grad()
        loss = 0.1 * (sparsifier(weight) - wanted).pow(2).sum()
        term = sparsifier.loss_term(weight)
        (loss + term if term is not None else loss).backward()
        opt.step()
        sparsifier.on_step(weight, step, steps)
    return sparsifier.mask.tolist()


@pytest.mark.parametrize("rho", [0.1, 1.0])
def test_csp_prunes_what_the_l1_dynamics_drives_to_zero_not_the_smallest_magnitudes(rho):
    # The loss needs the three weights that start smallest and none of the three larger ones.
    start = torch.tensor([[0.30, 0.32, 0.34, 0.5, 0.55, 0.6]])
    wanted = torch.tensor([[1.0, 1.0, 1.0, 0.0, 0.0, 0.0]])
    half = {"every": 5, "end": 0.8}
    csp = CompressedSensingSparsifier(start, SparsityConfig("csp", fraction=0.5), rho=rho, **half)
    assert _prune_while_training(csp, nn.Parameter(start.clone()), wanted) == [[True] * 3 + [False] * 3]
    # Gradual magnitude pruning commits to the early smallest weight and cannot take it back.
    magnitude = MagnitudeSparsifier(start, SparsityConfig("magnitude", fraction=0.5), **half)
    assert _prune_while_training(magnitude, nn.Parameter(start.clone()), wanted)[0][0] is False


def test_regrow_returns_a_pruned_weight_whose_gradient_is_large():
    w = torch.tensor([[0.1, 0.2, 0.9, 1.0]])
    weight = nn.Parameter(w.clone())
    regrow = RegrowSparsifier(w, SparsityConfig("regrow", fraction=0.5), every=1, end=1.0)
    magnitude = MagnitudeSparsifier(w, SparsityConfig("magnitude", fraction=0.5), every=1, end=1.0)
    for s in (regrow, magnitude):
        s.update(w, 0.5)
        assert s.mask.tolist() == [[False, False, True, True]]
    # The loss wants the pruned first weight large: straight through the mask it still gets that gradient.
    upstream = torch.tensor([[-5.0, 0.0, 0.0, 0.0]])
    (regrow(weight) * upstream).sum().backward()
    assert regrow(weight)[0, 0] == 0.0 and weight.grad[0, 0] == -5.0
    with torch.no_grad():
        weight -= 0.5 * weight.grad
    regrow.update(weight, 0.5)
    assert regrow.mask.tolist() == [[True, False, False, True]]  # it grew past 0.9 and came back
    # Plain magnitude pruning blocks the gradient and ranks the masked weight: it stays pruned.
    grad_through_magnitude = torch.autograd.grad((magnitude(weight) * upstream).sum(), weight)[0]
    assert grad_through_magnitude[0, 0] == 0.0
    magnitude.update(weight, 0.5)
    assert magnitude.mask[0, 0].item() is False
    # Once the schedule ends the support is final and pruned weights get no gradient.
    regrow.on_step(weight.detach(), 1, 1)
    assert not regrow.mask[0, 1] and torch.autograd.grad(regrow(weight)[0, 1], weight)[0][0, 1] == 0.0


def test_regrow_recovers_the_weights_the_loss_needs():
    start = torch.tensor([[0.30, 0.32, 0.34, 0.5, 0.55, 0.6]])
    wanted = torch.tensor([[1.0, 1.0, 1.0, 0.0, 0.0, 0.0]])
    regrow = RegrowSparsifier(start, SparsityConfig("regrow", fraction=0.5), every=5, end=0.8)
    assert _prune_while_training(regrow, nn.Parameter(start.clone()), wanted) == [[True] * 3 + [False] * 3]
    assert make_sparsifier(QuantConfig(sparsity={"method": "regrow", "fraction": 0.5}), start).__class__ \
        is RegrowSparsifier


@pytest.mark.parametrize("n,m", [(2, 4), (1, 4)])
def test_nm_keeps_exactly_n_of_every_m_along_the_input_dimension(n, m):
    cfg = QuantConfig(weight_bits=4, act_bits=None, sparsity=f"{n}:{m}")
    model = apply(make_model(), Policy.uniform(cfg))
    run_schedule(model, 5)
    for name, weight, s in sparse_sites(model):
        blocks = s.mask.movedim(1, -1).reshape(-1, m)
        assert bool((blocks.sum(dim=1) == n).all()), name
        # The kept ones are the largest of their block.
        scores = weight.detach().abs().movedim(1, -1).reshape(-1, m)
        kept_min = torch.where(blocks, scores, torch.inf).amin(dim=1)
        dropped_max = torch.where(blocks, -torch.inf, scores).amax(dim=1)
        assert bool((kept_min >= dropped_max).all()), name
    conv = {name: s for name, _, s in sparse_sites(model)}["frontend"]
    assert conv.mask.shape == (16, 8, 3)  # blocks over input channels at each tap


@pytest.mark.parametrize("method", ["uniform", "lsq", "gq", "s8bqat", "admm"])
def test_sparse_quantized_weights_export_exact_zeros(method):
    cfg = QuantConfig(weight_bits=3, act_bits=None, method=method,
                      sparsity={"method": "magnitude", "fraction": 0.6})
    model = apply(make_model(), Policy.uniform(cfg))
    hooks = training_hooks(model, 4)
    hooks.finish()
    model.eval()
    exported = export_weights(model)
    for name, weight, s in sparse_sites(model):
        codes, scale, zero_point, bits = exported[name]
        assert bits == 3 and int((~s.mask).sum()) == round(0.6 * weight.numel())
        assert torch.equal(codes[~s.mask], zero_point.expand_as(codes)[~s.mask])
        dequantized = (codes.float() - zero_point.float()) * scale
        assert not dequantized[~s.mask].any()
    joiner = model.joiner
    assert not joiner.quantized("weight")[~joiner.weight_sparsifiers["weight"].mask].any()


def test_asymmetric_uniform_prunes_to_the_zero_point():
    cfg = QuantConfig(weight_bits=4, act_bits=None, symmetric=False, sparsity="2:4")
    model = apply(make_model(), Policy({"joiner": cfg}))
    training_hooks(model, 3)
    codes, scale, zero_point, _ = export_weights(model)["joiner"]
    mask = model.joiner.weight_sparsifiers["weight"].mask
    assert zero_point.any() and not ((codes.float() - zero_point.float()) * scale)[~mask].any()


def test_nna_integer_weights_keep_the_zeros():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4))
    cfg = QuantConfig(weight_bits=4, act_bits=8, method="gq", sparsity={"method": "csp", "fraction": 0.5})
    emulated = apply(model, Policy.uniform(cfg), emulation="nna")
    training_hooks(emulated, 2).finish()
    for layer in (emulated[0], emulated[2]):
        mask = layer.weight_sparsifiers["weight"].mask
        codes = layer.integer_params()["weight"]
        assert int((~mask).sum()) == mask.numel() // 2 and not codes[~mask].any()


def test_apply_validates_sparsity_per_site():
    with pytest.raises(PolicyError, match="Site 'joiner'.*2:5.*size 12"):
        apply(make_model(), Policy({"joiner": QuantConfig(sparsity="2:5")}))
    with pytest.raises(PolicyError, match="Unknown option.*csp_rho"):
        apply(make_model(), Policy({"joiner": QuantConfig(options={"csp_rho": 1.0})}))  # no sparsity asked
    backwards = QuantConfig(sparsity={"method": "csp", "fraction": 0.5},
                            options={"sparsity_start": 0.8, "sparsity_end": 0.5})
    with pytest.raises(PolicyError, match="'sparsity_end'"):
        apply(make_model(), Policy({"joiner": backwards}))
    half = QuantConfig(sparsity={"method": "magnitude", "fraction": 0.5})
    model = apply(make_model(), Policy({"joiner": half}))
    assert set(quantized_sites(model)) == {"joiner"}
    assert make_sparsifier(QuantConfig(), torch.zeros(4, 4)) is None
    assert isinstance(model.joiner.weight_sparsifiers["weight"], MagnitudeSparsifier)
    assert isinstance(make_sparsifier(QuantConfig(sparsity="1:4"), torch.zeros(4, 8)), NMSparsifier)
    # The mask is part of the state dict, so a checkpoint resumes with it.
    assert "joiner.weight_sparsifiers.weight.mask" in model.state_dict()
