import json

import pytest
from torch import nn

from mpsearch.errors import MpsearchError, PolicyError
from mpsearch.quant import QUANTIZERS, Policy, QuantConfig, find_sites


class Model(nn.Module):
    def __init__(self, hidden=8):
        super().__init__()
        self.enc = nn.LSTM(4, hidden, num_layers=2, batch_first=True)
        self.proj = nn.Linear(hidden, 6)
        self.head = nn.Linear(6, 3)


Q8 = QuantConfig(weight_bits=8)
Q4 = QuantConfig(weight_bits=4, method="lsq")
Q2 = QuantConfig(weight_bits=2, act_bits=None)


def test_resolution_order_exact_then_first_pattern_then_default_then_float():
    policy = Policy({
        "re:enc\\.weight_hh_.*": Q4,
        "re:enc\\..*": Q2,
        "enc.weight_hh_l1": Q8,
        "_default": Q8,
    })
    assert policy.resolve("enc.weight_hh_l1") is Q8  # exact beats every pattern
    assert policy.resolve("enc.weight_hh_l0") is Q4  # first matching pattern wins
    assert policy.resolve("enc.weight_ih_l0") is Q2
    assert policy.resolve("head") is Q8  # default
    assert Policy({"head": Q4}).resolve("proj") is None  # nothing matches: float
    assert Policy({"head": None, "_default": Q8}).resolve("head") is None  # explicit float


def test_json_round_trip(tmp_path):
    sites = find_sites(Model())
    policy = Policy({"enc.weight_ih_l0": Q4, "re:.*hh.*": None, "_default": Q8}, [s.name for s in sites])
    path = tmp_path / "policy.json"
    policy.save(path)
    data = json.loads(path.read_text())
    assert data["_type"] == "mpsearch.Policy" and data["_version"] == 1
    assert data["sites"] == [s.name for s in sites]
    loaded = Policy.load(path)
    assert loaded == policy
    assert loaded.resolve_all(sites) == policy.resolve_all(sites)
    loaded.validate(sites, QUANTIZERS.names())


def test_save_and_load_keep_the_order_of_patterns(tmp_path):
    # Sorted keys would put "re:enc.*" first, and the recurrent weights would come back at 8 bits.
    sites = find_sites(Model())
    policy = Policy({"re:enc\\.weight_hh.*": Q2, "re:enc.*": Q8, "_default": Q4}, [s.name for s in sites])
    assert sorted(policy.rules) != list(policy.rules)
    policy.save(tmp_path / "p.json")
    loaded = Policy.load(tmp_path / "p.json")
    assert list(loaded.rules) == list(policy.rules)
    resolved = loaded.resolve_all(sites)
    assert resolved == policy.resolve_all(sites)
    assert resolved["enc.weight_hh_l1"] is not None and resolved["enc.weight_hh_l1"].weight_bits == 2
    assert resolved["enc.weight_ih_l0"].weight_bits == 8 and resolved["head"].weight_bits == 4


def test_loading_against_a_different_model_is_an_error(tmp_path):
    policy = Policy.uniform(Q8, [s.name for s in find_sites(Model())])
    policy.save(tmp_path / "p.json")
    other = nn.Sequential(nn.Linear(3, 3))
    with pytest.raises(PolicyError, match="different model") as info:
        Policy.load(tmp_path / "p.json").validate(find_sites(other))
    assert "export it again" in str(info.value)


def test_unknown_site_lists_the_valid_sites():
    with pytest.raises(PolicyError, match="Unknown site 'decoder'") as info:
        Policy({"decoder": Q8}).validate(find_sites(Model()))
    assert "enc.weight_ih_l0" in str(info.value) and "head" in str(info.value)
    with pytest.raises(PolicyError, match="matches no site"):
        Policy({"re:dec.*": Q8}).validate(find_sites(Model()))


@pytest.mark.parametrize("bits", [1, 9, 12, 4.0, True])
def test_bits_outside_2_to_8_are_rejected(bits):
    with pytest.raises(PolicyError, match=r"'weight_bits' must be an integer in \[2, 8\]"):
        QuantConfig(weight_bits=bits)
    with pytest.raises(PolicyError, match=r"Policy entry 'head'.*\[2, 8\]"):
        Policy.from_dict({"_type": "mpsearch.Policy", "_version": 1,
                          "rules": {"head": {"weight_bits": bits}}})
    with pytest.raises(PolicyError, match=r"'act_bits' must be an integer in \[2, 8\]"):
        QuantConfig(act_bits=bits)


def test_unknown_method_lists_the_registered_ones():
    policy = Policy({"head": QuantConfig(method="nonsense")})
    with pytest.raises(PolicyError, match="Unknown method 'nonsense'") as info:
        policy.validate(find_sites(Model()), QUANTIZERS.names())
    assert "valid choices: admm, gq, lsq, s8bqat, uniform" in str(info.value)


def test_errors_are_mpsearch_errors_with_one_line_messages(tmp_path):
    (tmp_path / "bad.json").write_text("{not json")
    for make in (lambda: Policy.load(tmp_path / "missing.json"),
                 lambda: Policy.load(tmp_path / "bad.json"),
                 lambda: Policy.from_dict({"_type": "other"}),
                 lambda: QuantConfig(granularity="per_row")):
        with pytest.raises(MpsearchError) as info:
            make()
        assert "\n" not in str(info.value)
