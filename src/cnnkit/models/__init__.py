"""Model zoo: `create_model(name, num_classes=, in_chans=)`, `list_models(pattern)`.

Every family file in this package is imported here, which registers its variants.
"""
import importlib
import pkgutil

from cnnkit.models._registry import (count_parameters, create_model, get_model_cfg, list_models,
                                     register_model)

for _info in pkgutil.iter_modules(__path__):
    if not _info.name.startswith("_"):
        importlib.import_module(f"{__name__}.{_info.name}")

__all__ = ["create_model", "list_models", "get_model_cfg", "count_parameters", "register_model"]
