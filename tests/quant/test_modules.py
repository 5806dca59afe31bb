import pytest
import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence

from mpsearch.errors import PolicyError
from mpsearch.quant import QuantConfig
from mpsearch.quant.modules import QuantConv1d, QuantEmbedding, QuantLinear, QuantLSTM

LSTM_VARIANTS = [
    {"num_layers": 2, "batch_first": True},
    {"num_layers": 3, "batch_first": False},
    {"num_layers": 2, "batch_first": True, "bidirectional": True},
    {"num_layers": 2, "batch_first": True, "proj_size": 5},
    {"num_layers": 1, "batch_first": True, "bias": False},
]


# torch warns that oneDNN has no projection LSTM and falls back; nn.LSTM itself does the same.
pytestmark = pytest.mark.filterwarnings("ignore:LSTM with projections is not supported with oneDNN")


def _lstm(**kwargs):
    torch.manual_seed(0)
    return nn.LSTM(7, 11, **kwargs)


def _inputs(lstm, batch=3, steps=6, seed=1):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, steps, 7, generator=gen)
    if not lstm.batch_first:
        x = x.transpose(0, 1)
    layers = lstm.num_layers * (2 if lstm.bidirectional else 1)
    h0 = torch.randn(layers, batch, lstm.proj_size or lstm.hidden_size, generator=gen)
    c0 = torch.randn(layers, batch, lstm.hidden_size, generator=gen)
    return x, (h0, c0)


def _float_quant_lstm(kwargs, path):
    """An LSTM, its QuantLSTM with no quantized weight running on `path`, and inputs for both."""
    lstm = _lstm(**kwargs)
    quant = QuantLSTM.from_float(lstm, {})
    quant.recurrent_path = path
    return (lstm, quant, *_inputs(lstm))


def _assert_same(a, b, atol=1e-5):
    (out_a, (h_a, c_a)), (out_b, (h_b, c_b)) = a, b
    if isinstance(out_a, nn.utils.rnn.PackedSequence):
        assert torch.equal(out_a.batch_sizes, out_b.batch_sizes)
        out_a, out_b = out_a.data, out_b.data
    for x, y in ((out_a, out_b), (h_a, h_b), (c_a, c_b)):
        assert x.shape == y.shape
        assert torch.allclose(x, y, atol=atol, rtol=0), float((x - y).abs().max())


@pytest.mark.parametrize("kwargs", LSTM_VARIANTS, ids=str)
@pytest.mark.parametrize("path", ["fused", "unrolled"])
def test_float_quant_lstm_equals_nn_lstm(kwargs, path):
    lstm, quant, x, state = _float_quant_lstm(kwargs, path)
    _assert_same(quant(x, state), lstm(x, state))
    _assert_same(quant(x), lstm(x))
    unbatched = x[:, 0] if not lstm.batch_first else x[0]
    out, (h, _c) = quant(unbatched, (state[0][:, 0], state[1][:, 0]))
    ref_out, (ref_h, _ref_c) = lstm(unbatched, (state[0][:, 0], state[1][:, 0]))
    assert torch.allclose(out, ref_out, atol=1e-5) and torch.allclose(h, ref_h, atol=1e-5)


@pytest.mark.parametrize("kwargs", LSTM_VARIANTS, ids=str)
@pytest.mark.parametrize("path", ["fused", "unrolled"])
def test_packed_sequences(kwargs, path):
    lstm, quant, x, state = _float_quant_lstm(kwargs, path)
    packed = pack_padded_sequence(x, torch.tensor([4, 6, 2]), batch_first=lstm.batch_first, enforce_sorted=False)
    _assert_same(quant(packed, state), lstm(packed, state))


def _quantized_lstm(kwargs, configs):
    lstm = _lstm(**kwargs)
    return lstm, QuantLSTM.from_float(lstm, configs)


