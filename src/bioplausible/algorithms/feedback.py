"""Linear and Conv2d layers whose backward pass carries errors through a separate feedback
tensor instead of the transposed forward weights.

This is the machinery of the weight-transport family (FA, DFA, KP, WM). It is written as
``torch.autograd.Function``s, not backward hooks: the forward pass is the ordinary one, and
``backward`` computes

* ``grad_input  = grad_output · B``   (BP would use ``W``: this is the only change), or, for
  DFA, ``grad_input = e · B`` with ``e`` the output error broadcast to every layer,
* ``grad_weight = grad_outputᵀ · input`` and ``grad_bias`` exactly as BP does,
* the feedback's own gradient, by the layer's ``learning`` mode:
  ``"kolen_pollack"``: ``grad_B = grad_weight`` (KP);
  ``"apical"``: ``grad_B = grad_outputᵀ · input_error`` -- the weight-gradient formula with the
  input replaced by the error at the input (DLL eq. 9, ``ΔΘ = -g ξᵀ``); the input error is
  ``grad_input`` (the closed form, eq. 7) unless an :class:`ApicalError` supplies a settled one;
  ``None``: no gradient (FA's fixed B; WM writes its own).

``B`` is stored with the *shape of the forward weight* (the spec's ``B_{l+1}ᵀ``), so that a
layer with ``feedback = weight`` is exactly BP, and KP's ``ΔB`` is the same tensor as ``ΔW``.
"""

from __future__ import annotations

import math
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


class ApicalError:
    """The error at a layer's input as its apical compartment settled (DLL eq. 6), for the
    feedback update; ``None`` means the closed form ``grad_input`` (eq. 7)."""

    def __init__(self) -> None:
        self.error: torch.Tensor | None = None


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
    def forward(ctx, x, weight, bias, feedback, learning: str | None, direct: OutputError | None,
                apical: ApicalError | None):
        ctx.save_for_backward(x, feedback)
        ctx.has_bias = bias is not None
        ctx.learning, ctx.direct, ctx.apical = learning, direct, apical
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
        rows = grad_out.reshape(-1, grad_out.shape[-1])
        if ctx.needs_input_grad[1] or ctx.learning == "kolen_pollack":
            grad_w = rows.T @ x.reshape(-1, x.shape[-1])
        if ctx.has_bias and ctx.needs_input_grad[2]:
            grad_b = rows.sum(0)
        grad_feedback = None
        if ctx.learning == "kolen_pollack":
            grad_feedback = grad_w
        elif ctx.learning == "apical" and grad_x is not None:
            error = _input_error(ctx.apical, grad_x)
            grad_feedback = rows.T @ error.reshape(-1, error.shape[-1])
        return grad_x, grad_w, grad_b, grad_feedback, None, None, None


class _Conv2dFeedback(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, bias, feedback, learning: str | None, direct: OutputError | None,
                apical: ApicalError | None, stride, padding, dilation, groups):
        ctx.save_for_backward(x, feedback)
        ctx.weight_shape = weight.shape
        ctx.conv = (stride, padding, dilation, groups)
        ctx.bias_sizes = None if bias is None else [bias.shape[0]]
        ctx.learning, ctx.direct, ctx.apical = learning, direct, apical
        return F.conv2d(x, weight, bias, stride, padding, dilation, groups)

    @staticmethod
    def backward(ctx, grad_out):
        x, feedback = ctx.saved_tensors
        stride, padding, dilation, groups = ctx.conv
        via_feedback = ctx.needs_input_grad[0] and ctx.direct is None
        need_w = ctx.needs_input_grad[1] or ctx.learning == "kolen_pollack"
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
        grad_feedback = None
        if ctx.learning == "kolen_pollack":
            grad_feedback = grad_w
        elif ctx.learning == "apical" and grad_x is not None:
            # The conv weight gradient with the input error in place of the input: -g ξᵀ on
            # the unfolded convolution, pairing each output position with its own patch.
            grad_feedback = torch.ops.aten.convolution_backward(
                grad_out, _input_error(ctx.apical, grad_x), shape_only, None, list(stride), list(padding),
                list(dilation), False, [0, 0], groups, [False, True, False],
            )[1]
        return grad_x, grad_w, grad_b, grad_feedback, None, None, None, None, None, None, None


def _input_error(apical: ApicalError | None, grad_x: torch.Tensor) -> torch.Tensor:
    return grad_x if apical is None or apical.error is None else apical.error


class FeedbackLinear(nn.Linear):
    """``nn.Linear`` whose backward pass sends errors through ``feedback`` instead of ``weight``."""

    feedback: torch.Tensor
    learning: str | None = None
    direct: OutputError | None = None
    apical: ApicalError | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _LinearFeedback.apply(x, self.weight, self.bias, self.feedback, self.learning, self.direct, self.apical)


class FeedbackConv2d(nn.Conv2d):
    """``nn.Conv2d`` whose backward pass sends errors through ``feedback`` instead of ``weight``."""

    feedback: torch.Tensor
    learning: str | None = None
    direct: OutputError | None = None
    apical: ApicalError | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _Conv2dFeedback.apply(
            x, self.weight, self.bias, self.feedback, self.learning, self.direct, self.apical,
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
    learning: str | None = None,
    direct: OutputError | None = None,
    skip_first: bool = False,
) -> list[nn.Module]:
    """Turn every Linear/Conv2d of ``model`` into its feedback twin, in place: the forward
    parameters and ``state_dict`` keys stay as they are, and each layer gains ``feedback``
    (a buffer when fixed, a parameter when ``plastic``) that learns by ``learning``; with
    ``direct`` the input error is ``B e`` from the broadcast output error (DFA) instead of
    ``grad_output · B``. ``skip_first`` leaves the first layer as it is: it sends no error
    anywhere (its input is the data), so it needs no feedback weights. Returns the layers in forward order."""
    layers = []
    for name, layer in trainable_layers(model)[1 if skip_first else 0:]:
        check_rewirable(name, layer)
        feedback = make_feedback(layer).detach().clone()
        layer.__class__ = FEEDBACK_CLASSES[type(layer)]
        if plastic:
            layer.register_parameter("feedback", nn.Parameter(feedback))
        else:
            layer.register_buffer("feedback", feedback)
        layer.learning = learning
        layer.direct = direct
        layer.apical = ApicalError() if learning == "apical" else None
        layers.append(layer)
    return layers


def without(groups: list[dict], tensors: list[torch.Tensor]) -> list[dict]:
    """Parameter groups with ``tensors`` taken out (rules that give feedback weights their own
    group or optimizer); groups left empty are dropped."""
    ids = {id(t) for t in tensors}
    kept = ({**g, "params": [p for p in g["params"] if id(p) not in ids]} for g in groups)
    return [g for g in kept if g["params"]]


def random_like_weight(layer: nn.Module) -> torch.Tensor:
    """A feedback tensor drawn from the same distribution as PyTorch's default weight init,
    independently of the forward weight (uses the global RNG, seeded by the trainer)."""
    feedback = torch.empty_like(layer.weight)
    nn.init.kaiming_uniform_(feedback, a=5**0.5)
    return feedback


def angle_degrees(a: torch.Tensor, b: torch.Tensor) -> float:
    """The angle between two tensors read as flat vectors, in degrees (alignment diagnostics)."""
    cos = F.cosine_similarity(a.flatten().double(), b.flatten().double(), dim=0)
    return math.degrees(math.acos(max(-1.0, min(1.0, cos.item()))))
