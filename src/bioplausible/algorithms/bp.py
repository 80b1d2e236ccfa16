"""Backpropagation: the reference every other rule is measured against."""

from __future__ import annotations

from . import register_algorithm
from .base import LearningRule, Plausibility, StepResult


@register_algorithm("bp")
class Backprop(LearningRule):
    """Backpropagation (autograd): exact gradients through the transposed forward weights."""

    name = "bp"
    flags = Plausibility(no_weight_transport=False, local_errors=False, no_separate_phases=False)
    update_kind = "autograd"

    def compute_updates(self, x, y) -> StepResult:
        return self.backward_loss(self.model(x), y)  # θ.grad = ∂L/∂θ = -Δθ
