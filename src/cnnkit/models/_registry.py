"""A model registry that fails loudly (torchvision `_api.py`, STYLE.md habit 2).

Every architecture file ends with its variants, each decorated with `@register_model`.
"""
from __future__ import annotations

import fnmatch
from typing import Any, Callable

from torch import nn

from cnnkit.utils import CnnkitError, suggest

_MODELS: dict[str, Callable[..., nn.Module]] = {}
_DEFAULT_CFGS: dict[str, dict[str, Any]] = {}


def register_model(fn: Callable[..., nn.Module] | None = None, *, input_size=(3, 224, 224),
                   fixed_input_size: bool = False, test_input_size=None, test_kwargs=None):
    """Register a builder under its function name.

    `input_size` is the (C, H, W) the architecture was designed for; `fixed_input_size` marks models
    whose layer shapes depend on it (LeNet's fc1, ViT's position embedding): they accept `img_size`.
    `test_input_size` / `test_kwargs`: the smallest sensible input (and builder keywords, e.g.
    `{"img_size": 32}`) for the registry-wide tests, which must stay fast.
    """
    def wrap(builder):
        name = builder.__name__
        if name in _MODELS:
            raise ValueError(f"model '{name}' is registered twice")
        _MODELS[name] = builder
        _DEFAULT_CFGS[name] = {
            "input_size": tuple(input_size), "fixed_input_size": fixed_input_size,
            "test_input_size": tuple(test_input_size or input_size),
            "test_kwargs": dict(test_kwargs or {}),
        }
        return builder

    return wrap(fn) if fn is not None else wrap


def list_models(pattern: str = "*") -> list[str]:
    """Registered model names matching an fnmatch pattern, sorted."""
    return sorted(n for n in _MODELS if fnmatch.fnmatch(n, pattern))


def get_model_cfg(name: str) -> dict[str, Any]:
    _check_name(name)
    return dict(_DEFAULT_CFGS[name])


def _check_name(name: str) -> None:
    if name not in _MODELS:
        raise suggest(name, _MODELS, "model")


def create_model(name: str, *, weights: str | None = None, **kwargs) -> nn.Module:
    """Build a registered model: `create_model("lenet", num_classes=10, in_chans=1)`.

    `weights`: a checkpoint file (a cnnkit checkpoint or a plain reference state_dict) loaded
    strictly; when its classifier shape differs from `num_classes`, the head keeps its fresh
    initialisation and a line says so.
    """
    _check_name(name)
    try:
        model = _MODELS[name](**kwargs)
    except TypeError as exc:  # a misspelt or foreign keyword: say which, in one line
        if "keyword argument" not in str(exc):
            raise
        raise CnnkitError(f"{name}: {str(exc).split(': ', 1)[-1]} "
                          f"(check --model-args / the keyword names)") from None
    if weights is not None:
        from cnnkit.models._weights import load_weights  # noqa: PLC0415  (avoids an import cycle)
        load_weights(model, weights, name)
    return model


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


__all__ = ["register_model", "list_models", "create_model", "get_model_cfg", "count_parameters",
           "CnnkitError"]
