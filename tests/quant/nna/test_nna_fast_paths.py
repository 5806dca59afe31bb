"""The emulation's fast paths against the plain formulations they replace."""

from __future__ import annotations

import pytest
import torch

from mpsearch.quant import Policy, QuantConfig, apply
from mpsearch.quant.nna import calibrate_nna
from mpsearch.quant.nna.lstm import SurrogateLSTMLayer, _float_cell
from mpsearch.quant.nna.modules import requantize_sum_narrow
from mpsearch.quant.nna.numerics import ROUNDINGS, requantize_sum


@pytest.mark.parametrize("rounding", ROUNDINGS)
@pytest.mark.parametrize("multiplier_bits, shift", [(15, 15), (15, 3), (12, 0), (22, 30), (30, 40)])
def test_narrow_requantize_sum_equals_the_int64_one(rounding, multiplier_bits, shift):
    g = torch.Generator().manual_seed(multiplier_bits * 100 + shift)
    a = torch.randint(-128, 128, (5, 7, 1, 16), generator=g)
    b = torch.randint(-128, 128, (5, 1, 9, 16), generator=g)
    a[0, 0, 0, :4] = torch.tensor([-128, 127, -128, 127])  # the extremes
    b[0, 0, 0, :4] = torch.tensor([-128, 127, 127, -128])
    m = [torch.randint(1, 1 << multiplier_bits, (), generator=g) for _ in range(2)]
    expected = requantize_sum([a, b], m, torch.tensor(shift), rounding, (-128, 127))
    got = requantize_sum_narrow([a, b], m, torch.tensor(shift), rounding, (-128, 127), [128, 128])
    assert torch.equal(got.to(torch.int64), expected)


def _unrolled_surrogate(projected, w_hh, h0, c0, hidden_values, cell_values):
    """The straight-through LSTM as autograd sees it unrolled: chip value + (float - float.detach())."""
    hidden = w_hh.shape[1]
    h, c, outputs = h0, c0, []
    for t in range(projected.shape[1]):
        h_f, c_f = _float_cell(projected[:, t] + h @ w_hh.t(), c, hidden)
        h = hidden_values[:, t] + (h_f - h_f.detach())
        c = cell_values[:, t] + (c_f - c_f.detach())
        outputs.append(h)
    return torch.stack(outputs, dim=1), c


def test_surrogate_lstm_layer_gradients_equal_the_unrolled_autograd_ones():
    g = torch.Generator().manual_seed(0)
    batch, steps, hidden = 3, 6, 5
    inputs = [torch.randn(batch, steps, 4 * hidden, generator=g, dtype=torch.float64),
              torch.randn(4 * hidden, hidden, generator=g, dtype=torch.float64) / 2,
              torch.randn(batch, hidden, generator=g, dtype=torch.float64) / 2,
              torch.randn(batch, hidden, generator=g, dtype=torch.float64)]
    chip = [torch.randn(batch, steps, hidden, generator=g, dtype=torch.float64).tanh(),
            torch.randn(batch, steps, hidden, generator=g, dtype=torch.float64)]
    weights = [torch.randn(batch, steps, hidden, generator=g, dtype=torch.float64),
               torch.randn(batch, hidden, generator=g, dtype=torch.float64)]

    def grads(fn):
        leaves = [x.clone().requires_grad_() for x in inputs]
        y, c_last = fn(*leaves, *chip)
        assert torch.equal(y.detach(), chip[0]) and torch.equal(c_last.detach(), chip[1][:, -1])
        ((y * weights[0]).sum() + (c_last * weights[1]).sum()).backward()
        return [x.grad for x in leaves]

    for fast, reference in zip(grads(SurrogateLSTMLayer.apply), grads(_unrolled_surrogate)):
        torch.testing.assert_close(fast, reference, rtol=1e-10, atol=1e-12)


def test_training_forward_equals_the_checked_inference_forward(tiny_rnnt, speech):
    emulated = apply(tiny_rnnt, Policy.uniform(QuantConfig(weight_bits=8)), emulation="nna")
    calibrate_nna(emulated, [speech.calibration])
    emulated.eval()
    feats, feat_lens, targets, target_lens = speech.evaluation

    def outputs():
        enc, _ = emulated.encode(feats, feat_lens)
        pred = emulated.predictor(targets, target_lens)
        return enc, pred, emulated.joiner(enc[:, :, None], pred[:, None])

    with torch.no_grad():
        expected = outputs()
    for got, want in zip(outputs(), expected):  # with grad: the surrogate paths run beside the integers
        assert got.requires_grad
        assert torch.equal(got.detach(), want)
