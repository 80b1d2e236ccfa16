"""Direct feedback alignment (Nøkland 2016, "Direct feedback alignment provides learning in
deep neural networks").

Every layer receives the *output* error ``e`` directly through its own fixed random matrix:

    δ_l = f'(a_l) ⊙ (B_l e)        (FA: B_{l+1} δ_{l+1}; BP: W_{l+1}ᵀ δ_{l+1})
    ΔW_l = -δ_{l+1} h_lᵀ

Implementation: the model output passes through :meth:`OutputError.capture`, whose backward
records ``e = ∂L/∂output``; each Linear/Conv2d layer's backward then returns ``B e`` (reshaped)
as the gradient of its input instead of ``Wᵀ grad_output``, and autograd applies ``f'`` and
any pooling between layers exactly as BP does. ``B`` for a layer with input ``h`` has shape
``[classes, numel(h)]``; the shapes come from one dry forward pass.
"""

from __future__ import annotations

import torch
from torch import nn

from . import register_algorithm
from .base import LearningRule, Plausibility, StepResult
from .feedback import OutputError, rewire, trainable_layers


def layer_input_shapes(model: nn.Module, input_shape: tuple[int, ...]) -> dict[nn.Module, torch.Size]:
    """Shape of one example's input to every Linear/Conv2d layer, from one dry forward pass."""
    shapes: dict[nn.Module, torch.Size] = {}

    def record(layer: nn.Module, args: tuple) -> None:  # a pre-hook returning a value would replace the input
        shapes.setdefault(layer, args[0].shape[1:])

    hooks = [layer.register_forward_pre_hook(record) for _, layer in trainable_layers(model)]
    was_training = model.training
    try:
        param = next(model.parameters())
        # Eval mode: BatchNorm1d cannot take a training batch of one, and the dry pass must not
        # move BatchNorm's running statistics.
        model.eval()
        with torch.no_grad():
            model(torch.zeros(1, *input_shape, device=param.device, dtype=param.dtype))
    finally:
        model.train(was_training)
        for hook in hooks:
            hook.remove()
    return shapes


@register_algorithm("dfa")
class DirectFeedbackAlignment(LearningRule):
    """Direct feedback alignment: the output error reaches every layer through its own fixed random B."""

    name = "dfa"
    flags = Plausibility(no_weight_transport=True, local_errors=False, no_separate_phases=False)
    update_kind = "autograd"

    def __init__(self, model, **hyperparameters):
        super().__init__(model, **hyperparameters)
        shapes = layer_input_shapes(model, model.input_shape)
        classes = model.num_classes

        def direct_feedback(layer: nn.Module) -> torch.Tensor:
            # Drawn like nn.Linear(classes, numel(h)).weight: U(±1/√classes), stored transposed.
            bound = classes**-0.5
            numel = shapes[layer].numel()
            return torch.empty(classes, numel, device=layer.weight.device, dtype=layer.weight.dtype).uniform_(-bound, bound)

        self.output_error = OutputError()
        self.layers = rewire(model, direct_feedback, direct=self.output_error)

    def compute_updates(self, x, y) -> StepResult:
        return self.backward_loss(self.output_error.capture(self.model(x)), y)
