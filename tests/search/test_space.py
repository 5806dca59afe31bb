from pathlib import Path

import pytest
import yaml

from mpsearch.errors import ConfigError
from mpsearch.quant import QuantConfig
from mpsearch.quant.sites import Site
from mpsearch.space import SearchSpace

SITES = [Site(name, name.rsplit(".", 1)[0], "weight", "linear", (4, 4), 16)
         for name in ("encoder.a", "encoder.b", "predictor.c", "joiner.d")]

SPACE = """\
groups:
  encoder:
    sites: "encoder.*"
    weight_bits: [2, 4, 8]
    method: [uniform, gq]
  head:
    sites: ["predictor.*", "re:joiner\\\\..*"]
    weight_bits: [4, 8]
    sparsity: [null, "2:4"]
    tied: false
"""


def load(tmp_path, text=SPACE):
    path = tmp_path / "space.yaml"
    path.write_text(text)
    return SearchSpace.from_yaml(path, SITES)


def test_parameters_cover_the_searched_fields_of_tied_and_untied_groups(tmp_path):
    space = load(tmp_path)
    names = {p.name: p.choices for p in space.parameters()}
    assert names == {
        "encoder.weight_bits": (2, 4, 8), "encoder.method": ("uniform", "gq"),
        "head[predictor.c].weight_bits": (4, 8), "head[predictor.c].sparsity": ("dense", "2:4"),
        "head[joiner.d].weight_bits": (4, 8), "head[joiner.d].sparsity": ("dense", "2:4"),
    }
    assert space.size() == 3 * 2 * 2 ** 4


def test_to_policy_sets_every_site_and_round_trips_through_params_for(tmp_path):
    space = load(tmp_path)
    params = {"encoder.weight_bits": 2, "encoder.method": "gq", "head[predictor.c].weight_bits": 8,
              "head[predictor.c].sparsity": "2:4", "head[joiner.d].weight_bits": 4,
              "head[joiner.d].sparsity": "dense"}
    policy = space.to_policy(params)
    assert policy.site_names == [s.name for s in SITES]
    assert policy.resolve("encoder.b") == QuantConfig(weight_bits=2, method="gq")
    assert policy.resolve("predictor.c").sparsity.n == 2 and policy.resolve("predictor.c").weight_bits == 8
    assert policy.resolve("joiner.d") == QuantConfig(weight_bits=4)
    assert space.params_for(policy) == params


def test_params_for_a_mixed_tied_group_takes_the_most_common_bits_rounded_up(tmp_path):
    from mpsearch.quant import Policy

    sites = SITES + [Site("encoder.c", "encoder", "weight", "linear", (4, 4), 16)]
    space = SearchSpace.from_dict(yaml.safe_load(SPACE), sites)
    policy = Policy({"encoder.a": QuantConfig(weight_bits=8), "re:encoder\\.[bc]": QuantConfig(weight_bits=2),
                     "_default": QuantConfig(weight_bits=8)})
    assert space.params_for(policy)["encoder.weight_bits"] == 2
    tie = Policy({"encoder.a": QuantConfig(weight_bits=3), "encoder.b": QuantConfig(weight_bits=2),
                  "_default": QuantConfig(weight_bits=8)})
    assert load(tmp_path).params_for(tie)["encoder.weight_bits"] == 4  # a tie goes to the wider, rounded up


def test_uniform_params_exist_only_for_bits_every_group_allows(tmp_path):
    space = load(tmp_path)
    assert space.weight_bit_choices() == [4, 8]
    assert space.uniform_params(2) is None
    assert space.to_policy(space.uniform_params(4)).resolve("joiner.d") == QuantConfig(weight_bits=4)


def test_sites_in_no_group_take_rest(tmp_path):
    space = load(tmp_path, "groups:\n  enc: {sites: 'encoder.*', weight_bits: [4, 8]}\nrest: {weight_bits: 6}\n")
    policy = space.to_policy({"enc.weight_bits": 4})
    assert policy.resolve("joiner.d").weight_bits == 6
    assert load(tmp_path, "groups:\n  enc: {sites: 'encoder.*'}\nrest: null\n").to_policy({}).resolve("joiner.d") is None


@pytest.mark.parametrize("text, message", [
    ("groups: {}\n", "needs 'groups:'"),
    ("groups:\n  enc:\n    sites: 'nothing.*'\n", "line 3: group 'enc': pattern 'nothing.*' matches no site"),
    ("groups:\n  enc:\n    sites: 'encoder.*'\n    weight_bits: []\n", "line 4: group 'enc': 'weight_bits' is empty"),
    ("groups:\n  enc:\n    sites: 'encoder.*'\n    method: [magic]\n", "line 4: group 'enc': unknown method 'magic'"),
    ("groups:\n  enc:\n    sites: 'encoder.*'\n    weight_bits: [9]\n", "integers in [2, 8]; got 9"),
    ("groups:\n  a: {sites: 'encoder.*'}\n  b: {sites: 'encoder.a'}\n", "line 3: site 'encoder.a' is in groups 'a' and 'b'"),
    ("groups:\n  enc:\n    sites: 'encoder.*'\n    bitz: [4]\n", "line 4: group 'enc': unknown key 'bitz'"),
    ("groups:\n  enc: {weight_bits: [4]}\n", "has no 'sites'"),
    ("groups:\n  enc: {sites: 're:[unclosed'}\n", "not a valid regular expression"),
    ("groups: [\n", "YAML syntax error"),
    ("groups:\n  enc: {sites: 'encoder.*'}\nextra: 1\n", "line 3: unknown key 'extra'"),
])
def test_malformed_spaces_get_one_line_errors_naming_file_and_line(tmp_path, text, message):
    with pytest.raises(ConfigError) as err:
        load(tmp_path, text)
    assert message in str(err.value)
    assert str(tmp_path / "space.yaml") in str(err.value)
    assert "\n" not in str(err.value)


def test_to_policy_rejects_unknown_missing_and_disallowed_parameters(tmp_path):
    space = load(tmp_path, "groups:\n  enc: {sites: 'encoder.*', weight_bits: [4, 8]}\n")
    with pytest.raises(ConfigError, match="'enc.weight_bits' is missing"):
        space.to_policy({})
    with pytest.raises(ConfigError, match="not an allowed choice"):
        space.to_policy({"enc.weight_bits": 2})
    with pytest.raises(ConfigError, match="'bogus' is not in the search space"):
        space.to_policy({"enc.weight_bits": 4, "bogus": 1})


def test_the_shipped_spaces_fit_their_models():
    from mpsearch.config import ModelConfig
    from mpsearch.models import build_model
    from mpsearch.quant import find_sites

    rnnt = find_sites(build_model(ModelConfig(name="rnnt", params={"enc_hidden": 16, "joint_dim": 8}), 30, 80))
    space = SearchSpace.from_yaml("search_spaces/rnnt_groups.yaml", rnnt)
    assert sum(len(g.sites) for g in space.groups) == len(rnnt)
    groups = yaml.safe_load(Path("search_spaces/rnnt_groups.yaml").read_text())["groups"]
    assert groups.keys() == {"encoder", "predictor", "joiner"}
