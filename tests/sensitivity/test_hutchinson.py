import itertools

import numpy as np
import pytest
import torch
from torch.func import functional_call

from mpsearch.config import SensitivityConfig
from mpsearch.models.conformer import Conformer, ConformerConfig
from mpsearch.models.transformer_lm import TransformerLM, TransformerLMConfig
from mpsearch.quant import find_sites
from mpsearch.sensitivity import SensitivityError, hessian_traces
from mpsearch.sensitivity.stage import use_twice_differentiable_loss


def exact_site_hessian(model, batches):
    """The Hessian of the mean batch loss with respect to all site weights, flattened in site order."""
    sites = find_sites(model)
    names = [f"{s.module}.{s.param}" for s in sites]
    params = dict(model.named_parameters())
    shapes = [params[n].shape for n in names]
    sizes = [params[n].numel() for n in names]

    def loss(flat):
        tensors = [t.view(shape) for t, shape in zip(torch.split(flat, sizes), shapes)]
        values = {**{k: v.detach() for k, v in params.items()}, **dict(zip(names, tensors))}
        return torch.stack([functional_call(model, values, batch) for batch in batches]).mean()

    flat = torch.cat([params[n].detach().flatten() for n in names])
    hessian = torch.autograd.functional.hessian(loss, flat)
    edges = np.cumsum([0] + sizes)
    return hessian.numpy(), [slice(a, b) for a, b in itertools.pairwise(edges)]


def predicted_stderr(hessian, blocks, probes):
    """Standard error of v_l . (H v)_l with Rademacher v over every site: cross terms within the block
    count twice (H_jk and H_kj), those with other blocks once."""
    errors = []
    for block in blocks:
        inside = hessian[block, block]
        within = (inside ** 2).sum() - (np.diag(inside) ** 2).sum()  # ordered pairs j != k
        outside = (hessian[block] ** 2).sum() - (inside ** 2).sum()
        errors.append(np.sqrt((2 * within + outside) / probes))
    return np.array(errors)


@pytest.mark.parametrize("case", ["mlp_case", "lstm_case"])
def test_traces_agree_with_the_exact_hessian(case, request):
    model, batches = request.getfixturevalue(case)
    probes = 300
    # tol unreachable: every site keeps being probed, so the predicted error below applies
    cfg = SensitivityConfig(batches=len(batches), min_probes=probes, max_probes=probes, tol=1e-9, seed=3)
    report = hessian_traces(model, batches, cfg)
    hessian, blocks = exact_site_hessian(model, batches)
    exact = np.array([np.trace(hessian[b, b]) for b in blocks])
    traces, errors = np.array(report.traces), np.array(report.stderrs)
    assert report.probes == [probes] * len(blocks)
    assert np.all(np.abs(traces - exact) <= 3 * errors + 1e-9), (traces, exact, errors)
    # the standard error is the one the Hessian predicts for these probes, within sampling noise
    ratio = errors / predicted_stderr(hessian, blocks, probes)
    assert np.all((ratio > 0.7) & (ratio < 1.4)), ratio
    total_ratio = report.total_stderr / np.sqrt(2 * ((hessian ** 2).sum() - (np.diag(hessian) ** 2).sum()) / probes)
    assert 0.7 < total_ratio < 1.4


