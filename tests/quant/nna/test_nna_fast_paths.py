"""The emulation's fast paths against the plain formulations they replace."""

from __future__ import annotations

import pytest
import torch

from mpsearch.quant import Policy, QuantConfig, apply
from mpsearch.quant.nna import NNANumerics, calibrate_nna, checking_grid
from mpsearch.quant.nna import codes as nna_codes
from mpsearch.quant.nna.codes import GATHER_CHUNK, DeferredValue, TableCodes
from mpsearch.quant.nna.lstm import SurrogateLSTMLayer, _float_cell
from mpsearch.quant.nna.numerics import requantize_sum
from mpsearch.quant.nna.ops import NNAAdd
from mpsearch.quant.rounding import ROUNDINGS


@pytest.mark.parametrize("rounding", ROUNDINGS.names())
@pytest.mark.parametrize("multiplier_bits, scales", [(15, (0.03, 0.011, 0.02)), (11, (0.5, 0.004, 0.01)),
                                                      (30, (0.007, 0.007, 0.1))])
def test_add_table_equals_requantize_sum(rounding, multiplier_bits, scales):
    add = NNAAdd(NNANumerics(rounding=rounding, multiplier_bits=multiplier_bits))
    add.in_scales.copy_(torch.tensor(scales[:2]))
    add.out_scale.fill_(scales[2])
    add.phase = "frozen"
    add.prepare()
    g = torch.Generator().manual_seed(multiplier_bits)
    a = torch.randint(-128, 128, (5, 7, 1, 16), generator=g)
    b = torch.randint(-128, 128, (5, 1, 9, 16), generator=g)
    a[0, 0, 0, :4] = torch.tensor([-128, 127, -128, 127])  # the extremes
    b[0, 0, 0, :4] = torch.tensor([-128, 127, 127, -128])
    with torch.no_grad():
        out = add(a * add.in_scales[0], b * add.in_scales[1])
    p = add.integer_params()
    expected = requantize_sum([a, b], list(p["multipliers"]), p["shift"], rounding, (-128, 127))
    assert torch.equal(out._nna_codes.dense((-128, 127)), expected)
    assert torch.equal(out, expected.to(torch.float32) * add.out_scale)


@pytest.mark.parametrize("chunk", [GATHER_CHUNK, 7])
@pytest.mark.parametrize("matmul_dtype", [torch.int8, torch.float32, torch.float64])
def test_table_codes_gather_and_multiply_as_the_dense_codes(monkeypatch, chunk, matmul_dtype):
    monkeypatch.setattr(nna_codes, "GATHER_CHUNK", chunk)
    monkeypatch.setattr(nna_codes, "exact_matmul_dtype", lambda inner, device: matmul_dtype)
    g = torch.Generator().manual_seed(0)
    table = torch.randint(-128, 128, (1 << 16,), generator=g)
    parts = [torch.randint(0, 256, (3, 5, 1, 8), generator=g, dtype=torch.int32) << 8,
             torch.randint(0, 256, (1, 9, 8), generator=g, dtype=torch.int32)]
    codes = TableCodes.of(table, parts)
    dense = table[(parts[0] + parts[1]).long()]
    assert codes.shape == dense.shape
    assert torch.equal(codes.take(table), dense)
    assert torch.equal(codes.take(table.to(torch.float32) * 0.1), dense.to(torch.float32) * 0.1)
    weight = torch.randint(-128, 128, (6, 8), generator=g)
    assert torch.equal(codes.matmul(weight), dense @ weight.t())
    scalar = TableCodes.of(table, [torch.tensor(5, dtype=torch.int32)])
    assert torch.equal(scalar.take(table), table[5])


def calibrated(model, speech, numerics=None):
    """`model` under NNA emulation, 8-bit weights, calibrated on the speech fixture, in eval mode."""
    emulated = apply(model, Policy.uniform(QuantConfig(weight_bits=8)), emulation="nna", numerics=numerics)
    calibrate_nna(emulated, [speech.calibration])
    return emulated.eval()


