"""Kolen-Pollack learning (Akrout et al. 2019, "Deep learning without weight transport",
after Kolen & Pollack 1994).

Like FA, errors travel down through a separate matrix ``B``; unlike FA, ``B`` is plastic and
receives the *same* update as the forward weight (transposed in the spec's notation; identical
here because ``B`` is stored with ``W``'s shape), and both decay:

    ΔW_l = -η δ_{l+1} h_lᵀ - ηλ W_l
    ΔB_l = -η δ_{l+1} h_lᵀ - ηλ B_l        (stored as B_lᵀ)

so ``W_l - B_l`` shrinks by ``(1 - ηλ)`` every step and ``B`` converges to ``W``.

The decay is applied after the optimizer step, decoupled from the gradient (W ← (1-ηλ)W with η
the group's current learning rate). Under SGD this is exactly the formula above; under Adam it
keeps the invariant exact too, because ``W`` and ``B`` then see identical gradients.
"""

from __future__ import annotations

from dataclasses import dataclass


from . import register_algorithm
from ..errors import require_non_negative
from .base import DecoupledDecay, Hyperparameters, LearningRule, Plausibility, StepResult
from .feedback import random_like_weight, rewire


@dataclass
class KPHyperparameters(Hyperparameters):
    decay: float = 1e-3  # λ: decay of W and B per unit learning rate

    def __post_init__(self) -> None:
        super().__post_init__()
        require_non_negative("kp", decay=self.decay)


@register_algorithm("kp")
class KolenPollack(LearningRule):
    """Kolen-Pollack: plastic feedback B with W's update plus decay, so B converges to W."""

    name = "kp"
    flags = Plausibility(no_weight_transport=True, local_errors=False, no_separate_phases=False)
    update_kind = "autograd"
    Hyperparameters = KPHyperparameters

    def __init__(self, model, **hyperparameters):
        super().__init__(model, **hyperparameters)
        # B is a parameter fed by autograd (grad_B = grad_W inside the layer's backward), so
        # optimizers and DDP treat it like any weight (DISTRIBUTED.md).
        self.layers = rewire(model, random_like_weight, plastic=True, learning="kolen_pollack")

    def compute_updates(self, x, y) -> StepResult:
        return self.backward_loss(self.model(x), y)  # fills W.grad and B.grad = W.grad

    def configure_optimizers(self, make_optimizer):
        optimizers = super().configure_optimizers(make_optimizer)
        paired = [t for layer in self.layers for t in (layer.weight, layer.feedback)]
        self.decay = DecoupledDecay(optimizers, paired, self.hp.decay)
        return optimizers

    def after_step(self) -> None:
        self.decay()  # W and B both shrink by (1 - ηλ)
