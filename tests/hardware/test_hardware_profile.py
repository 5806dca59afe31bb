import pytest
import yaml
from pydantic import ValidationError

from mpsearch.errors import ConfigError
from mpsearch.hardware.profile import load_profile, shipped_profiles


def test_shipped_profiles_load_by_name():
    assert {"nna-int8", "cpu-int8"} <= set(shipped_profiles())
    nna = load_profile("nna-int8")
    assert nna.name == "nna-int8"
    assert nna.decompress_on_the_fly and nna.sparse_format == "bitmask"
    assert load_profile("cpu-int8").float_policy == "fp32"


def test_unknown_name_lists_shipped_profiles():
    with pytest.raises(ConfigError, match="Unknown hardware profile 'tpu9'.*cpu-int8, nna-int8"):
        load_profile("tpu9")


def test_round_trip_through_a_user_file(tmp_path, make_profile):
    profile = make_profile(narrow_weight_speedup={4: 2.0}, sparse_format="index", sparse_index_bits=4)
    path = tmp_path / "mine.yaml"
    profile.save(path)
    assert load_profile(path) == profile
    assert load_profile(str(path)) == profile


def test_name_defaults_to_the_file_name(tmp_path, make_profile):
    data = make_profile().to_dict()
    del data["name"]
    path = tmp_path / "edge-npu.yaml"
    path.write_text(yaml.safe_dump(data))
    assert load_profile(path).name == "edge-npu"


def _write(tmp_path, make_profile, text_edit):
    path = tmp_path / "nna-int8.yaml"
    path.write_text(text_edit(make_profile().to_yaml()))
    return path


def test_negative_bandwidth_names_field_rule_and_value(tmp_path, make_profile):
    path = _write(tmp_path, make_profile, lambda t: t.replace("offchip_bandwidth_gbps: 4.0", "offchip_bandwidth_gbps: -3"))
    with pytest.raises(ConfigError) as err:
        load_profile(path)
    assert "nna-int8.yaml: 'offchip_bandwidth_gbps' must be > 0; got -3" in str(err.value)


def test_missing_field_is_named(tmp_path, make_profile):
    path = _write(tmp_path, make_profile, lambda t: t.replace("clock_mhz: 500.0\n", ""))
    with pytest.raises(ConfigError, match="required key 'clock_mhz' is missing"):
        load_profile(path)


def test_unknown_key_is_named(tmp_path, make_profile):
    path = _write(tmp_path, make_profile, lambda t: t + "dram_latency_ns: 80\n")
    with pytest.raises(ConfigError, match="unknown key 'dram_latency_ns'"):
        load_profile(path)


def test_yaml_that_is_not_a_mapping(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="must be a YAML mapping"):
        load_profile(path)


def test_missing_file_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_profile(tmp_path / "nope.yaml")


@pytest.mark.parametrize("overrides, field", [
    ({"supported_weight_bits": [4, 12]}, "supported_weight_bits"),
    ({"supported_weight_bits": []}, "supported_weight_bits"),
    ({"sparse_format": "index"}, "sparse_index_bits"),
    ({"sparse_format": "bitmask", "sparse_index_bits": 4}, "sparse_index_bits"),
    ({"sparse_format": "rle"}, "sparse_format"),
    ({"onchip_bandwidth_gbps": 1.0}, "onchip_bandwidth_gbps"),
    ({"onchip_memory_bytes": -1}, "onchip_memory_bytes"),
    ({"layer_overhead_us": -0.5}, "layer_overhead_us"),
    ({"float_policy": "bf16"}, "float_policy"),
    ({"narrow_weight_speedup": {4: 2.0, 2: 1.5}}, "narrow_weight_speedup"),
    ({"narrow_weight_speedup": {4: 0.5}}, "narrow_weight_speedup"),
])
def test_invalid_values_name_their_field(make_profile, overrides, field):
    with pytest.raises(ConfigError, match=f"test.yaml: '{field}'"):
        make_profile(**overrides)


def test_profile_is_frozen(make_profile):
    with pytest.raises(ValidationError):
        make_profile().clock_mhz = 1.0


def test_narrow_weights_ride_in_the_next_wider_listed_lanes(make_profile):
    profile = make_profile(narrow_weight_speedup={4: 2.0, 2: 4.0})
    assert [profile.speedup(b) for b in (2, 3, 4, 5, 8)] == [4.0, 2.0, 2.0, 1.0, 1.0]


def test_without_decompression_narrow_weights_take_a_byte(make_profile):
    assert make_profile(decompress_on_the_fly=False).stored_bits(4) == 8
    assert make_profile(decompress_on_the_fly=True).stored_bits(4) == 4
