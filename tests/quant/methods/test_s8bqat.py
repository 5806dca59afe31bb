import math

import pytest
import torch

from mpsearch.errors import PolicyError
from mpsearch.quant import QUANTIZERS, QuantConfig
from mpsearch.quant.methods.s8bqat import SubEightBitQuantizer, lloyd_max, mracos


def gaussian(shape, seed=0, std=0.05):
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed)) * std


def s8b(bits=3, w=None, granularity="per_channel", **options):
    w = gaussian((16, 64)) if w is None else w
    cfg = QuantConfig(weight_bits=bits, act_bits=None, method="s8bqat", granularity=granularity,
                      options=options)
    return QUANTIZERS.get("s8bqat").from_config(cfg, w)


def test_registered():
    assert QUANTIZERS.get("s8bqat") is SubEightBitQuantizer


def test_lloyd_max_beats_the_uniform_grid_on_a_gaussian():
    x = gaussian((1, 20000), seed=1, std=1.0)
    for levels in (4, 8, 16):
        centroids = lloyd_max(x, levels)
        assert (centroids.diff() >= 0).all()
        lloyd = (centroids[0, centroids.sub(x.T).abs().argmin(dim=1)] - x).pow(2).mean()
        grid = torch.linspace(float(x.min()), float(x.max()), levels)
        uniform = (grid[grid.sub(x.T).abs().argmin(dim=1)] - x).pow(2).mean()
        assert lloyd < 0.5 * uniform
        once = lloyd_max(x, levels, iterations=1)
        first = (once[0, once.sub(x.T).abs().argmin(dim=1)] - x).pow(2).mean()
        assert lloyd <= first  # the iterations lower the error from the quantile start
    assert torch.equal(lloyd_max(x, 8), lloyd_max(x.clone(), 8))  # deterministic


def test_mracos_is_zero_on_centroids_and_largest_midway_with_each_regions_period():
    centroids = torch.tensor([[-1.0, -0.2, 0.0, 0.1, 0.5, 2.0]])
    floor = torch.tensor([[1e-3]])
    on = mracos(centroids, centroids, floor)
    assert torch.allclose(on, torch.zeros_like(on), atol=1e-6)
    mids = (centroids[:, 1:] + centroids[:, :-1]) / 2
    assert torch.allclose(mracos(mids, centroids, floor), torch.ones_like(mids), atol=1e-6)
    # A quarter of the way into each region: 1 - cos(pi/4), whatever the region's width.
    quarter = centroids[:, :-1] + 0.25 * centroids.diff()
    expected = torch.full_like(quarter, 1 - math.cos(math.pi / 4))
    assert torch.allclose(mracos(quarter, centroids, floor), expected, atol=1e-6)
    # Beyond the ends it keeps rising, so outliers are pulled in.
    outside = mracos(torch.tensor([[-5.0, -1.5, 2.2, 9.0]]), centroids, floor)
    assert outside[0, 0] > outside[0, 1] > 0 and outside[0, 3] > outside[0, 2] > 0


def test_regularizer_is_zero_on_the_codebook_and_positive_off_it():
    w = gaussian((16, 64), seed=2).requires_grad_(True)
    q = s8b(3, w)
    reg = q.regularizer(w)
    assert reg > 0
    reg.backward()
    assert torch.isfinite(w.grad).all() and w.grad.abs().sum() > 0
    on_grid = q.codebook().repeat_interleave(8, dim=1)  # (16, 64): every value a centroid of its row
    assert float(q.regularizer(on_grid)) == pytest.approx(0.0, abs=1e-6)
    assert q.loss_term(w) is not None and s8b(3, w, reg_weight=0.0).loss_term(w) is None


@pytest.mark.parametrize("granularity", ["per_channel", "per_tensor"])
def test_hard_compress_puts_every_weight_on_a_centroid(granularity):
    weight = torch.nn.Parameter(gaussian((16, 64), seed=3))
    q = s8b(3, weight.detach(), granularity)
    q.eval()
    expected = q(weight).detach()
    q.hard_compress(weight)
    assert torch.equal(weight.detach(), expected)
    codebook = q.codebook()
    rows = weight.detach().reshape(codebook.shape[0], -1)
    assert all(torch.isin(row, book).all() for row, book in zip(rows, codebook))
    assert float(q.regularizer(weight.detach())) == pytest.approx(0.0, abs=1e-6)


