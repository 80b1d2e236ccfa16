"""Hebbian hidden layers with a gradient-trained readout (DLL Figure 1g; BASELINES.md
section 5), and the random-features control.

``hebbian``: every hidden layer learns from its own input ``X`` and drive ``U = X Wᵀ`` only
(the hidden biases are zeroed and frozen: the rules have no bias term); the output layer is a
linear readout trained by the gradient of the loss on the *detached* hidden features, so no
error ever reaches a hidden layer. Two hidden rules (``variant``):

* ``oja`` (Oja 1982), with ``Y = U`` (linear): ``ΔW = (YᵀX - diag(Σ_b y_b²) W) / B``. Each row
  converges to ±the leading principal direction of its input with unit norm. Every unit finds
  the *same* direction, so features collapse with depth: this is the non-competitive rule
  the spec takes as the likeliest reading of DLL's "Δw_ij = η x_i x_j" (their MNIST 78.29 is
  below random features). Measured on ``digits`` (one hidden layer of 128, Adam 1e-3, 15
  epochs): every row ends at ±v_1 with unit norm and the readout is at chance (10%).
* ``softhebb`` (Moraitis et al. 2022; Journé et al. 2023, the multilayer form), recommended:
  ``Y = softmax(t_inv U)`` over the layer's units, sign-flipped to anti-Hebbian (``-y``) for all
  but each example's most active unit;
  ``D = YᵀX - diag(Σ_b y_b ⊙ u_b) W``, normalised by ``max|D|``, and row ``k`` scaled by its
  own rate ``|‖w_k‖ - 1|^p`` so that the norms settle at 1.

The forward pass (and ``predict``) is the model's: ``h_l = f(U_l)`` with the model's
activation. The update is written as ``W.grad = -ΔW`` and stepped by the run's optimizer: with
SGD at learning rate η it is the rules above with rate η; Adam rescales each element but keeps
their fixed points.

``random_features``: the same network with the hidden layers left at their random
initialisation (``requires_grad=False``) and only the readout trained, by BP through that single
layer. It is the control that shows what the Hebbian layers add (on ``digits``, same setting:
SoftHebb 92.2%, random features 92.5%).

Flags ✓✓✓ for both (DLL's Hebbian row). C1: no error travels back through any weight. C2: a
hidden synapse changes from its pre- and post-synaptic activity alone; the readout is one layer,
so its delta rule uses the error at its own output units. C3: one pass does both inference and
learning.

Only ``mlp`` chains are covered: the rules are written for fully connected layers.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from . import register_algorithm
from ..errors import ConfigError, require_non_negative, require_positive
from ._chain import ChainRule
from .base import Hyperparameters, Plausibility, StepResult

VARIANTS = ("oja", "softhebb")


@dataclass
class HebbianHyperparameters(Hyperparameters):
    variant: str = "softhebb"  # oja | softhebb
    t_inv: float = 12.0  # SoftHebb's inverse softmax temperature (MLP preset)
    norm_power: float = 0.2  # p in SoftHebb's per-unit rate |‖w_k‖ - 1|^p (MLP default)

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.variant not in VARIANTS:
            raise ConfigError(f"hebbian: unknown variant '{self.variant}'; available: {', '.join(VARIANTS)}")
        require_positive("hebbian", t_inv=self.t_inv)
        require_non_negative("hebbian", norm_power=self.norm_power)


def oja_update(x: torch.Tensor, u: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """``ΔW = (UᵀX - diag(Σ_b u_b²) W) / B``."""
    return (u.T @ x - u.pow(2).sum(0)[:, None] * weight) / len(x)


def softhebb_update(x: torch.Tensor, u: torch.Tensor, weight: torch.Tensor, t_inv: float, p: float) -> torch.Tensor:
    """SoftHebb's ΔW: soft WTA with anti-Hebbian losers, normalised by its maximum, per-unit rates."""
    y = torch.softmax(t_inv * u, dim=1)
    winner = torch.zeros_like(y, dtype=torch.bool).scatter_(1, u.argmax(1, keepdim=True), True)
    y = torch.where(winner, y, -y)
    delta = y.T @ x - (y * u).sum(0)[:, None] * weight
    delta = delta / delta.abs().max().clamp_min(torch.finfo(delta.dtype).tiny)
    rate = (weight.norm(dim=1) - 1).abs().pow(p)
    return rate[:, None] * delta


class ReadoutRule(ChainRule):
    """A chain whose last layer is trained by the gradient on detached hidden features."""

    flags = Plausibility(no_weight_transport=True, local_errors=True, no_separate_phases=True)

    def __init__(self, model, **hyperparameters):
        super().__init__(model, **hyperparameters)
        self.hidden, self.readout = self.layers[:-1], self.layers[-1]

    def readout_step(self, features: torch.Tensor, y: torch.Tensor) -> StepResult:
        readout = self.model.blocks[-1]
        return self.backward_loss(readout(features.detach()), y)  # the graph starts at the readout


@register_algorithm("hebbian")
class Hebbian(ReadoutRule):
    """Hebbian hidden layers (Oja or SoftHebb) under a gradient-trained linear readout."""

    name = "hebbian"
    update_kind = "manual"  # hidden updates written under no_grad
    Hyperparameters = HebbianHyperparameters

    def __init__(self, model, **hyperparameters):
        super().__init__(model, **hyperparameters)
        for layer in self.hidden:
            if layer.linear.bias is not None:
                with torch.no_grad():
                    layer.linear.bias.zero_()
                layer.linear.bias.requires_grad_(False)

    def hebbian_update(self, x: torch.Tensor, u: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        if self.hp.variant == "oja":
            return oja_update(x, u, weight)
        return softhebb_update(x, u, weight, self.hp.t_inv, self.hp.norm_power)

    def compute_updates(self, x, y) -> StepResult:
        with torch.no_grad():
            h = x
            for layer in self.hidden:
                inputs = layer.head(h)
                u = layer.linear(inputs)
                layer.linear.weight.grad = -self.hebbian_update(inputs, u, layer.linear.weight)
                h = layer.tail(u)
        return self.readout_step(h, y)


@register_algorithm("random_features")
class RandomFeatures(ReadoutRule):
    """Control: frozen random hidden layers, only the linear readout learns."""

    name = "random_features"
    update_kind = "autograd"

    def __init__(self, model, **hyperparameters):
        super().__init__(model, **hyperparameters)
        for layer in self.hidden:
            layer.linear.requires_grad_(False)

    def compute_updates(self, x, y) -> StepResult:
        with torch.no_grad():
            h = x
            for block in self.model.blocks[:-1]:
                h = block(h)
        return self.readout_step(h, y)
