"""A user's own model, built by the function a study's `model.factory` names.

The factory is called as `factory(**model.params, n_mels=..., vocab_size=...)`, the two data sizes
passed only where its signature accepts them (by name, or through `**kwargs`), so it gets the feature
size and the tokenizer's vocabulary as the registered models do. Whatever it returns must be an
`nn.Module`; the study then finds its sites, trains and scores it like any other model.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

from torch import nn

from mpsearch.config import ModelConfig
from mpsearch.dotted_path import load_object, raised
from mpsearch.errors import ConfigError

FROM_DATA = ("vocab_size", "n_mels")  # set from the tokenizer and the features, never by hand
_NAMED = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)


def check_params_not_from_data(params: dict[str, Any]) -> None:
    for key in params:
        if key in FROM_DATA:
            raise ConfigError(f"model.params.{key} is set from the data for every model; remove it.")


def load_factory(cfg: ModelConfig) -> Callable[..., Any]:
    """The callable `cfg.factory` names."""
    factory = load_object(cfg.factory, "model.factory")
    if not callable(factory):
        raise ConfigError(f"model.factory '{cfg.factory}' names a {type(factory).__name__}, which cannot be called; "
                          "name a function (or nn.Module class) that returns your model.")
    return factory


def _parameters(factory: Callable[..., Any]) -> tuple[dict[str, inspect.Parameter], bool] | None:
    """The factory's named parameters and whether it takes any keyword (`**kwargs`); None when Python
    cannot tell (some built-in callables)."""
    try:
        signature = inspect.signature(factory)
    except (TypeError, ValueError):
        return None
    named = {n: p for n, p in signature.parameters.items() if p.kind in _NAMED}
    return named, any(p.kind is inspect.Parameter.VAR_KEYWORD for p in signature.parameters.values())


def factory_arguments(cfg: ModelConfig, factory: Callable[..., Any], vocab_size: int, n_mels: int) -> dict[str, Any]:
    """The keyword arguments the factory is called with: the params, checked against its signature, and
    the data sizes it accepts."""
    check_params_not_from_data(cfg.params)
    data = {"vocab_size": vocab_size, "n_mels": n_mels}
    described = _parameters(factory)
    if described is None:
        return dict(cfg.params)
    named, any_keyword = described
    if not any_keyword:
        settable = sorted(n for n in named if n not in FROM_DATA)
        for key in cfg.params:
            if key not in named:
                raise ConfigError(f"model.params.{key} is not a parameter of model.factory '{cfg.factory}'; "
                                  f"valid params: {', '.join(settable) or 'none'}.")
    arguments = {**{k: v for k, v in data.items() if any_keyword or k in named}, **cfg.params}
    missing = [n for n, p in named.items() if p.default is inspect.Parameter.empty and n not in arguments]
    if missing:
        raise ConfigError(f"model.factory '{cfg.factory}' requires {', '.join(missing)}; set "
                          f"{', '.join('model.params.' + n for n in missing)} in the study.")
    return arguments


def build_from_factory(cfg: ModelConfig, vocab_size: int, n_mels: int) -> nn.Module:
    """`cfg.factory(**arguments)`, checked to be an nn.Module; what the factory raises is one line."""
    factory = load_factory(cfg)
    arguments = factory_arguments(cfg, factory, vocab_size, n_mels)
    try:
        model = factory(**arguments)
    except Exception as exc:  # noqa: BLE001  (the user's code: whatever it raises is one line naming where)
        raise ConfigError(f"model.factory '{cfg.factory}' raised {raised(exc)} when called with "
                          f"{_shown(arguments)}; fix the factory or model.params.") from None
    if not isinstance(model, nn.Module):
        raise ConfigError(f"model.factory '{cfg.factory}' returned a {type(model).__name__}, not a torch.nn.Module; "
                          "make it return the model.")
    return model


def factory_defaults(cfg: ModelConfig) -> dict[str, Any]:
    """The factory's parameters that have defaults, with them (what `params` left unset means)."""
    described = _parameters(load_factory(cfg))
    if described is None:
        return {}
    return {n: p.default for n, p in described[0].items()
            if p.default is not inspect.Parameter.empty and n not in FROM_DATA}


def _shown(arguments: dict[str, Any]) -> str:
    return ", ".join(f"{k}={v!r}" for k, v in arguments.items()) or "no arguments"
