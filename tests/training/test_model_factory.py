"""`model.factory` and `task.adapter`: how a factory is called, and the one-line errors for a factory or
adapter that cannot be used, raised before the study does any work."""

import sys
import textwrap

import pytest
import torch
import yaml
from torch import nn

from mpsearch.cli.main import main
from mpsearch.config import FeatureConfig, ModelConfig, StudyConfig
from mpsearch.data.tokenizer import CharTokenizer
from mpsearch.dotted_path import load_object
from mpsearch.errors import ConfigError
from mpsearch.models import build_model, resolved_params
from mpsearch.testing.user_models import ConvRNNCTC, CTCAdapter
from mpsearch.training.baseline import load_weights
from mpsearch.training.checkpoint import CheckpointError, ModelCheckpoint, check_matches
from mpsearch.training.tasks import TaskAdapter, load_adapter

FACTORY = "mpsearch.testing.user_models:conv_rnn_ctc"


@pytest.fixture
def user_module(tmp_path, monkeypatch):
    """`user_module(name, source)`: a module of the user's, importable by its name."""
    monkeypatch.syspath_prepend(str(tmp_path))

    def write(name: str, source: str) -> str:
        (tmp_path / f"{name}.py").write_text(textwrap.dedent(source))
        return name
    return write


def build(factory: str, **params) -> nn.Module:
    return build_model(ModelConfig(factory=factory, params=params), vocab_size=30, n_mels=16)


def one_line_error(factory: str, **params) -> str:
    with pytest.raises(ConfigError) as info:
        build(factory, **params)
    assert "\n" not in str(info.value)
    return str(info.value)


def test_the_factory_gets_the_params_and_the_data_sizes_it_accepts(user_module):
    model = build(FACTORY, hidden=20)
    assert isinstance(model, ConvRNNCTC) and model.frontend.in_channels == 16
    assert model.output.out_features == 30 and model.encoder.hidden_size == 20
    module = user_module("sizes_seen", """
        from torch import nn
        def mels_only(n_mels, width=4):
            return nn.Linear(n_mels, width)
        def anything(**kwargs):
            model = nn.Linear(kwargs["n_mels"], kwargs["vocab_size"])
            model.seen = sorted(kwargs)
            return model
    """)
    assert build(f"{module}:mels_only", width=3).weight.shape == (3, 16)
    assert build(f"{module}:anything", depth=2).seen == ["depth", "n_mels", "vocab_size"]
    assert resolved_params(ModelConfig(factory=FACTORY)) == {"channels": 16, "hidden": 32, "rnn": "gru"}


def test_a_factory_that_cannot_be_used_is_one_line_naming_the_key_and_the_fix(user_module):
    message = one_line_error("no_such_package_here.models:build")
    assert message.startswith("model.factory 'no_such_package_here.models:build': no module named "
                              "'no_such_package_here'") and "PYTHONPATH" in message and "Ray" in message
    assert "has no attribute 'nope' (it has " in one_line_error("mpsearch.testing.user_models:nope")
    module = user_module("user_factories", """
        from torch import nn
        NOT_CALLABLE = 3
        def returns_dict(n_mels):
            return {"n_mels": n_mels}
        def needs_width(n_mels, width):
            return nn.Linear(n_mels, width)
        def breaks(n_mels):
            return nn.Linear(n_mels, 0 - 5)
    """)
    assert "names a int, which cannot be called; name a function" in one_line_error(f"{module}:NOT_CALLABLE")
    assert "returned a dict, not a torch.nn.Module; make it return the model" in \
        one_line_error(f"{module}:returns_dict")
    assert "requires width; set model.params.width" in one_line_error(f"{module}:needs_width")
    raised = one_line_error(f"{module}:breaks")
    assert "raised RuntimeError" in raised and "when called with n_mels=16" in raised
    assert "model.params.depth is not a parameter of model.factory" in one_line_error(FACTORY, depth=2)
    assert "valid params: channels, hidden, rnn" in one_line_error(FACTORY, depth=2)
    assert "set from the data" in one_line_error(FACTORY, n_mels=3)
    broken = user_module("user_broken", "import not_installed_dependency\n")
    assert "importing 'user_broken' failed: ModuleNotFoundError: No module named 'not_installed_dependency'" \
        in one_line_error(f"{broken}:build")
    syntax = user_module("user_syntax", "def build(:\n")
    assert "SyntaxError" in one_line_error(f"{syntax}:build") and "(user_syntax.py:1)" in one_line_error(
        f"{syntax}:build")


