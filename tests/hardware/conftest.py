import pytest

from mpsearch.hardware.profile import HardwareProfile
from mpsearch.quant.sites import Site

# A hand-made streaming RNN-T in miniature: 41,984 weights, 41,984 bytes at 8 bits.
TINY_SITES = [
    Site("enc.proj", "enc.proj", "weight", "linear", (64, 80), 64 * 80, "frame"),
    Site("enc.lstm.weight_ih_l0", "enc.lstm", "weight_ih_l0", "lstm_ih", (256, 64), 256 * 64, "frame"),
    Site("enc.lstm.weight_hh_l0", "enc.lstm", "weight_hh_l0", "lstm_hh", (256, 64), 256 * 64, "frame"),
    Site("pred.embed", "pred.embed", "weight", "embedding", (32, 64), 0, "token"),
    Site("joint.out", "joint.out", "weight", "linear", (32, 64), 32 * 64, "joint"),
]

BASE_PROFILE = {
    "name": "test-nna", "clock_mhz": 500, "macs_per_cycle": 256, "onchip_memory_bytes": 1 << 20,
    "offchip_bandwidth_gbps": 4.0, "onchip_bandwidth_gbps": 64.0, "supported_weight_bits": [2, 3, 4, 5, 6, 7, 8],
    "decompress_on_the_fly": True, "sparse_format": "bitmask", "activation_bits": 8, "layer_overhead_us": 1.0,
    "float_policy": "reject",
}


@pytest.fixture
def sites():
    return list(TINY_SITES)


@pytest.fixture
def make_profile():
    def make(**overrides) -> HardwareProfile:
        return HardwareProfile.from_dict({**BASE_PROFILE, **overrides}, source="test.yaml")

    return make
