"""Dendritic Localized Learning (DLL; ``shared/papers/dll_dendritic_localized_learning.txt``,
Algorithm 1; resolved reading in ``shared/specs/ALGORITHMS.md``, section DLL).

Each neuron has a basal compartment (forward input), a soma ``u`` and an apical compartment
that holds the local error ``ξ``, fed from the layer above through learned feedback weights
``Θ_i`` of ``W_i``'s shape. Per batch, all layers at once:

    u_{i+1} = f_i(W_i u_i)                                  basal dendrites, forward pass
    ξ_L     = -∇_{u_L} ℓ(u_L, y)                            mse: onehot - u_L;  ce: onehot - softmax(u_L)
    g_{i+1} = ξ_{i+1} ⊙ f_i'(W_i u_i)
    ξ_i     = Θ_iᵀ g_{i+1}                                  (7), the fixed point of
    x_i    ← x_i + η_x (-x_i + Θ_iᵀ g_{i+1})                (6), the apical dynamics (``settle_steps``)
    ΔW_i    = g_{i+1} u_iᵀ                                  (8)
    ΔΘ_i    = -g_{i+1} ξ_iᵀ                                 (9), in Θ_i's shape

Implementation: every Linear/Conv2d but the first (whose input is the data: it sends no error,
so it has no Θ) becomes a feedback layer in ``"apical"`` mode (``feedback.py``): its backward
sends ``Θᵀ g`` down instead of ``Wᵀ g`` and gives Θ the gradient ``grad_outᵀ · input_error``.
With the loss *summed* over the batch, autograd's signals are exactly ``-g`` and ``-ξ`` per
example, so ``W.grad = -Σ g uᵀ`` and ``Θ.grad = Σ g ξᵀ`` (the signs cancel); dividing by the
batch size gives ``-ΔW`` and ``-ΔΘ`` batch-averaged, applied together by the optimizer.
Activations, pooling and flattening between layers pass errors exactly as in BP; for a conv
layer ``ξ`` is the transposed convolution of ``g`` with Θ and ``ΔΘ`` pairs every output
position with its own input patch (the authors' code reshapes without permuting and pairs the
wrong elements there; their MLP never updates Θ at all).

The per-layer form is exact when every layer's input feeds that layer alone (MLPs and the
paper's CNNs): the error at the input is then the apical ``ξ_i`` of eq. (9). In a recurrent net
``h_t`` feeds both ``W_y`` and ``W_h``, and (27) pairs ``ξ^y_t`` with the *total* ``ξ^h_t``, so
for an :class:`ElmanRNN` the rule runs the hand-written loop over time of Appendix B
(eqs. 10-30, ``dll_rnn.py``) with Θ_y and Θ_h, instead of rewiring layers.

``dll_fa`` is the paper's DLL-FA ablation (Table 3): Θ random and frozen.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
from torch import nn

from ..errors import ConfigError, require_positive
from . import register_algorithm
from .base import Hyperparameters, LearningRule, Plausibility, StepResult
from .dll_rnn import RecurrentDLL
from .feedback import angle_degrees, random_like_weight, rewire, trainable_layers, without


@dataclass
class DLLHyperparameters(Hyperparameters):
    loss: str = "mse"  # the paper derives eqs. 8-9 from ½‖ξ‖² with a linear output
    theta_lr: Optional[float] = None  # learning rate of Θ; None: lr / 10 (the authors' code)
    settle_steps: int = 0  # 0: closed form (7); k > 0: k synchronous steps of (6) from x = 0
    eta_x: float = 0.5  # η_x of (6)

    def __post_init__(self) -> None:
        super().__post_init__()
        require_positive("dll", eta_x=self.eta_x)
        if self.theta_lr is not None:
            require_positive("dll", theta_lr=self.theta_lr)
        if not isinstance(self.settle_steps, int) or self.settle_steps < 0:
            raise ConfigError(f"dll: 'settle_steps' must be a non-negative integer, got {self.settle_steps!r}")


@register_algorithm("dll")
class DendriticLocalizedLearning(LearningRule):
    """Dendritic localized learning: apical errors through learned feedback Θ, local ΔW and ΔΘ."""

    name = "dll"
    flags = Plausibility(no_weight_transport=True, local_errors=True, no_separate_phases=True)
    update_kind = "autograd"
    Hyperparameters = DLLHyperparameters
    plastic_theta = True

    def __init__(self, model, **hyperparameters):
        from ..models.rnn import ElmanRNN

        super().__init__(model, **hyperparameters)
        if isinstance(model, ElmanRNN):
            self.layers = []
            self.recurrent = RecurrentDLL(model.cell, self.plastic_theta, self.hp.settle_steps, self.hp.eta_x)
            self.thetas = [self.recurrent.theta_y, self.recurrent.theta_h]
            self.update_kind = "manual"  # the loop over time writes .grad itself, no backward()
            return
        self.recurrent = None
        self.layers = rewire(model, random_like_weight, plastic=self.plastic_theta,
                             learning="apical" if self.plastic_theta else None, skip_first=True)
        self.thetas = [layer.feedback for layer in self.layers]
        if self.hp.settle_steps:
            self.check_layer_params_only()

    def param_groups(self) -> list[dict]:
        groups = without(super().param_groups(), self.thetas)
        if self.plastic_theta and self.thetas:
            theta = {"lr": self.hp.theta_lr} if self.hp.theta_lr is not None else {"lr_scale": 0.1}
            groups.append({"name": "theta", "params": self.thetas, **theta})
        return groups

    def compute_updates(self, x, y) -> StepResult:
        if self.recurrent is not None:
            return self.recurrent.compute_updates(self, x, y)
        batch = len(y)
        if self.hp.settle_steps:
            result = self.settled_updates(x, y)
        else:  # closed form (7): one backward pass of the summed loss sends -ξ_i = -Θ_iᵀ g_{i+1} down
            output = self.model(x)
            loss = self.loss(output, y)
            (loss * batch).backward()
            result = StepResult(loss.detach(), output.detach())
        for p in self.parameters():  # batch averages of (8) and (9)
            if p.grad is not None:
                p.grad.div_(batch)
        return result

    def epoch_diagnostics(self, x: torch.Tensor, y: torch.Tensor) -> dict[str, float]:
        return self.diagnostics(x, y)

    def forward_weights(self) -> list[torch.Tensor]:
        """The forward weight of each Θ, in the order of ``self.thetas``."""
        if self.recurrent is not None:
            return [self.model.cell.W_y.weight, self.model.cell.W_h.weight]
        return [layer.weight for layer in self.layers]

    def diagnostics(self, x: torch.Tensor, y: torch.Tensor) -> dict[str, float]:
        """Per trainable layer i (numbered from the input): ``angle_update_grad/i``, the angle between
        DLL's ΔW_i on ``(x, y)`` and BP's -∇W_i on the same batch, and ``update_norm_ratio/i`` =
        ‖ΔW_i‖ / ‖∇W_i‖; per layer with a Θ (all but the first, which sends no error down):
        ``angle_theta_W/i`` and ``theta_norm_ratio/i`` = ‖Θ_i‖ / ‖W_i‖. Angles in degrees; with Θ
        tied to W, settled to the closed form, the angles are 0 and the update ratios 1. The norms
        show whether the errors that reach the lower layers shrink as Θ learns (eq. 9 descends on
        ½‖ξ_i‖², whose trivial minimum is Θ_i = 0). For the RNN the layers are W_y and W_h. BP's
        gradient is DLL's closed-form update (7) with every Θ tied to its W (the oracle of
        tests/algorithms/test_dll.py); with ``settle_steps > 0`` the rule's own update uses the
        truncated settling, so the ratios show what the truncation loses. Parameters, buffers,
        gradients and optimizer states are left as they were."""
        weights = self.forward_weights()
        updated = weights if self.recurrent is not None else [layer.weight for _, layer in trainable_layers(self.model)]
        first_theta = len(updated) - len(weights)  # the index of the first layer with a Θ
        kept_grads = {p: p.grad for p in self.parameters()}
        kept_thetas = [theta.detach().clone() for theta in self.thetas]
        kept_buffers = [(b, b.detach().clone()) for b in self.buffers()]  # BatchNorm statistics

        def weight_updates() -> list[torch.Tensor]:
            for p in self.parameters():
                p.grad = None
            self.compute_updates(x, y)
            return [-w.grad.detach().clone() for w in updated]

        settle_steps = self.hp.settle_steps
        try:
            dll = weight_updates()
            with torch.no_grad():
                for theta, w in zip(self.thetas, weights):
                    theta.copy_(w)
            self.set_settle_steps(0)  # a truncated settle of tied Θ is not BP's gradient
            bp = weight_updates()
        finally:
            self.set_settle_steps(settle_steps)
            with torch.no_grad():
                for theta, kept in zip(self.thetas, kept_thetas):
                    theta.copy_(kept)
                for buffer, kept in kept_buffers:
                    buffer.copy_(kept)
            for p, grad in kept_grads.items():
                p.grad = grad
        out = {}
        for i, (update, grad) in enumerate(zip(dll, bp)):
            out[f"angle_update_grad/{i}"] = angle_degrees(update, grad)
            out[f"update_norm_ratio/{i}"] = (update.norm() / grad.norm()).item()
        for i, (theta, w) in enumerate(zip(kept_thetas, weights), start=first_theta):
            out[f"angle_theta_W/{i}"] = angle_degrees(theta, w)
            out[f"theta_norm_ratio/{i}"] = (theta.norm() / w.detach().norm()).item()
        return out

    def set_settle_steps(self, steps: int) -> None:
        self.hp.settle_steps = steps
        if self.recurrent is not None:
            self.recurrent.settle_steps = steps

    def settled_updates(self, x: torch.Tensor, y: torch.Tensor) -> StepResult:
        """Eq. (6): the apical compartments start at rest and relax for ``settle_steps``
        synchronous steps; (8) and (9) then use the settled errors. The state lives at each
        layer's input; the drive Θ_iᵀ g_{i+1} is the vector-Jacobian product from the next
        layer's input (or the output) back to this layer's input, through the feedback weights
        and whatever activation, pooling or reshape lies between, as BP would pass it."""
        layers = [layer for _, layer in trainable_layers(self.model)]
        inputs: dict[nn.Module, torch.Tensor] = {}

        def keep_input(layer: nn.Module, args: tuple) -> None:
            inputs[layer] = args[0]

        hooks = [layer.register_forward_pre_hook(keep_input) for layer in layers]
        try:
            output = self.model(x)
        finally:
            for hook in hooks:
                hook.remove()
        loss = self.loss(output, y)
        top = torch.autograd.grad(loss * len(y), output, retain_graph=True)[0]  # -ξ_L per example
        ins = [inputs[layer] for layer in layers]
        state = [None] + [torch.zeros_like(h) for h in ins[1:]]  # -x_i at rest (gradient units)

        def above(i: int) -> tuple[torch.Tensor, torch.Tensor]:
            """Where layer i's error comes from: the next layer's input and its state, or the output."""
            return (ins[i + 1], state[i + 1]) if i + 1 < len(layers) else (output, top)

        def drive(i: int) -> torch.Tensor:  # -Θ_iᵀ g_{i+1}
            target, error = above(i)
            return torch.autograd.grad(target, ins[i], error, retain_graph=True)[0]

        for _ in range(self.hp.settle_steps):
            drives = [drive(i) for i in range(1, len(layers))]  # synchronous: all from the old state
            for i, target in enumerate(drives, start=1):
                state[i] = state[i] + self.hp.eta_x * (target - state[i])
        for i, layer in enumerate(layers):
            apical = getattr(layer, "apical", None)
            if apical is not None:
                apical.error = state[i]  # ΔΘ_i pairs g_{i+1} with the settled ξ_i
            params = [p for p in (layer.weight, layer.bias, getattr(layer, "feedback", None))
                      if isinstance(p, nn.Parameter) and p.requires_grad]
            target, error = above(i)
            for p, g in zip(params, torch.autograd.grad(target, params, error, retain_graph=True)):
                p.grad = g
            if apical is not None:
                apical.error = None
        return StepResult(loss.detach(), output.detach())

    def check_layer_params_only(self) -> None:
        layer_params = {id(p) for _, layer in trainable_layers(self.model) for p in layer.parameters()}
        others = [n for n, p in self.model.named_parameters() if id(p) not in layer_params and p.requires_grad]
        if others:
            raise ConfigError(
                f"dll: 'settle_steps' needs every trainable tensor inside Linear/Conv2d layers; "
                f"'{others[0]}' is not (use the closed form, settle_steps=0)"
            )


@register_algorithm("dll_fa")
class DendriticLocalizedLearningFA(DendriticLocalizedLearning):
    """DLL-FA ablation: DLL with random, frozen feedback Θ (the paper's Table 3)."""

    # Numerically this is FA's update; the flags follow the paper's compartmental reading,
    # in which the error sits in the neuron's own apical dendrite.
    name = "dll_fa"
    plastic_theta = False
