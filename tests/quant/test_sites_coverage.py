"""find_sites accounts for every weight matrix: GRU/RNN matrices, attention projections, tied weights,
weight-normed layers; apply quantizes each of them."""

import warnings

import pytest
import torch
from torch import nn

from mpsearch.errors import PolicyError
from mpsearch.hardware.latency import Workload, latency
from mpsearch.quant import Policy, QuantConfig, apply, calibrating, find_sites, quantized_sites
from mpsearch.quant.attention import SplitMultiheadAttention
from mpsearch.quant.prepare import prepare
from mpsearch.quant.recurrent import QuantGRU, QuantRNN
from mpsearch.quant.sites import UncoveredWeightWarning

W8A8 = QuantConfig(weight_bits=8, act_bits=8)
NNA_PROFILE = "nna-int8"


class ConvGRU(nn.Module):
    """A conv + GRU CTC acoustic model in miniature."""

    def __init__(self, feats=8, hidden=16, vocab=6, bidirectional=False):
        super().__init__()
        self.conv = nn.Conv1d(feats, hidden, 3, padding=1)
        self.gru = nn.GRU(hidden, hidden, num_layers=2, batch_first=True, bidirectional=bidirectional)
        self.out = nn.Linear(hidden * (2 if bidirectional else 1), vocab)

    def forward(self, x):
        y, _ = self.gru(self.conv(x).transpose(1, 2))
        return self.out(y)


def test_gru_matrices_are_sites_with_their_macs():
    model = ConvGRU()
    sites = {s.name: s for s in find_sites(model)}
    assert list(sites) == ["conv", "gru.weight_ih_l0", "gru.weight_hh_l0", "gru.weight_ih_l1", "gru.weight_hh_l1",
                           "out"]
    assert sites["gru.weight_ih_l0"].kind == "gru_ih" and sites["gru.weight_hh_l1"].kind == "gru_hh"
    assert sites["gru.weight_hh_l0"].shape == (48, 16) and sites["gru.weight_hh_l0"].macs == 48 * 16
    covered = sum(s.numel for s in sites.values())
    assert covered == sum(p.numel() for p in model.parameters() if p.dim() >= 2)


def test_gru_latency_counts_every_matrix_and_the_recurrence_is_not_chunked():
    model = ConvGRU()
    sites = find_sites(model)
    report = latency(sites, Policy.uniform(W8A8), NNA_PROFILE)
    rows = {r.name: r for r in report.rows}
    assert set(rows) == {s.name for s in sites}
    assert report.memory_bytes == sum(s.numel for s in sites)
    assert rows["gru.weight_hh_l0"].compute_us > 0
    chunked = latency(sites, Policy.uniform(W8A8), NNA_PROFILE, Workload(chunk_frames=5))
    steps = {r.name: r.steps for r in chunked.rows}
    assert steps["gru.weight_hh_l0"] == Workload().frames
    assert steps["gru.weight_ih_l0"] == Workload().frames / 5


@pytest.mark.parametrize("bidirectional", [False, True])
@pytest.mark.parametrize("act_bits", [None, 8])
def test_quantized_gru_is_close_to_float_and_trains_every_matrix(bidirectional, act_bits):
    torch.manual_seed(0)
    model = ConvGRU(bidirectional=bidirectional).eval()
    x = torch.randn(3, 8, 7)
    q = apply(model, Policy.uniform(QuantConfig(weight_bits=8, act_bits=act_bits)))
    assert isinstance(q.gru, QuantGRU)
    assert set(quantized_sites(q)) == {s.name for s in find_sites(model)}
    with torch.no_grad(), calibrating(q):
        q(x)
        ref = model(x)
        out = q(x)
    assert float((out - ref).norm() / ref.norm()) < 0.05
    q.train()
    q(x).pow(2).mean().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for n, p in q.named_parameters() if "weight" in n)