def test_a_module_beside_where_mpsearch_runs_is_found(tmp_path, monkeypatch):
    (tmp_path / "beside_the_study.py").write_text("VALUE = 7\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p not in ("", str(tmp_path))])
    assert load_object("beside_the_study:VALUE", "model.factory") == 7


def test_the_model_section_names_exactly_one_source_in_the_right_form():
    for model, expected in (({}, "needs exactly one of 'name'"), ({"name": "rnnt", "factory": FACTORY}, "exactly one"),
                            ({"factory": "just_a_module"}, "must be 'package.module:attribute'")):
        with pytest.raises(ConfigError, match=expected) as info:
            StudyConfig.from_dict({"name": "s", "model": model}, source="s.yaml")
        assert "\n" not in str(info.value) and "s.yaml: 'model" in str(info.value)
    with pytest.raises(ConfigError, match="'task.adapter' must be 'package.module:attribute'"):
        StudyConfig.from_dict({"name": "s", "model": {"name": "rnnt"}, "task": {"adapter": "x:"}}, source="s.yaml")
    assert ModelConfig(name="rnnt").to_dict() == {"name": "rnnt", "params": {}}  # keys of existing studies hold


def test_adapters_load_as_classes_or_objects_and_need_loss_and_decode(user_module):
    assert isinstance(load_adapter("mpsearch.testing.user_models:CTCAdapter"), CTCAdapter)
    assert isinstance(load_adapter("mpsearch.testing.user_models:CTCAdapter"), TaskAdapter)
    module = user_module("user_adapters", """
        class LossOnly:
            def loss(self, model, batch):
                return model(batch)
        class NeedsBlank:
            def __init__(self, blank):
                self.blank = blank
            def loss(self, model, batch): ...
            def decode(self, model, batch): ...
        READY = NeedsBlank(0)
    """)
    with pytest.raises(ConfigError, match=r"has no decode\(model, batch\); an adapter needs both"):
        load_adapter(f"{module}:LossOnly")
    with pytest.raises(ConfigError, match="could not be built with no arguments .*TypeError"):
        load_adapter(f"{module}:NeedsBlank")
    assert load_adapter(f"{module}:READY").blank == 0


def study_yaml(tmp_path, **sections) -> str:
    """A study whose data would take a corpus synthesis: anything done before the checks would show."""
    study = {"name": "own", "output_dir": str(tmp_path / "study"),
             "data": {"corpus": "builtin", "utterances": 10, "path": str(tmp_path / "corpus")}, **sections}
    path = tmp_path / "own.yaml"
    path.write_text(yaml.safe_dump(study))
    return str(path)


@pytest.mark.parametrize(("sections", "expected"), [
    ({"model": {"factory": "no_such_package_here:build"}}, "model.factory 'no_such_package_here:build': no module"),
    ({"model": {"factory": FACTORY}}, "builds a ConvRNNCTC without greedy_decode(feats, feat_lens)"),
    ({"model": {"factory": FACTORY}, "task": {"adapter": "mpsearch.testing.user_models:nothing"}},
     "task.adapter 'mpsearch.testing.user_models:nothing': 'mpsearch.testing.user_models' has no attribute"),
    ({"model": {"name": "rnnt"}, "task": {"adapter": "no_such_package_here:Adapter"}},
     "task.adapter 'no_such_package_here:Adapter': no module named 'no_such_package_here'"),
])
def test_the_cli_says_what_is_wrong_before_any_work(tmp_path, capsys, sections, expected):
    assert main(["train", study_yaml(tmp_path, **sections), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert expected in err and err.count("\n") == 1
    assert not (tmp_path / "corpus").exists() and not (tmp_path / "study" / "baseline").exists()


def checkpoint_of(model: ModelConfig) -> ModelCheckpoint:
    return ModelCheckpoint(model, FeatureConfig(n_mels=16), CharTokenizer().alphabet, {}, {})


def test_a_checkpoint_records_its_factory_and_a_mismatch_is_one_line():
    features, tokenizer = FeatureConfig(n_mels=16), CharTokenizer()
    ours = ModelConfig(factory=FACTORY, params={"hidden": 12})
    check_matches(checkpoint_of(ours), "ckpt", ours, features, tokenizer)
    check_matches(checkpoint_of(ModelConfig(factory=FACTORY)), "ckpt", ModelConfig(factory=FACTORY, params={"hidden": 32}),
                  features, tokenizer)  # a param at its default is the same model
    with pytest.raises(CheckpointError, match=r"hidden: checkpoint 12, study 32"):
        check_matches(checkpoint_of(ours), "ckpt", ModelConfig(factory=FACTORY), features, tokenizer)
    with pytest.raises(CheckpointError, match=f"holds a model of model.factory: {FACTORY} but the study's model "
                                              "section has model.name: rnnt; set model.factory"):
        check_matches(checkpoint_of(ours), "ckpt", ModelConfig(name="rnnt"), features, tokenizer)
    weights = build(FACTORY, hidden=12).state_dict()
    with pytest.raises(CheckpointError, match="ckpt: its weights do not fit the model the study builds") as info:
        load_weights(build(FACTORY, hidden=16), weights, "ckpt")
    assert "\n" not in str(info.value)


def test_the_example_adapter_trains_and_decodes_the_example_model():
    from mpsearch.data.pipeline import Batch

    torch.manual_seed(0)
    model = build(FACTORY, channels=8, hidden=12)
    batch = Batch(torch.randn(2, 20, 16), torch.tensor([20, 14]), torch.tensor([[3, 4, 5], [6, 7, 0]]),
                  torch.tensor([3, 2]), ["abc", "de"])
    loss = CTCAdapter().loss(model, batch)
    assert loss.dim() == 0 and torch.isfinite(loss)
    loss.backward()
    assert all(p.grad is not None for p in model.parameters())
    decoded = CTCAdapter().decode(model, batch)
    assert len(decoded) == 2 and all(0 < i < 30 for ids in decoded for i in ids)
