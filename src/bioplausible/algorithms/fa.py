"""Feedback alignment (Lillicrap et al. 2016, "Random synaptic feedback weights support error
backpropagation for deep learning").

Errors travel down through fixed random matrices ``B`` instead of ``Wᵀ``:

    δ_l = f'(a_l) ⊙ (B_{l+1} δ_{l+1})        (BP: W_{l+1}ᵀ δ_{l+1})
    ΔW_l = -δ_{l+1} h_lᵀ                      (the same local form as BP)

Each Linear/Conv2d layer becomes a :class:`~.feedback.FeedbackLinear` /
:class:`~.feedback.FeedbackConv2d`, whose autograd backward uses ``B`` for the input gradient,
so the rest of the rule is ordinary autograd.
"""

from __future__ import annotations

from . import register_algorithm
from .base import LearningRule, Plausibility, StepResult
from .feedback import random_like_weight, rewire


@register_algorithm("fa")
class FeedbackAlignment(LearningRule):
    """Feedback alignment: errors sent down through fixed random matrices B instead of Wᵀ."""

    name = "fa"
    flags = Plausibility(no_weight_transport=True, local_errors=False, no_separate_phases=False)
    update_kind = "autograd"

    def __init__(self, model, **hyperparameters):
        super().__init__(model, **hyperparameters)
        # Fixed B: a buffer, never a parameter (a frozen parameter would get zero grads under
        # DDP and be moved by weight decay; DISTRIBUTED.md, pitfalls).
        self.layers = rewire(model, random_like_weight)

    def compute_updates(self, x, y) -> StepResult:
        return self.backward_loss(self.model(x), y)  # through B in every rewired layer