def test_quantized_gru_unrolled_matches_the_fused_kernel_in_float():
    torch.manual_seed(0)
    gru = nn.GRU(5, 6, num_layers=2, bidirectional=True)
    q = QuantGRU.from_float(gru, {})
    x, h0 = torch.randn(4, 3, 5), torch.randn(4, 3, 6)
    ref, ref_h = gru(x, h0)
    out, h = q._unrolled(x.transpose(0, 1), h0, None)
    torch.testing.assert_close(out.transpose(0, 1), ref, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(h, ref_h, atol=1e-5, rtol=1e-5)


def test_elman_rnn_is_quantized_too():
    torch.manual_seed(0)
    model = nn.Sequential()
    model.rnn = nn.RNN(4, 5, nonlinearity="relu", batch_first=True)
    sites = find_sites(model)
    assert [s.kind for s in sites] == ["rnn_ih", "rnn_hh"]
    q = apply(model, Policy.uniform(QuantConfig(weight_bits=8, act_bits=8)))
    assert isinstance(q.rnn, QuantRNN)
    x = torch.randn(2, 6, 4)
    with torch.no_grad(), calibrating(q):
        q(x)
    with torch.no_grad():
        out, _ = q(x)
        ref, _ = model(x)
    assert float((out - ref).norm() / ref.norm()) < 0.05


def test_multihead_attention_in_proj_is_one_site_split_into_qkv_by_apply():
    torch.manual_seed(0)
    layer = nn.TransformerEncoderLayer(16, 2, dim_feedforward=32, dropout=0.0, batch_first=True).eval()
    sites = {s.name: s for s in find_sites(layer)}
    assert sites["self_attn.in_proj_weight"].shape == (48, 16)
    assert sites["self_attn.in_proj_weight"].macs == 48 * 16
    assert "self_attn.out_proj" in sites
    assert sum(s.numel for s in sites.values()) == sum(p.numel() for p in layer.parameters() if p.dim() >= 2)
    q = apply(layer, Policy({"self_attn.in_proj_weight": QuantConfig(weight_bits=4), "_default": None}))
    assert isinstance(q.self_attn, SplitMultiheadAttention)
    assert set(quantized_sites(q)) == {"self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"}


@pytest.mark.parametrize("batch_first", [False, True])
def test_split_attention_computes_what_multihead_attention_computes(batch_first):
    torch.manual_seed(0)
    mha = nn.MultiheadAttention(16, 4, batch_first=batch_first).eval()
    split = SplitMultiheadAttention(mha).eval()
    x = torch.randn(3, 5, 16) if batch_first else torch.randn(5, 3, 16)
    pad = torch.tensor([[False] * 5, [False] * 3 + [True] * 2, [False] * 4 + [True]])
    causal = torch.ones(5, 5, dtype=torch.bool).triu(1)
    for kwargs in ({}, {"key_padding_mask": pad}, {"attn_mask": causal, "key_padding_mask": pad},
                   {"attn_mask": torch.zeros(5, 5).masked_fill(causal, float("-inf"))}):
        ref, ref_w = mha(x, x, x, **kwargs)
        out, w = split(x, x, x, **kwargs)
        torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(w, ref_w, atol=1e-5, rtol=1e-5)


def test_transformer_encoder_layer_gives_the_same_output_after_preparation():
    torch.manual_seed(0)
    layer = nn.TransformerEncoderLayer(16, 2, dim_feedforward=32, dropout=0.0, batch_first=True).eval()
    x = torch.randn(2, 5, 16)
    ref = layer(x)
    prepared, renames = prepare(__import__("copy").deepcopy(layer))
    assert renames == {f"self_attn.{p}": "self_attn.in_proj_weight" for p in ("q_proj", "k_proj", "v_proj")}
    assert isinstance(prepared.activation, nn.ReLU)
    torch.testing.assert_close(prepared(x), ref, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("api", ["hook", "parametrization"])
def test_weight_norm_is_folded_into_a_plain_weight(api):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv1d(4, 6, 3, padding=1))
    if api == "hook":
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # deprecated, yet still in models people load
            model[0] = torch.nn.utils.weight_norm(model[0], dim=2)
    else:
        model[0] = torch.nn.utils.parametrizations.weight_norm(model[0], dim=2)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # g and v are covered by the conv's site
        sites = find_sites(model)
    assert [s.name for s in sites] == ["0"]
    x = torch.randn(2, 4, 9)
    q = apply(model, Policy.uniform(QuantConfig(weight_bits=8, act_bits=None)))
    assert {n for n, _ in q.named_parameters()} == {"0.weight", "0.bias"}
    torch.testing.assert_close(q(x), model(x), atol=0.05, rtol=0.05)


class TiedLM(nn.Module):
    def __init__(self):
        super().__init__()
        self.embed = nn.Embedding(20, 8)
        self.body = nn.Linear(8, 8)
        self.proj = nn.Linear(8, 20, bias=False)
        self.proj.weight = self.embed.weight

    def forward(self, tokens):
        return self.proj(self.body(self.embed(tokens)))


def test_tied_weights_are_one_site_counted_once():
    model = TiedLM()
    sites = find_sites(model)
    assert [s.name for s in sites] == ["proj", "body"] or [s.name for s in sites] == ["body", "proj"]
    tied = next(s for s in sites if s.name == "proj")
    assert tied.tied == (("embed", "weight"),) and tied.kind == "linear" and tied.macs == 20 * 8
    report = latency(sites, Policy.uniform(W8A8), NNA_PROFILE)
    assert report.memory_bytes == 20 * 8 + 8 * 8
    q = apply(model, Policy.uniform(QuantConfig(weight_bits=4, act_bits=None)))
    assert q.proj.weight is q.embed.weight
    assert set(quantized_sites(q)) == {"proj", "embed", "body"}  # both places of the tied weight quantize it
    tokens = torch.tensor([[1, 2, 3]])
    torch.testing.assert_close(q.embed(tokens)[0], q.proj.quantized("weight")[tokens[0]])


def test_uncovered_weights_are_listed_in_one_warning_or_one_error():
    model = nn.Sequential(nn.Conv2d(1, 2, 3), nn.Flatten(), nn.Linear(8, 2))
    model.register_parameter("table", nn.Parameter(torch.zeros(4, 4)))
    with pytest.warns(UncoveredWeightWarning) as record:
        sites = find_sites(model)
    assert len(record) == 1
    assert "0.weight (Conv2d)" in str(record[0].message) and "table (Sequential)" in str(record[0].message)
    assert [s.name for s in sites] == ["2"]
    with pytest.raises(PolicyError, match=r"table \(Sequential\), 0.weight \(Conv2d\).*strict=False"):
        find_sites(model, strict=True)


def test_an_error_inside_apply_names_the_module():
    model = nn.Sequential(nn.Linear(4, 4))
    with pytest.raises(PolicyError, match=r"Site '0'"):
        apply(model, Policy.uniform(QuantConfig(weight_bits=4, sparsity={"method": "nm", "n": 2, "m": 3})))
