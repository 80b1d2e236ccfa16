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
  own rate ``|‖w_k‖ - 1|^p`` so that the norms settle at 1. The rows start at norm ``init_norm``
  (default 3; SoftHebb's code starts them at 25): *above* 1, learning shrinks a winner's norm
  and hence its drive, so other units get to win (the rule's homeostasis). From PyTorch's
  initialisation (row norm 1/√3 ≈ 0.58 at any width) the first winner's norm *grows* towards 1
  and it wins every example: on the DLL MNIST MLP one unit won all of them in the 2nd and 3rd
  layers and the readout reached 26% after one epoch (Adam); from norm 3, 81.7% (SGD at 0.045).
  3 rather than 25 keeps most tanh units unsaturated (at 25, 91% of them are; one epoch from
  Gaussian rows, SGD at 0.045: 76.5% at 25, 82.6% at 3).

The forward pass (and ``predict``) is the model's: ``h_l = f(U_l)`` with the model's
activation. The update is written as ``W.grad = -ΔW`` and stepped by the run's optimizer: with
SGD at learning rate η it is the rules above with rate η; Adam rescales each element but keeps
their fixed points.

``random_features``: the same network with the hidden layers left at their random
initialisation (``requires_grad=False``) and only the readout trained, by BP through that single
layer. It is the control that shows what the Hebbian layers add (on ``digits``, same setting:
SoftHebb 95.8%, random features 92.5%; 92.2% for SoftHebb from PyTorch's initialisation).

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
    init_norm: float = 3.0  # SoftHebb: every hidden row starts at this norm (must be > 1, see above)

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.variant not in VARIANTS:
            raise ConfigError(f"hebbian: unknown variant '{self.variant}'; available: {', '.join(VARIANTS)}")
        require_positive("hebbian", t_inv=self.t_inv)
        require_non_negative("hebbian", norm_power=self.norm_power)
        if not self.init_norm > 1:
            raise ConfigError(f"hebbian: init_norm must be above 1 (SoftHebb's norms shrink to 1), got {self.init_norm!r}")


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
            with torch.no_grad():
                if self.hp.variant == "softhebb":  # Oja's rows reach norm 1 from any start
                    weight = layer.linear.weight
                    weight.mul_(self.hp.init_norm / weight.norm(dim=1, keepdim=True))
                if layer.linear.bias is not None:
                    layer.linear.bias.zero_()
            if layer.linear.bias is not None:
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
