"""Direct Kolen-Pollack (Webster, Choi & Ahn 2021, "Learning the connections in direct
feedback alignment"; code ``webstah/dkp-gist``; BASELINES.md section 10).

DFA whose direct feedback matrices learn. As in DFA, the output error ``E = ∂L/∂z``
(``[B, C]``) reaches the input ``h_l`` of every layer but the first through its own ``B_l``
(``[C, d_l]``), and the forward weights take BP's local form:

    δ_l = (E B_l) ⊙ f'(a_l),     ΔW_l = -η δ_lᵀ h_{l-1} - ηλ W_l

and each ``B_l`` learns like a direct readout from ``h_l`` to the logits (the gradient of a
zero-initialised readout ``R_l`` added to the logits):

    ΔB_l = -η_B Eᵀ h_l - η_B λ B_l

with ``h_l`` the post-activation that the layer above receives. For the output layer ``B`` gets
exactly ``W_L``'s update, so with one hidden layer DKP is KP (``W_2 - B`` shrinks by
``(1 - ηλ)`` per step), and with ``η_B = 0`` it is DFA.

Implementation: DFA's rewired layers (:func:`~.feedback.rewire` with ``direct``, the first layer
left plain since it sends no error) with ``B`` a parameter; autograd gives the forward weights'
gradients through ``B``, and ``B``'s gradient ``Eᵀ h_l`` is formed from the captured error and
the layer inputs recorded by forward pre-hooks. ``B`` sits in its own parameter group at
``feedback_lr_scale`` times the run's learning rate (the gist: Adam 1e-4 for ``B`` against SGD
5e-4 for ``W``). The decay is decoupled and applied after each step to every weight and every
``B`` (:class:`~.base.DecoupledDecay`, as KP); the gist's is 1e-6 (as weight decay).

Flags ✓✗✗ (assessed from the update rule). C1: errors travel through ``B``, never ``W``. C2:
the output error is broadcast to every layer. C3: the error pass follows the forward pass.

Only ``mlp``-style chains of Linear layers and convolutions that DFA can rewire are covered
(:func:`~.feedback.rewire` refuses other layers).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from . import register_algorithm
from ..errors import require_non_negative
from .base import DecoupledDecay, Hyperparameters, LearningRule, Plausibility, StepResult
from .dfa import layer_input_shapes
from .feedback import OutputError, rewire, trainable_layers, without


@dataclass
class DKPHyperparameters(Hyperparameters):
    feedback_lr_scale: float = 1.0  # η_B / η: 0 freezes B (DFA)
    decay: float = 1e-6  # λ: decoupled decay of W and B per unit learning rate (the gist's weight decay)

    def __post_init__(self) -> None:
        super().__post_init__()
        require_non_negative("dkp", feedback_lr_scale=self.feedback_lr_scale, decay=self.decay)


@register_algorithm("dkp")
class DirectKolenPollack(LearningRule):
    """Direct Kolen-Pollack: DFA whose direct feedback B_l learns as a readout from h_l to the logits."""

    name = "dkp"
    flags = Plausibility(no_weight_transport=True, local_errors=False, no_separate_phases=False)
    update_kind = "manual"  # W's gradient comes from autograd, B's is written by the rule
    Hyperparameters = DKPHyperparameters

    def __init__(self, model, **hyperparameters):
        super().__init__(model, **hyperparameters)
        shapes = layer_input_shapes(model, model.input_shape)
        classes = model.num_classes

        def direct_feedback(layer):
            # As DFA's: like nn.Linear(classes, numel(h)).weight, stored transposed.
            bound = classes**-0.5
            return torch.empty(classes, shapes[layer].numel(), device=layer.weight.device,
                               dtype=layer.weight.dtype).uniform_(-bound, bound)

        self.output_error = OutputError()
        self.layers = rewire(model, direct_feedback, plastic=True, direct=self.output_error, skip_first=True)
        self.inputs: dict[torch.nn.Module, torch.Tensor] = {}
        for layer in self.layers:
            layer.register_forward_pre_hook(self._record_input)

    def _record_input(self, layer, args) -> None:
        self.inputs[layer] = args[0].detach()  # h_l, the input that B_l reads out

    def param_groups(self) -> list[dict]:
        feedback = [layer.feedback for layer in self.layers]
        return without(super().param_groups(), feedback) + [
            {"name": "feedback", "params": feedback, "lr_scale": self.hp.feedback_lr_scale}
        ]

    def configure_optimizers(self, make_optimizer):
        optimizers = super().configure_optimizers(make_optimizer)
        weights = [layer.weight for _, layer in trainable_layers(self.model)]
        self.decay = DecoupledDecay(optimizers, weights + [layer.feedback for layer in self.layers], self.hp.decay)
        return optimizers

    def compute_updates(self, x, y) -> StepResult:
        result = self.backward_loss(self.output_error.capture(self.model(x)), y)
        error = self.output_error.error  # E = ∂L/∂z of the batch-mean loss, [B, C]
        for layer in self.layers:
            layer.feedback.grad = error.T @ self.inputs[layer].flatten(1)  # -ΔB_l / η_B = Eᵀ h_l
        return result

    def after_step(self) -> None:
        self.decay()