def rnnt_outputs(emulated, speech):
    """Encoder output, predictor output and the joiner's lattice on the evaluation utterances."""
    feats, feat_lens, targets, target_lens = speech.evaluation
    enc, _ = emulated.encode(feats, feat_lens)
    pred = emulated.predictor(targets, target_lens)
    return enc, pred, emulated.joiner(enc[:, :, None], pred[:, None])


@pytest.mark.parametrize("numerics", [None, NNANumerics(multiplier_bits=30, rounding="half_even"),
                                      NNANumerics(multiplier_bits=11, rounding="half_away")],
                         ids=["half_up", "half_even", "half_away"])
def test_unchecked_forward_equals_the_grid_checked_one(monkeypatch, tiny_rnnt, speech, numerics):
    """Grid checks recover every input from its float value; without them, consumers take codes as
    their producer handed them over: through views, as tables composed (add -> tanh) and gathered
    chunk by chunk into the matmul (tanh -> linear)."""
    monkeypatch.setattr(nna_codes, "GATHER_CHUNK", 100)
    emulated = calibrated(tiny_rnnt, speech, numerics)
    feats, feat_lens, _, _ = speech.evaluation

    def outputs():
        return (*rnnt_outputs(emulated, speech), emulated.greedy_decode(feats, feat_lens))

    with torch.no_grad():
        with checking_grid():
            expected = outputs()
        got = outputs()
    for a, b in zip(got[:3], expected[:3]):
        assert torch.equal(a, b)
    assert got[3] == expected[3]


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
    emulated = calibrated(tiny_rnnt, speech)
    with torch.no_grad():
        expected = rnnt_outputs(emulated, speech)
    for got, want in zip(rnnt_outputs(emulated, speech), expected):  # with grad: the surrogate paths run beside the integers
        assert got.requires_grad
        assert torch.equal(got.detach(), want)


def test_a_deferred_lattice_value_reads_as_the_dense_one(tiny_rnnt, speech):
    """Without gradients the joiner's add and tanh hand over codes and defer their float values; any
    read of such a value (float op, view, in-place change) sees what an eager computation gives."""
    emulated = calibrated(tiny_rnnt, speech)
    joiner = emulated.joiner
    with torch.no_grad():
        enc, pred, _ = rnnt_outputs(emulated, speech)
        hidden = joiner.activation(joiner.add(enc[:, :, None], pred[:, None]))
        with checking_grid():  # every value computed eagerly and every input recovered from it
            eager = joiner.activation(joiner.add(enc[:, :, None], pred[:, None]))
            eager_out = joiner.out(eager * 2)
        assert isinstance(hidden, DeferredValue) and type(eager) is torch.Tensor
        assert hidden.shape == eager.shape and hidden.dtype == eager.dtype
        assert torch.equal(hidden + 0, eager) and torch.equal(hidden[1, :3], eager[1, :3])
        assert torch.equal(joiner.out(hidden), joiner.out(eager))
        hidden.mul_(2)  # changed in place: its codes no longer hold, the consumer reads the new value
        assert torch.equal(joiner.out(hidden), eager_out)


def test_weight_codes_are_reused_only_while_what_they_come_from_is_unchanged(tiny_rnnt, speech):
    emulated = calibrated(tiny_rnnt, speech)
    layer = emulated.joiner.out
    quantizer = layer.weight_quantizers["weight"]
    first = layer.weight_codes("weight")
    assert layer.weight_codes("weight")[0] is first[0]
    with torch.no_grad():
        layer.weight.data[0, 0] += 1.0  # through .data: no version counter sees it
    changed = layer.weight_codes("weight")
    assert changed[0] is not first[0] and not torch.equal(changed[0], first[0])
    assert torch.equal(changed[0], quantizer.quantize_int(layer.weight)[0])
    quantizer.set_bits(4)  # a plain attribute of the quantizer
    codes, _, bits = layer.weight_codes("weight")
    assert bits == 4 and int(codes.abs().max()) <= 7
