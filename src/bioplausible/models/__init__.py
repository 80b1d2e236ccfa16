"""Architectures, found by name: ``create_model("mlp", input_shape=(1, 28, 28), num_classes=10)``."""

from __future__ import annotations

import importlib
import pkgutil
from typing import Sequence

from ..registry import Registry, check_kwargs
from .base import ACTIVATIONS, Network, make_activation

MODELS: Registry = Registry("model")
register_model = MODELS.register


def create_model(name: str, input_shape: Sequence[int], num_classes: int, **kwargs) -> Network:
    """Build the architecture registered as ``name`` for examples of ``input_shape``."""
    factory = MODELS.get(name)
    check_kwargs(factory, kwargs, f"model '{name}'", skip=("input_shape", "num_classes"))
    return factory(input_shape=tuple(input_shape), num_classes=num_classes, **kwargs)


def list_models() -> list[str]:
    return MODELS.names()


# Importing a module registers its architectures: every module here but the base class.
for _module in pkgutil.iter_modules(__path__):
    if _module.name != "base" and not _module.name.startswith("_"):
        importlib.import_module(f"{__name__}.{_module.name}")

__all__ = ["ACTIVATIONS", "MODELS", "Network", "create_model", "list_models", "make_activation", "register_model"]