def test_training_forward_is_float_or_quantized_and_compression_follows_the_schedule():
    w = gaussian((16, 64), seed=4)
    q = s8b(3, w)
    assert not q.quantized_in_training and torch.equal(q(w), w)
    q.eval()
    assert q(w).unique().numel() <= 8 * 16
    fake = s8b(3, w, train_forward="quantized")
    assert fake.quantized_in_training and torch.equal(fake(w), q(w))
    weight = torch.nn.Parameter(w.clone())
    periodic = s8b(3, w, compress_every=10)
    periodic.on_step(weight, 5, 100)
    assert torch.equal(weight.detach(), w)
    periodic.on_step(weight, 10, 100)
    assert torch.equal(weight.detach(), q(w))


def test_set_bits_refits_and_options_are_validated():
    w = gaussian((16, 64), seed=5)
    q = s8b(2, w)
    q.set_bits(4)
    q.eval()
    assert q(w).unique().numel() > 4 and q.centroids.shape == (16, 16)
    with pytest.raises(PolicyError, match="'train_forward' must be one of float, quantized"):
        s8b(3, w, train_forward="soft")
    with pytest.raises(PolicyError, match="'compress_every' must be an integer"):
        s8b(3, w, compress_every=2.5)


def test_recovery_phase_starts_with_a_hard_compression_and_trains_the_quantized_forward():
    w = gaussian((16, 64), seed=6)
    q = s8b(3, w, compress_every=10, recovery=0.25)
    weight = torch.nn.Parameter(w.clone())
    assert q.recovery_start(100) == 75
    q.on_step(weight, 74, 100)
    assert not q.recovering and torch.equal(weight.detach(), w)
    q.on_step(weight, 75, 100)  # not a multiple of compress_every: the phase's own compression
    assert q.recovering and q.quantized_in_training and q.loss_term(weight) is None
    snapped = weight.detach().clone()
    assert torch.equal(q(snapped), snapped)  # on the codebook already; training forward is quantized now
    assert not s8b(3, w, recovery=0.0).recovering
    with pytest.raises(PolicyError, match="'recovery' must be a number in"):
        s8b(3, w, recovery=1.5)


def test_recovery_phase_lowers_the_loss_the_last_hard_compression_cost_with_the_codebook_unchanged():
    from mpsearch.quant import Policy, apply, quantized_sites
    from mpsearch.quant.methods.hooks import training_hooks
    from mpsearch.testing.toy_models import ToySpeechModel, toy_batch

    torch.manual_seed(0)
    teacher = ToySpeechModel(n_mels=8, hidden=12, vocab=10, encoder_layers=1)
    feats, tokens = toy_batch(teacher, batch=4, frames=9, tokens=4)
    with torch.no_grad():
        target = teacher(feats, tokens)
    cfg = QuantConfig(weight_bits=2, act_bits=None, method="s8bqat",
                      options={"compress_every": 10, "recovery": 0.5})
    student = apply(teacher, Policy.uniform(cfg))

    def deployed_loss() -> float:
        student.eval()
        with torch.no_grad():
            loss = float((student(feats, tokens) - target).pow(2).mean())
        student.train()
        return loss

    total = 80
    hooks = training_hooks(student, total)
    opt = torch.optim.Adam(student.parameters(), lr=3e-3)
    quantizers = [q for q in quantized_sites(student).values()]
    for step in range(1, total + 1):
        opt.zero_grad()
        loss = (student(feats, tokens) - target).pow(2).mean()
        if hooks.extra_loss is not None:
            loss = loss + hooks.extra_loss()
        loss.backward()
        opt.step()
        hooks.after_step(step)
        if step == total // 2:  # the recovery phase has just begun with the last hard compression
            assert all(q.recovering for q in quantizers)
            after_compression = deployed_loss()
            codebooks = [q.codebook().clone() for q in quantizers]
    hooks.finish()
    assert deployed_loss() < 0.95 * after_compression
    assert all(torch.equal(q.codebook(), book) for q, book in zip(quantizers, codebooks))
