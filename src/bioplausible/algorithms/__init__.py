"""Learning rules, found by name: ``create_algorithm("fa", model, loss="ce")``."""

from __future__ import annotations

import importlib
import pkgutil

from torch import nn

from ..registry import Registry
from .base import Hyperparameters, LearningRule, Plausibility, StepResult

ALGORITHMS: Registry = Registry("algorithm")
register_algorithm = ALGORITHMS.register


def create_algorithm(name: str, model: nn.Module, **hyperparameters) -> LearningRule:
    """Attach the learning rule registered as ``name`` to ``model`` (rewiring it if the rule
    replaces the backward pass, so give every rule a freshly built model)."""
    return ALGORITHMS.get(name)(model, **hyperparameters)


def list_algorithms() -> list[str]:
    return ALGORITHMS.names()


# Importing a rule's module registers it: every module of this package except the shared plumbing.
_PLUMBING = {"base", "feedback", "layerwise", "auxiliary"}
for _module in pkgutil.iter_modules(__path__):
    if _module.name not in _PLUMBING and not _module.name.startswith("_"):
        importlib.import_module(f"{__name__}.{_module.name}")

__all__ = [
    "ALGORITHMS",
    "Hyperparameters",
    "LearningRule",
    "Plausibility",
    "StepResult",
    "create_algorithm",
    "list_algorithms",
    "register_algorithm",
]