@pytest.mark.parametrize("kwargs", LSTM_VARIANTS, ids=str)
def test_fused_and_unrolled_agree_with_quantized_weights(kwargs):
    lstm = _lstm(**kwargs)
    names = [n for n in lstm._flat_weights_names if n.startswith("weight_")]
    configs = {n: QuantConfig(weight_bits=3 + i % 4, act_bits=None, method=("uniform", "lsq")[i % 2])
               for i, n in enumerate(names) if not n.startswith("weight_hr")}
    quant = QuantLSTM.from_float(lstm, configs)
    x, state = _inputs(lstm)
    quant.recurrent_path = "fused"
    fused = quant(x, state)
    quant.recurrent_path = "unrolled"
    _assert_same(quant(x, state), fused)
    with torch.no_grad():
        assert not torch.allclose(fused[0], lstm(x, state)[0], atol=1e-3)  # the quantizers did act


def test_fused_per_layer_path_with_quantized_layer_inputs_matches_unrolled():
    lstm, quant = _quantized_lstm({"num_layers": 3, "batch_first": True, "dropout": 0.0},
                                  {f"weight_ih_l{k}": QuantConfig(weight_bits=4, act_bits=4) for k in range(3)})
    x, state = _inputs(lstm)
    quant.eval()
    quant(x, state)  # the first batch initialises the input ranges
    assert quant._path() == "fused"
    fused = quant(x, state)
    quant.recurrent_path = "unrolled"
    _assert_same(quant(x, state), fused)


def _reference_lstm_with_quantized_hidden(quant, x, h, c):
    """Single-layer reference: the hidden state is fake-quantized before every W_hh matmul."""
    w_ih, w_hh = quant.quantized("weight_ih_l0"), quant.quantized("weight_hh_l0")
    q_h = quant.input_quantizers["weight_hh_l0"]
    outputs = []
    for t in range(x.shape[1]):
        gates = x[:, t] @ w_ih.T + quant.bias_ih_l0 + q_h.fake_quant(h) @ w_hh.T + quant.bias_hh_l0
        i, f, g, o = gates.chunk(4, dim=1)
        c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
        h = torch.sigmoid(o) * torch.tanh(c)
        outputs.append(h)
    return torch.stack(outputs, dim=1), h, c


def test_hidden_state_quantization_uses_the_unrolled_path():
    cfg = QuantConfig(weight_bits=8, act_bits=3)
    lstm, quant = _quantized_lstm({"batch_first": True}, {"weight_hh_l0": cfg, "weight_ih_l0": QuantConfig(act_bits=None)})
    assert quant._path() == "unrolled"
    quant.recurrent_path = "fused"
    x, state = _inputs(lstm)
    with pytest.raises(PolicyError, match="fused LSTM path cannot quantize the hidden state"):
        quant(x, state)
    quant.recurrent_path = "auto"
    quant.eval()
    quant(x, state)  # initialises the hidden-state range
    q_h = quant.input_quantizers["weight_hh_l0"]
    assert q_h.initialized and q_h.signed
    with torch.no_grad():
        out, (h, _c) = quant(x, state)
        ref_out, ref_h, _ref_c = _reference_lstm_with_quantized_hidden(quant, x, state[0][0], state[1][0])
    assert torch.allclose(out, ref_out, atol=1e-5) and torch.allclose(h[0], ref_h, atol=1e-5)
    assert not torch.allclose(out, lstm(x, state)[0], atol=1e-3)


def test_hidden_state_quantization_with_packed_input_matches_per_sequence_runs():
    lstm, quant = _quantized_lstm({"num_layers": 2, "batch_first": True},
                                  {"weight_hh_l0": QuantConfig(act_bits=4), "weight_hh_l1": QuantConfig(act_bits=4)})
    x, state = _inputs(lstm)
    quant.eval()
    quant(x, state)
    lengths = torch.tensor([4, 6, 2])
    with torch.no_grad():
        packed_out, (h, c) = quant(pack_padded_sequence(x, lengths, batch_first=True, enforce_sorted=False), state)
        padded, _ = nn.utils.rnn.pad_packed_sequence(packed_out, batch_first=True)
        for b, n in enumerate(lengths.tolist()):
            one = (state[0][:, b:b + 1].contiguous(), state[1][:, b:b + 1].contiguous())
            out_b, (h_b, c_b) = quant(x[b:b + 1, :n], one)
            assert torch.allclose(padded[b, :n], out_b[0], atol=1e-5)
            assert torch.allclose(h[:, b], h_b[:, 0], atol=1e-5) and torch.allclose(c[:, b], c_b[:, 0], atol=1e-5)


