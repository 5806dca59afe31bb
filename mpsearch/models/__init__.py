"""Models as plain nn.Modules, built from a ModelConfig by registry name, or by a user's factory
(`model.factory`, see factory.py).

Every model class carries ``config_class`` (its pydantic config), ``kind`` ("transducer", "ctc" or
"lm": how training batches and decodes it) and ``site_steps`` (top-level submodule -> "frame",
"token" or "joint": how often it runs in streaming inference).
"""

from __future__ import annotations

from typing import Any

from pydantic import ValidationError
from torch import nn

from mpsearch.config import ModelConfig
from mpsearch.errors import ConfigError, MpsearchError
from mpsearch.models.conformer import Conformer, ConformerConfig
from mpsearch.models.factory import (
    FROM_DATA,
    build_from_factory,
    check_params_not_from_data,
    factory_defaults,
)
from mpsearch.models.rnnt import RNNT, RNNTConfig
from mpsearch.models.rnnt_loss import rnnt_loss
from mpsearch.models.transformer_lm import TransformerLM, TransformerLMConfig
from mpsearch.registry import Registry

MODELS: Registry[type[nn.Module]] = Registry("model")
MODELS.register("rnnt")(RNNT)
MODELS.register("conformer")(Conformer)
MODELS.register("transformer_lm")(TransformerLM)

MODEL_KINDS = ("transducer", "ctc", "lm")


def build_model(cfg: ModelConfig, vocab_size: int, n_mels: int) -> nn.Module:
    """Validate ``cfg.params`` with the named model's config class and build the model; or call the
    user's ``cfg.factory`` with them."""
    if cfg.factory is not None:
        return build_from_factory(cfg, vocab_size=vocab_size, n_mels=n_mels)
    model_class = MODELS.get(cfg.name)
    config_class = model_class.config_class
    fields = config_class.model_fields
    settable = sorted(name for name in fields if name not in FROM_DATA)
    check_params_not_from_data(cfg.params)
    for key in cfg.params:
        if key not in fields:
            raise ConfigError(f"model.params.{key} is not a parameter of model '{cfg.name}'; "
                              f"valid params: {', '.join(settable)}.")
    data_params = {"vocab_size": vocab_size, "n_mels": n_mels}
    params = {**{k: v for k, v in data_params.items() if k in fields}, **cfg.params}
    try:
        config = config_class.model_validate(params)
    except ValidationError as exc:
        raise ConfigError(_describe(exc, cfg.name)) from None
    return model_class(config)


def resolved_params(cfg: ModelConfig) -> dict[str, Any]:
    """``cfg.params`` over the defaults of the model's config class (or of its factory's signature), the
    data sizes left out: two configs with equal resolved params build the same architecture."""
    if cfg.factory is not None:
        defaults = factory_defaults(cfg)
    else:
        fields = MODELS.get(cfg.name).config_class.model_fields
        defaults = {k: f.default for k, f in fields.items() if not f.is_required() and k not in FROM_DATA}
    return {**defaults, **{k: v for k, v in cfg.params.items() if k not in FROM_DATA}}


def model_kind(model: nn.Module) -> str:
    """"transducer", "ctc" or "lm": how training code batches and decodes ``model``."""
    kind = getattr(model, "kind", None)
    if kind not in MODEL_KINDS:
        raise MpsearchError(f"{type(model).__name__} has no 'kind' attribute in {MODEL_KINDS}; "
                            "set one on the class.")
    return kind


def _describe(exc: ValidationError, model_name: str) -> str:
    err = exc.errors()[0]
    field = ".".join(str(p) for p in err["loc"])
    message = err["msg"].removeprefix("Value error, ")
    message = message[0].lower() + message[1:]
    more = f" (and {len(exc.errors()) - 1} more)" if len(exc.errors()) > 1 else ""
    if not field:  # a rule across several params, whose message names them and their values
        return f"model.params of '{model_name}': {message}{more}; fix the params."
    return f"model.params.{field}: {message}; got {err.get('input')!r}{more}."


__all__ = [
    "MODELS",
    "MODEL_KINDS",
    "RNNT",
    "Conformer",
    "ConformerConfig",
    "RNNTConfig",
    "TransformerLM",
    "TransformerLMConfig",
    "build_model",
    "model_kind",
    "resolved_params",
    "rnnt_loss",
]
