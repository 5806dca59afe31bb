import pytest
import torch

from mpsearch.config import ModelConfig
from mpsearch.errors import ConfigError, RegistryError
from mpsearch.models import MODELS, build_model, model_kind


def test_every_default_model_is_small_and_has_a_kind():
    for name, kind in [("rnnt", "transducer"), ("conformer", "ctc"), ("transformer_lm", "lm")]:
        model = build_model(ModelConfig(name=name), vocab_size=30, n_mels=80)
        n_params = sum(p.numel() for p in model.parameters())
        assert 500_000 <= n_params <= 1_500_000, (name, n_params)
        assert model_kind(model) == kind


def test_data_sizes_reach_the_model():
    model = build_model(ModelConfig(name="rnnt", params={"enc_layers": 1}), vocab_size=12, n_mels=40)
    assert model.config.vocab_size == 12 and model.config.n_mels == 40 and model.config.enc_layers == 1
    assert model.joiner.out.out_features == 12


def test_unknown_model_lists_the_valid_names():
    with pytest.raises(RegistryError, match="conformer, rnnt, transformer_lm"):
        build_model(ModelConfig(name="lstm"), vocab_size=30, n_mels=80)
    assert MODELS.names() == ["conformer", "rnnt", "transformer_lm"]


def test_unknown_param_is_named_with_the_valid_ones():
    with pytest.raises(ConfigError, match=r"model\.params\.enc_size .*valid params: ctc_weight, dropout, enc_hidden"):
        build_model(ModelConfig(name="rnnt", params={"enc_size": 3}), vocab_size=30, n_mels=80)


def test_wrong_type_names_the_field_and_the_value():
    with pytest.raises(ConfigError, match=r"model\.params\.n_layers: .*integer.*got 'four'"):
        build_model(ModelConfig(name="conformer", params={"n_layers": "four"}), vocab_size=30, n_mels=80)


def test_sizes_from_the_data_cannot_be_set_by_hand():
    with pytest.raises(ConfigError, match=r"model\.params\.vocab_size is set from the data"):
        build_model(ModelConfig(name="transformer_lm", params={"vocab_size": 3}), vocab_size=30, n_mels=80)


def test_cross_field_rule_is_one_line():
    with pytest.raises(ConfigError, match="model.params of 'conformer': d_model") as info:
        build_model(ModelConfig(name="conformer", params={"n_heads": 5}), vocab_size=30, n_mels=80)
    assert "\n" not in str(info.value)


def test_model_kind_needs_a_kind():
    with pytest.raises(Exception, match="kind"):
        model_kind(torch.nn.Linear(2, 2))


TINY = {
    "rnnt": {"frontend_dim": 8, "enc_hidden": 8, "enc_layers": 1, "pred_embed": 4, "pred_hidden": 8,
             "joint_dim": 8},
    "conformer": {"d_model": 8, "n_heads": 2, "n_layers": 1, "ff_mult": 2, "conv_kernel": 3,
                  "head": "transducer", "pred_embed": 4, "pred_hidden": 8, "joint_dim": 8},
    "transformer_lm": {"d_model": 8, "n_heads": 2, "n_layers": 1, "ff_mult": 2},
}


@pytest.mark.parametrize("name", sorted(TINY))
def test_hessian_vector_products_reach_every_parameter(name):
    # Hessian-trace sensitivity differentiates every model's loss twice.
    torch.manual_seed(0)
    model = build_model(ModelConfig(name=name, params={**TINY[name], "dropout": 0.0}), vocab_size=6, n_mels=4)
    targets, target_lens = torch.tensor([[2, 3, 5], [4, 2, -1]]), torch.tensor([3, 2])
    if name == "transformer_lm":
        loss = model(targets, target_lens)
    else:
        loss = model(torch.randn(2, 12, 4), torch.tensor([12, 9]), targets, target_lens)
    params = list(model.parameters())
    grads = torch.autograd.grad(loss, params, create_graph=True)
    hvps = torch.autograd.grad(sum((g * torch.randn_like(g)).sum() for g in grads), params, allow_unused=True)
    assert all(h is not None and torch.isfinite(h).all() for h in hvps)
