"""Learning rules, found by name: ``create_algorithm("fa", model, loss="ce")``."""

from __future__ import annotations

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


# Importing the modules registers their rules.
from . import bp, dfa, fa, kp, wm  # noqa: E402,F401

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