@pytest.mark.parametrize("path", ["fused", "unrolled"])
def test_gradients_reach_weights_biases_and_steps(path):
    cfg = QuantConfig(weight_bits=4, act_bits=None if path == "fused" else 6, method="lsq")
    lstm, quant = _quantized_lstm({"num_layers": 2, "batch_first": True},
                                  {n: cfg for n in ("weight_ih_l0", "weight_hh_l0", "weight_ih_l1", "weight_hh_l1")})
    x, state = _inputs(lstm)
    quant.train()
    with torch.no_grad():
        quant(x, state)  # initialise the activation steps
    assert quant._path() == path
    out, (h, c) = quant(x, state)
    (out.square().sum() + h.sum() + c.sum()).backward()
    for name, param in quant.named_parameters():
        assert param.grad is not None and torch.isfinite(param.grad).all() and param.grad.abs().sum() > 0, name


def test_dropout_between_layers_in_training():
    lstm, quant = _quantized_lstm({"num_layers": 2, "batch_first": True, "dropout": 0.5},
                                  {"weight_ih_l1": QuantConfig(act_bits=8)})
    x, _ = _inputs(lstm)
    quant.train()
    a, b = quant(x)[0], quant(x)[0]
    assert not torch.equal(a, b)
    quant.eval()
    assert torch.equal(quant(x)[0], quant(x)[0])


def test_single_weight_modules_hold_the_original_parameters():
    torch.manual_seed(0)
    linear, conv, emb = nn.Linear(5, 4), nn.Conv1d(4, 6, 3, padding=1, groups=2), nn.Embedding(9, 4, padding_idx=0)
    cfg = QuantConfig(weight_bits=8, act_bits=None)
    q_linear = QuantLinear.from_float(linear, {"weight": cfg})
    q_conv = QuantConv1d.from_float(conv, {"weight": cfg})
    q_emb = QuantEmbedding.from_float(emb, {"weight": QuantConfig(weight_bits=8)})
    assert q_linear.weight is linear.weight and q_conv.bias is conv.bias and q_emb.weight is emb.weight
    assert not len(q_emb.input_quantizers) and q_emb.padding_idx == 0
    assert "weight_quantizers" not in linear._modules  # the float module is left as it was
    x = torch.randn(2, 4, 7)
    assert torch.allclose(q_conv(x), conv(x), atol=2e-2)
    v = torch.randn(3, 5)
    assert torch.allclose(q_linear(v), linear(v), atol=2e-2)
    tokens = torch.tensor([[0, 3, 8]])
    assert torch.allclose(q_emb(tokens), emb(tokens), atol=2e-2)
    with pytest.raises(PolicyError, match="max_norm"):
        QuantEmbedding.from_float(nn.Embedding(3, 2, max_norm=1.0), {"weight": cfg})
    with pytest.raises(PolicyError, match="no weight 'bias_q'; valid weights: weight"):
        QuantLinear.from_float(linear, {"bias_q": cfg})
    q_linear.set_quantizers({"weight": None})
    assert torch.equal(q_linear(v), linear(v))


def test_quant_modules_can_be_built_directly_and_configured_later():
    layer = QuantLinear(4, 3)
    assert not len(layer.weight_quantizers)
    layer.set_quantizers({"weight": QuantConfig(weight_bits=2, act_bits=None)})
    assert all(row.unique().numel() <= 3 for row in layer.quantized("weight"))
    lstm = QuantLSTM(4, 5, num_layers=2, batch_first=True)
    lstm.set_quantizers({"weight_hh_l1": QuantConfig(weight_bits=4, act_bits=8)})
    assert lstm._path() == "unrolled" and lstm(torch.randn(2, 3, 4))[0].shape == (2, 3, 5)
    assert lstm.quantizable_weights() == ["weight_ih_l0", "weight_hh_l0", "weight_ih_l1", "weight_hh_l1"]
