import math

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mpsearch.errors import ConfigError, PolicyError
from mpsearch.hardware import RooflineLatencyModel, Workload, format_latency_table, latency
from mpsearch.quant.config import QuantConfig
from mpsearch.quant.policy import Policy
from mpsearch.quant.sites import Site

WORKLOAD = Workload(audio_seconds=2.0, encoder_frame_rate_hz=25, tokens_per_second=10)
FRAMES, TOKENS = 50.0, 20.0


def _policy(sites, bits, sparsity=None):
    sparsity = sparsity or [None] * len(sites)
    return Policy({s.name: QuantConfig(weight_bits=b, sparsity=sp) for s, b, sp in zip(sites, bits, sparsity)})


PROFILE_VARIANTS = {
    # 41,984 weights: on chip at <= ~4.7 bits on average, off chip above; the search crosses the line.
    "straddles-onchip": {"onchip_memory_bytes": 25_000},
    "no-decompression": {"decompress_on_the_fly": False, "onchip_memory_bytes": 30_000},
    "packed-lanes-index": {"narrow_weight_speedup": {4: 2.0, 2: 4.0}, "sparse_format": "index", "sparse_index_bits": 3,
                               "skips_zero_weights": True, "onchip_memory_bytes": 12_000},
    "all-offchip-activation-bound": {"onchip_memory_bytes": 0, "onchip_bandwidth_gbps": None,
                                         "activation_bandwidth_gbps": 0.05},
}
SPARSITY = st.sampled_from([None, "2:4", {"method": "magnitude", "fraction": 0.3},
                            {"method": "csp", "fraction": 0.9}])


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(variant=st.sampled_from(sorted(PROFILE_VARIANTS)), data=st.data())
def test_fewer_bits_never_increase_latency_or_memory(sites, make_profile, variant, data):
    profile = make_profile(**PROFILE_VARIANTS[variant])
    bits = data.draw(st.lists(st.integers(2, 8), min_size=len(sites), max_size=len(sites)), label="bits")
    sparsity = data.draw(st.lists(SPARSITY, min_size=len(sites), max_size=len(sites)), label="sparsity")
    which = data.draw(st.integers(0, len(sites) - 1), label="site")
    lower = data.draw(st.integers(2, bits[which]), label="lower")
    narrower = list(bits)
    narrower[which] = lower

    before = latency(sites, _policy(sites, bits, sparsity), profile, WORKLOAD)
    after = latency(sites, _policy(sites, narrower, sparsity), profile, WORKLOAD)
    assert after.memory_bytes <= before.memory_bytes
    assert after.latency_ms <= before.latency_ms * (1 + 1e-12)
    for a, b in zip(after.rows, before.rows):
        assert a.weight_bytes <= b.weight_bytes


def test_bitmask_storage_is_density_times_bits_plus_one_bit_per_weight(sites, make_profile):
    site = sites[0]  # 64 x 80 = 5120 weights
    model = RooflineLatencyModel(make_profile(sparse_format="bitmask"), WORKLOAD)
    half = QuantConfig(weight_bits=4, sparsity={"method": "magnitude", "fraction": 0.5})
    assert model.weight_bytes(site, half) == (2560 * 4 + 5120) // 8 == 1920
    assert model.weight_bytes(site, QuantConfig(weight_bits=4, sparsity="2:4")) == 1920
    assert model.weight_bytes(site, QuantConfig(weight_bits=4)) == 5120 * 4 // 8
    cost = model.step_cost(site, half)
    assert cost.weight_read_us == pytest.approx(1920 / (4.0 * 1e3))
    # At 90% density the mask costs more than it saves; the layer is stored dense.
    dense_wins = QuantConfig(weight_bits=8, sparsity={"method": "magnitude", "fraction": 0.1})
    assert model.weight_bytes(site, dense_wins) == 5120


def test_other_sparse_formats(sites, make_profile):
    site = sites[0]
    half = QuantConfig(weight_bits=4, sparsity={"method": "csp", "fraction": 0.5})
    index = RooflineLatencyModel(make_profile(sparse_format="index", sparse_index_bits=2))
    assert index.weight_bytes(site, half) == 2560 * (4 + 2) // 8
    assert RooflineLatencyModel(make_profile(sparse_format="none")).weight_bytes(site, half) == 2560
    unpacked = RooflineLatencyModel(make_profile(decompress_on_the_fly=False))
    assert unpacked.weight_bytes(site, half) == (2560 * 8 + 5120) // 8


def test_sparsity_cuts_compute_only_when_the_chip_skips_zeros(sites, make_profile):
    half = QuantConfig(weight_bits=8, sparsity="2:4")
    dense_compute = RooflineLatencyModel(make_profile()).step_cost(sites[1], half).compute_us
    skipping = RooflineLatencyModel(make_profile(skips_zero_weights=True)).step_cost(sites[1], half).compute_us
    assert dense_compute == pytest.approx(256 * 64 / (256 * 500))
    assert skipping == pytest.approx(dense_compute / 2)