def test_a_diagonal_hessian_converges_at_min_probes():
    class Quadratic(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = torch.nn.Linear(3, 2, bias=False)
            self.register_buffer("c", torch.arange(6.0).view(2, 3) + 1)

        def forward(self, x):
            return (self.c * self.lin.weight ** 2).sum() + 0 * x.sum()

    model = Quadratic()
    report = hessian_traces(model, [(torch.zeros(1),)], SensitivityConfig(batches=1, min_probes=4, tol=0.01))
    # v_l^T diag(2c) v_l = 2 sum(c) for every Rademacher v: no variance, done at min_probes
    assert report.traces == [pytest.approx(2 * 21.0)]
    assert report.stderrs == [0.0] and report.probes == [4] and report.converged


def test_the_probe_budget_bounds_the_work(mlp_case):
    model, batches = mlp_case
    report = hessian_traces(model, batches, SensitivityConfig(min_probes=2, max_probes=5, tol=1e-6))
    assert report.probes == [5, 5] and not report.converged
    assert report.settings["batches_used"] == 2


def test_a_converged_site_stops_being_probed(mlp_case):
    model, batches = mlp_case
    report = hessian_traces(model, batches, SensitivityConfig(min_probes=4, max_probes=400, tol=0.05))
    rel = np.array(report.rel_stderrs)
    assert report.converged and np.all(rel < 0.05)
    assert min(report.probes) >= 4 and max(report.probes) <= 400


def test_padding_does_not_change_the_traces(rnnt_case):
    model, (feats, feat_lens, targets, target_lens) = rnnt_case
    gen = torch.Generator().manual_seed(9)
    padded = (torch.cat([feats, 5 * torch.randn(3, 12, 8, generator=gen)], dim=1), feat_lens,
              torch.cat([targets, torch.full((3, 3), -1)], dim=1), target_lens)
    cfg = SensitivityConfig(batches=1, min_probes=6, max_probes=6)
    plain = hessian_traces(model, [(feats, feat_lens, targets, target_lens)], cfg)
    more = hessian_traces(model, [padded], cfg)
    np.testing.assert_allclose(more.traces, plain.traces, rtol=1e-4, atol=1e-6)


def test_model_state_is_restored(rnnt_case):
    model, batch = rnnt_case
    model.train()
    model.joiner.out.bias.requires_grad_(False)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    mkldnn = torch.backends.mkldnn.enabled
    hessian_traces(model, [batch], SensitivityConfig(batches=1, min_probes=2, max_probes=2))
    assert model.training and torch.backends.mkldnn.enabled == mkldnn
    assert not model.joiner.out.bias.requires_grad and model.joiner.out.weight.requires_grad
    assert all(p.grad is None for p in model.parameters())
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def tiny_conformer(**overrides) -> Conformer:
    torch.manual_seed(0)
    params = {"n_mels": 8, "vocab_size": 6, "d_model": 8, "n_heads": 2, "n_layers": 1, "ff_mult": 2,
              "conv_kernel": 3, "dropout": 0.0}
    return Conformer(ConformerConfig(**{**params, **overrides}))


def test_ctc_conformer_needs_the_pure_ctc_loss(rnnt_case):
    _, batch = rnnt_case
    cfg = SensitivityConfig(batches=1, min_probes=2, max_probes=2)
    model = tiny_conformer()
    with pytest.raises(SensitivityError, match="ctc_impl: pure"):
        hessian_traces(model, [batch], cfg)
    with torch.no_grad():
        loss_torch = model(*batch)
    use_twice_differentiable_loss(model)
    assert model.config.ctc_impl == "pure"
    with torch.no_grad():
        assert model(*batch).item() == pytest.approx(loss_torch.item(), rel=1e-5)
    report = hessian_traces(model, [batch], cfg)
    assert len(report.traces) == len(find_sites(model)) and np.all(np.isfinite(report.traces))


def test_tied_weights_share_one_trace():
    torch.manual_seed(0)
    model = TransformerLM(TransformerLMConfig(vocab_size=7, d_model=8, n_heads=2, n_layers=1, ff_mult=2,
                                              dropout=0.0, tie_embeddings=True))
    tokens = torch.randint(1, 7, (3, 5))
    report = hessian_traces(model, [(tokens, torch.tensor([5, 3, 2]))],
                            SensitivityConfig(batches=1, min_probes=3, max_probes=3))
    # the tied embedding and output matrix are one site (one parameter), with one trace
    tied = [name for name in report.sites if name in ("embed", "head")]
    assert len(tied) == 1 and report.trace(tied[0])[0] > 0


def test_no_batches_is_an_error(mlp_case):
    model, _ = mlp_case
    with pytest.raises(SensitivityError, match="No batches"):
        hessian_traces(model, [], SensitivityConfig())


def test_works_inside_no_grad(mlp_case):
    model, batches = mlp_case
    cfg = SensitivityConfig(min_probes=3, max_probes=3)
    with torch.no_grad():
        inside = hessian_traces(model, batches, cfg)
    assert inside.traces == hessian_traces(model, batches, cfg).traces


class CoupledQuadratic(torch.nn.Module):
    """loss = w^T H w / 2 over two 2x2 sites: `big` of curvature 100 per weight, `small` of curvature 1,
    and cross terms of 3 between every weight of one and every weight of the other."""

    def __init__(self):
        super().__init__()
        self.big = torch.nn.Linear(2, 2, bias=False)
        self.small = torch.nn.Linear(2, 2, bias=False)
        hessian = torch.zeros(8, 8)
        hessian[:4, :4] = torch.diag(torch.full((4,), 100.0))
        hessian[4:, 4:] = torch.eye(4) + 0.05 * (1 - torch.eye(4))
        hessian[:4, 4:] = hessian[4:, :4] = 3.0
        self.register_buffer("hessian", hessian)

    def forward(self, x):
        w = torch.cat([self.big.weight.flatten(), self.small.weight.flatten()])
        return 0.5 * w @ self.hessian @ w + 0 * x.sum()


def test_a_quiet_site_converges_once_the_loud_one_stops_being_probed():
    # Probed together, the small site's samples carry cross terms of variance 16 x 9 against a trace
    # of 4, so the plain mean of 8 such samples has ~50% relative error. Once `big` converges (at
    # min_probes) and stops being probed, the later samples of `small` are near exact; weighting them
    # by their own variance lets `small` converge too instead of spending the whole budget.
    # (no deflation: its sketch of this 8-weight model would be exact and leave nothing to weight)
    cfg = SensitivityConfig(batches=1, min_probes=8, max_probes=200, tol=0.05, seed=0, deflation_rank=0)
    report = hessian_traces(CoupledQuadratic(), [(torch.zeros(1),)], cfg)
    assert report.converged
    assert report.probes[0] == 8 and report.probes[1] <= 24, report.probes
    assert report.traces[0] == pytest.approx(400.0, rel=0.05)
    assert abs(report.traces[1] - 4.0) <= 3 * report.stderrs[1] and report.stderrs[1] < 0.05 * 4.0


def test_segments_weight_samples_by_their_own_variance():
    from mpsearch.sensitivity.estimate import SampleLog

    rng = np.random.default_rng(0)
    log = SampleLog(2, min_segment=8)
    for k in range(48):
        loud = k < 8  # site 1 is probed only at first: the probed set changes after 8 probes
        log.add(np.array([10 + (100 if loud else 1) * rng.standard_normal(), 5.0 + rng.standard_normal()]),
                np.array([True, loud]))
    pooled = np.sqrt(log.samples[:, 0].var(ddof=1) / 48)
    ivw = 1 / np.sqrt(8 / log.samples[:8, 0].var(ddof=1) + 40 / log.samples[8:, 0].var(ddof=1))
    assert log.stderr[0] == pytest.approx(ivw) and log.stderr[0] < pooled / 5
    assert abs(log.mean[0] - 10) < 3 * log.stderr[0]
    # one segment (site 1 was never re-segmented) is the plain mean and its standard error
    assert log.mean[1] == pytest.approx(log.samples[:8, 1].mean())
    assert log.stderr[1] == pytest.approx(log.samples[:8, 1].std(ddof=1) / np.sqrt(8))


@pytest.mark.parametrize("case", ["mlp_case", "lstm_case"])
def test_deflated_traces_agree_with_the_exact_hessian_and_are_closer(case, request):
    model, batches = request.getfixturevalue(case)
    hessian, blocks = exact_site_hessian(model, batches)
    exact = np.array([np.trace(hessian[b, b]) for b in blocks])
    reports = {rank: hessian_traces(model, batches, SensitivityConfig(
        batches=len(batches), min_probes=8, max_probes=120, tol=1e-9, seed=5, deflation_rank=rank))
        for rank in (0, 6)}
    deflated, plain = reports[6], reports[0]
    # the same 120 HVPs per batch: 12 of them sketch the Hessian, 108 probe what the sketch leaves
    assert plain.probes == [120] * len(blocks) and deflated.probes == [108] * len(blocks)
    traces, errors = np.array(deflated.traces), np.array(deflated.stderrs)
    assert np.all(np.abs(traces - exact) <= 3 * errors + 1e-9), (traces, exact, errors)
    assert np.all(errors < np.array(plain.stderrs)), (errors, plain.stderrs)


def test_deflating_every_direction_is_exact(mlp_case):
    model, batches = mlp_case
    hessian, blocks = exact_site_hessian(model, batches)
    n = hessian.shape[0]  # 42 weights: the sketch spans all of them and nothing is left to probe
    report = hessian_traces(model, batches, SensitivityConfig(
        batches=len(batches), min_probes=4, max_probes=2 * n + 20, tol=1e-6, deflation_rank=n))
    np.testing.assert_allclose(report.traces, [np.trace(hessian[b, b]) for b in blocks], rtol=1e-8)
    assert report.converged and report.probes == [8, 8]


def test_deflation_waits_until_the_probes_say_it_pays(mlp_case):
    model, batches = mlp_case
    # a budget that cannot pay for the sketch and still probe with it: plain Hutchinson, sample for sample
    small = SensitivityConfig(min_probes=4, max_probes=30, tol=1e-6, deflation_rank=16)
    assert hessian_traces(model, batches, small).traces == \
        hessian_traces(model, batches, small.model_copy(update={"deflation_rank": 0})).traces
    # a loose tolerance that plain probes reach soon: no sketch either
    loose = SensitivityConfig(min_probes=4, max_probes=400, tol=0.5, deflation_rank=16)
    assert hessian_traces(model, batches, loose).traces == \
        hessian_traces(model, batches, loose.model_copy(update={"deflation_rank": 0})).traces
