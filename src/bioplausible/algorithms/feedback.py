"""Linear and Conv2d layers whose backward pass carries errors through a separate feedback
tensor instead of the transposed forward weights.

This is the machinery of the weight-transport family (FA, DFA, KP, WM). It is written as
``torch.autograd.Function``s, not backward hooks: the forward pass is the ordinary one, and
``backward`` computes

* ``grad_input  = grad_output · B``   (BP would use ``W``: this is the only change), or, for
  DFA, ``grad_input = e · B`` with ``e`` the output error broadcast to every layer,
* ``grad_weight = grad_outputᵀ · input`` and ``grad_bias`` exactly as BP does,
* ``grad_B = grad_weight`` when the feedback is plastic in the Kolen-Pollack way.

``B`` is stored with the *shape of the forward weight* (the spec's ``B_{l+1}ᵀ``), so that a
layer with ``feedback = weight`` is exactly BP, and KP's ``ΔB`` is the same tensor as ``ΔW``.
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ConfigError


class OutputError:
    """Holds the output error ``e = ∂L/∂output`` of the current batch for DFA's layers.

    ``capture`` marks the model output; autograd runs its backward first (it is the last op of
    the forward pass), so ``error`` is set before any layer's backward reads it."""

    def __init__(self) -> None:
        self.error: torch.Tensor | None = None

    def capture(self, output: torch.Tensor) -> torch.Tensor:
        return _CaptureError.apply(output, self)

    def input_grad(self, feedback: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        # δ reaching the layer's input: B e, reshaped to the input (DFA; Nøkland 2016).
        return (self.error @ feedback).view(x.shape)


class _CaptureError(torch.autograd.Function):
    @staticmethod
    def forward(ctx, output, sink: OutputError):
        ctx.sink = sink
        return output.view_as(output)

    @staticmethod
    def backward(ctx, grad_output):
        ctx.sink.error = grad_output
        return grad_output, None


class _LinearFeedback(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, bias, feedback, learn_feedback: bool, direct: OutputError | None):
        ctx.save_for_backward(x, feedback)
        ctx.has_bias = bias is not None
        ctx.learn_feedback = learn_feedback
        ctx.direct = direct
        return F.linear(x, weight, bias)

    @staticmethod
    def backward(ctx, grad_out):
        x, feedback = ctx.saved_tensors
        grad_x = grad_w = grad_b = None
        if ctx.needs_input_grad[0]:
            if ctx.direct is not None:
                grad_x = ctx.direct.input_grad(feedback, x)
            else:
                grad_x = grad_out @ feedback  # BP: grad_out @ weight
        if ctx.needs_input_grad[1] or ctx.learn_feedback:
            grad_w = grad_out.reshape(-1, grad_out.shape[-1]).T @ x.reshape(-1, x.shape[-1])
        if ctx.has_bias and ctx.needs_input_grad[2]:
            grad_b = grad_out.reshape(-1, grad_out.shape[-1]).sum(0)
        grad_feedback = grad_w if ctx.learn_feedback else None
        return grad_x, grad_w, grad_b, grad_feedback, None, None


class _Conv2dFeedback(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, bias, feedback, learn_feedback: bool, direct: OutputError | None,
                stride, padding, dilation, groups):
        ctx.save_for_backward(x, feedback)
        ctx.weight_shape = weight.shape
        ctx.conv = (stride, padding, dilation, groups)
        ctx.bias_sizes = None if bias is None else [bias.shape[0]]
        ctx.learn_feedback = learn_feedback
        ctx.direct = direct
        return F.conv2d(x, weight, bias, stride, padding, dilation, groups)

    @staticmethod
    def backward(ctx, grad_out):
        x, feedback = ctx.saved_tensors
        stride, padding, dilation, groups = ctx.conv
        via_feedback = ctx.needs_input_grad[0] and ctx.direct is None
        need_w = ctx.needs_input_grad[1] or ctx.learn_feedback
        mask = [via_feedback, need_w, ctx.bias_sizes is not None and ctx.needs_input_grad[2]]
        # One fused call: the input gradient is computed with the feedback tensor in place of
        # the weight, the weight gradient from the saved input, as in BP. The forward weight
        # is never read: without an input gradient only its shape is passed (as
        # torch.nn.grad.conv2d_weight does).
        shape_only = grad_out.new_empty(1).expand(ctx.weight_shape)
        grad_x, grad_w, grad_b = torch.ops.aten.convolution_backward(
            grad_out, x, feedback if via_feedback else shape_only, ctx.bias_sizes,
            list(stride), list(padding), list(dilation), False, [0, 0], groups, mask,
        )
        if ctx.needs_input_grad[0] and ctx.direct is not None:
            grad_x = ctx.direct.input_grad(feedback, x)
        grad_feedback = grad_w if ctx.learn_feedback else None
        return grad_x, grad_w, grad_b, grad_feedback, None, None, None, None, None, None


class FeedbackLinear(nn.Linear):
    """``nn.Linear`` whose backward pass sends errors through ``feedback`` instead of ``weight``."""

    feedback: torch.Tensor
    learn_feedback: bool = False
    direct: OutputError | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _LinearFeedback.apply(x, self.weight, self.bias, self.feedback, self.learn_feedback, self.direct)


class FeedbackConv2d(nn.Conv2d):
    """``nn.Conv2d`` whose backward pass sends errors through ``feedback`` instead of ``weight``."""

    feedback: torch.Tensor
    learn_feedback: bool = False
    direct: OutputError | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _Conv2dFeedback.apply(
            x, self.weight, self.bias, self.feedback, self.learn_feedback, self.direct,
            self.stride, self.padding, self.dilation, self.groups,
        )


FEEDBACK_CLASSES: dict[type[nn.Module], type[nn.Module]] = {
    nn.Linear: FeedbackLinear,
    nn.Conv2d: FeedbackConv2d,
}


def trainable_layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """The Linear and Conv2d layers of ``model`` in registration (= forward) order."""
    return [(n, m) for n, m in model.named_modules() if isinstance(m, (nn.Linear, nn.Conv2d))]


def check_rewirable(name: str, layer: nn.Module) -> None:
    if type(layer) not in (nn.Linear, nn.Conv2d):
        raise ConfigError(
            f"layer '{name}' is a {type(layer).__name__}; only plain nn.Linear and nn.Conv2d "
            "layers can carry a feedback pathway"
        )
    if isinstance(layer, nn.Conv2d) and (isinstance(layer.padding, str) or layer.padding_mode != "zeros"):
        raise ConfigError(f"layer '{name}': feedback convolutions need integer zero padding")


def rewire(
    model: nn.Module,
    make_feedback: Callable[[nn.Module], torch.Tensor],
    plastic: bool = False,
    learn_feedback: bool = False,
    direct: OutputError | None = None,
) -> list[nn.Module]:
    """Turn every Linear/Conv2d of ``model`` into its feedback twin, in place: the forward
    parameters and ``state_dict`` keys stay as they are, and each layer gains ``feedback``
    (a buffer when fixed, a parameter when ``plastic``); with ``direct`` the input error is
    ``B e`` from the broadcast output error (DFA) instead of ``grad_output · B``. Returns the layers in forward order."""
    layers = []
    for name, layer in trainable_layers(model):
        check_rewirable(name, layer)
        feedback = make_feedback(layer).detach().clone()
        layer.__class__ = FEEDBACK_CLASSES[type(layer)]
        if plastic:
            layer.register_parameter("feedback", nn.Parameter(feedback))
        else:
            layer.register_buffer("feedback", feedback)
        layer.learn_feedback = learn_feedback
        layer.direct = direct
        layers.append(layer)
    return layers


def random_like_weight(layer: nn.Module) -> torch.Tensor:
    """A feedback tensor drawn from the same distribution as PyTorch's default weight init,
    independently of the forward weight (uses the global RNG, seeded by the trainer)."""
    feedback = torch.empty_like(layer.weight)
    nn.init.kaiming_uniform_(feedback, a=5**0.5)
    return feedback