def test_a_model_on_chip_is_not_charged_offchip_rereads(sites, make_profile):
    policy = Policy.uniform(QuantConfig(weight_bits=8))
    fits = latency(sites, policy, make_profile(onchip_memory_bytes=41_984), WORKLOAD)
    too_big = latency(sites, policy, make_profile(onchip_memory_bytes=41_983), WORKLOAD)
    assert fits.memory_bytes == too_big.memory_bytes == 41_984
    assert fits.onchip and not too_big.onchip
    hh_fits, hh_big = fits.rows[2], too_big.rows[2]
    n_bytes = 256 * 64
    assert hh_big.weight_read_us == pytest.approx(FRAMES * n_bytes / 4e3)
    assert hh_fits.weight_read_us == pytest.approx(n_bytes / 4e3 + (FRAMES - 1) * n_bytes / 64e3)
    assert hh_big.bound == "memory"
    assert fits.latency_ms < too_big.latency_ms


def test_roofline_of_one_site(sites, make_profile):
    profile = make_profile(onchip_memory_bytes=0, activation_bandwidth_gbps=2.0)
    row = latency(sites[:1], Policy.uniform(QuantConfig(weight_bits=8)), profile, WORKLOAD).rows[0]
    compute = 64 * 80 / (256 * 500)
    read = 5120 / 4e3
    act = (80 + 64) * 1 / 2e3
    assert row.steps == FRAMES
    assert row.compute_us == pytest.approx(FRAMES * compute)
    assert row.activation_us == pytest.approx(FRAMES * act)
    assert row.time_us == pytest.approx(FRAMES * (max(compute, read, act) + 1.0))
    assert row.bound == "memory"


def test_steps_per_utterance(sites, make_profile):
    report = latency(sites, Policy.uniform(QuantConfig(weight_bits=8)), make_profile(), WORKLOAD)
    assert [r.steps for r in report.rows] == [FRAMES, FRAMES, FRAMES, TOKENS, FRAMES + TOKENS]


def test_chunked_frames_batch_all_but_the_recurrent_matrix(sites, make_profile):
    chunked = WORKLOAD.model_copy(update={"chunk_frames": 5})
    report = latency(sites, Policy.uniform(QuantConfig(weight_bits=8)), make_profile(), chunked)
    assert [r.steps for r in report.rows] == [10, 10, FRAMES, TOKENS, FRAMES + TOKENS]
    single = latency(sites, Policy.uniform(QuantConfig(weight_bits=8)), make_profile(), WORKLOAD)
    assert report.rows[0].compute_us == pytest.approx(single.rows[0].compute_us)
    assert report.rows[0].weight_read_us < single.rows[0].weight_read_us


def test_lm_step_uses_lm_tokens(make_profile):
    lm = [Site("lm.ff", "lm.ff", "weight", "linear", (64, 64), 64 * 64, "lm")]
    policy = Policy.uniform(QuantConfig(weight_bits=8))
    assert latency(lm, policy, make_profile(), WORKLOAD).rows[0].steps == TOKENS
    with_lm = WORKLOAD.model_copy(update={"lm_tokens": 7})
    assert latency(lm, policy, make_profile(), with_lm).rows[0].steps == 7


def test_unknown_step_is_named(make_profile):
    odd = [Site("x", "x", "weight", "linear", (4, 4), 16, "beam")]
    with pytest.raises(ConfigError, match="Site 'x' has step 'beam'.*frame, token, joint, lm"):
        latency(odd, Policy.uniform(QuantConfig()), make_profile())


def test_embedding_reads_one_row_per_step(sites, make_profile):
    row = latency(sites, Policy.uniform(QuantConfig(weight_bits=8)), make_profile(onchip_memory_bytes=0),
                  WORKLOAD).rows[3]
    assert row.weight_bytes == 32 * 64
    assert row.weight_read_us == pytest.approx(TOKENS * 64 / 4e3)
    assert row.compute_us == 0


def test_unsupported_bits_name_site_bits_and_list(sites, make_profile):
    policy = Policy({"_default": QuantConfig(weight_bits=8), "joint.out": QuantConfig(weight_bits=3)})
    with pytest.raises(PolicyError, match=r"'joint.out' has weight_bits 3.*supported widths: \[4, 8\]"):
        latency(sites, policy, make_profile(supported_weight_bits=[4, 8]))


def test_float_site_rejected_or_run_in_fp32(sites, make_profile):
    policy = Policy({"_default": QuantConfig(weight_bits=8), "pred.embed": None})
    with pytest.raises(PolicyError, match="'pred.embed' is kept float"):
        latency(sites, policy, make_profile(float_policy="reject"))
    report = latency(sites, policy, make_profile(float_policy="fp32"), WORKLOAD)
    row = report.rows[3]
    assert (row.weight_bits, row.act_bits, row.weight_bytes) == (32, 32, 32 * 64 * 4)
    numel = sum(s.numel for s in sites)
    assert report.avg_weight_bits == pytest.approx((8 * (numel - 2048) + 32 * 2048) / numel)


def test_totals_and_exports(sites, make_profile):
    bits = [8, 4, 2, 8, 6]
    report = latency(sites, _policy(sites, bits), make_profile(), WORKLOAD)
    numel = [s.numel for s in sites]
    assert report.memory_bytes == sum(math.ceil(n * b / 8) for n, b in zip(numel, bits))
    assert report.avg_weight_bits == pytest.approx(sum(n * b for n, b in zip(numel, bits)) / sum(numel))
    assert report.latency_ms == pytest.approx(sum(r.time_us for r in report.rows) / 1e3)
    frame = report.to_frame()
    assert list(frame["name"]) == [s.name for s in sites]
    for column in ("weight_bits", "act_bits", "density", "weight_bytes", "steps", "compute_us", "weight_read_us",
                   "activation_us", "time_us", "bound", "onchip"):
        assert column in frame.columns
    data = report.to_dict()
    assert data["memory_bytes"] == report.memory_bytes and len(data["sites"]) == len(sites)
    assert report.metrics() == {"latency_ms": report.latency_ms, "size_bytes": report.memory_bytes,
                                "avg_weight_bits": report.avg_weight_bits}


def test_latency_table(sites, make_profile):
    policy = Policy({"_default": QuantConfig(weight_bits=4, sparsity="2:4"), "pred.embed": QuantConfig()})
    text = format_latency_table(latency(sites, policy, make_profile(), WORKLOAD))
    header = text.splitlines()[0].split()
    assert header[:2] == ["site", "bits"] and header[-3:] == ["steps", "time_us", "bound"]
    for site in sites:
        assert site.name in text
    assert "50%" in text and "latency" in text and "average weight bits" in text


def test_shipped_profile_by_name(sites):
    report = latency(sites, Policy.uniform(QuantConfig(weight_bits=4)), "nna-int8")
    assert report.profile == "nna-int8" and report.onchip and report.latency_ms > 0


def test_centroid_methods_pay_for_their_codebooks(sites, make_profile):
    site = sites[0]  # 64 x 80 = 5120 weights
    model = RooflineLatencyModel(make_profile(sparse_format="none"), WORKLOAD)
    uniform = model.weight_bytes(site, QuantConfig(weight_bits=2))
    assert uniform == 5120 * 2 // 8
    # s8bqat per channel: one table of 2^2 int8 centroids per output channel beside the 2-bit indices.
    s8bqat = QuantConfig(weight_bits=2, method="s8bqat")
    assert model.codebook_bits(site, s8bqat) == 64 * 4 * 8
    assert model.weight_bytes(site, s8bqat) == uniform + 64 * 4
    assert model.weight_bytes(site, QuantConfig(weight_bits=2, method="s8bqat", granularity="per_tensor")) == uniform + 4
    assert model.weight_bytes(site, QuantConfig(weight_bits=2, method="gq")) == uniform + 4
    report = latency([site], Policy({site.name: s8bqat}), model.profile, WORKLOAD)
    assert report.memory_bytes == uniform + 64 * 4 and report.rows[0].weight_bytes == uniform + 64 * 4
    # Stored as int8 values (8 bits, or no on-the-fly decompression) the weights need no table; a
    # compiler falls back to that when the tables outweigh the packed indices, so fewer bits never cost.
    assert model.weight_bytes(site, QuantConfig(weight_bits=8, method="s8bqat")) == 5120
    assert model.weight_bytes(site, QuantConfig(weight_bits=7, method="s8bqat")) == 5120
    sizes = [model.weight_bytes(site, QuantConfig(weight_bits=b, method="s8bqat")) for b in range(8, 1, -1)]
    assert sizes == sorted(sizes, reverse=True)
    plain = RooflineLatencyModel(make_profile(decompress_on_the_fly=False), WORKLOAD)
    assert plain.weight_bytes(site, s8bqat) == plain.weight_bytes(site, QuantConfig(weight_bits=2)) == 5120


@pytest.mark.parametrize(("method", "granularity"), [("s8bqat", "per_channel"), ("s8bqat", "per_tensor"),
                                                     ("gq", "per_channel"), ("gq", "per_tensor")])
def test_counted_codebooks_match_the_quantizers(sites, make_profile, method, granularity):
    import torch

    from mpsearch.quant.quantizers import make_weight_quantizer

    site = sites[0]
    cfg = QuantConfig(weight_bits=3, act_bits=None, method=method, granularity=granularity)
    quantizer = make_weight_quantizer(cfg, torch.randn(site.shape, generator=torch.Generator().manual_seed(0)))
    entries = quantizer.codebook().numel() if method == "s8bqat" else quantizer.int8_codes().numel()
    model = RooflineLatencyModel(make_profile(), WORKLOAD)
    assert model.codebook_bits(site, cfg) == entries * 8
