"""PEPITA, "Present the Error to Perturb the Input To modulate Activity" (Dellaferrera &
Kreiman 2022, "Error-driven input modulation: solving the credit assignment problem without a
backward pass"; BASELINES.md section 8).

Two forward passes and no backward pass. Dropout masks ``m_l`` are drawn once per batch and
used in both passes (inverted dropout: kept units scaled by ``1/keep``, so ``predict`` needs no
masks).

1. Clean pass: ``h_0 = x``, ``h_l = m_l ⊙ f(W_l h_{l-1} + b_l)``, logits ``z = W_L h_{L-1} + b_L``,
   error ``e = ∂L/∂z`` (``softmax(z) - onehot(y)`` for cross-entropy).
2. The error perturbs the input through a fixed random ``F`` ``[d_0, C]``: ``x' = x + F e``.
3. Modulated pass on ``x'``: ``h'_l``, ``z'`` and ``e'``.
4. Updates (batch means; the presynaptic terms are the *modulated* activities):

       ΔW_1 = -η (h_1 - h'_1) x'ᵀ
       ΔW_l = -η (h_l - h'_l) h'_{l-1}ᵀ         (1 < l < L)
       ΔW_L = -η e' h'_{L-1}ᵀ

   and the biases alike without the presynaptic factor (the paper's network has no biases;
   a bias is a weight from a constant input).

To first order ``h_l - h'_l = -J_l F e`` with ``J_l = ∂h_l/∂x``: exactly so for linear hidden
layers, where PEPITA is a DFA-like rule with feedback ``W_l⋯W_1 F``.

``F_ij = f_scale · U(-√(6/d_0), √(6/d_0))``, its empirical mean subtracted (the authors' code
forces zero mean); the scale of ``F`` is critical. The paper's forward weights are He-uniform
without biases; here the model's own initialisation is kept.

Flags ✓✓✗ (not in DLL's table; assessed from the update rule). C1: nothing travels backwards
through any weight (``F`` is fixed and random). C2: each update is a product of the synapse's
own pre- and post-synaptic activities in the two passes; arguable, as the error enters only at
the input. C3: two sequential passes, with the first pass's activity stored.

Only ``mlp`` chains are covered: the updates are written for fully connected layers.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from . import register_algorithm
from ..errors import ConfigError, require_non_negative
from ._chain import ChainRule, output_error
from .base import Hyperparameters, Plausibility, StepResult


@dataclass
class PepitaHyperparameters(Hyperparameters):
    f_scale: float = 0.05  # scale of the input-modulation matrix F
    keep: float = 0.9  # dropout keep rate of the hidden units, one mask per batch for both passes

    def __post_init__(self) -> None:
        super().__post_init__()
        require_non_negative("pepita", f_scale=self.f_scale)
        if not 0 < self.keep <= 1:
            raise ConfigError(f"pepita: 'keep' must be in (0, 1], got {self.keep}")


@register_algorithm("pepita")
class Pepita(ChainRule):
    """PEPITA: the output error perturbs the input; a second forward pass gives the updates."""

    name = "pepita"
    flags = Plausibility(no_weight_transport=True, local_errors=True, no_separate_phases=False)
    update_kind = "manual"
    Hyperparameters = PepitaHyperparameters

    def __init__(self, model, **hyperparameters):
        super().__init__(model, **hyperparameters)
        w = self.layers[0].linear.weight
        d0, classes = w.shape[1], model.num_classes
        bound = (6 / d0) ** 0.5
        f = self.hp.f_scale * torch.empty(d0, classes, dtype=w.dtype, device=w.device).uniform_(-bound, bound)
        self.register_buffer("input_feedback", f - f.mean())  # F, fixed

    def forward_pass(self, x0: torch.Tensor, masks: list[torch.Tensor]) -> tuple[list[torch.Tensor], torch.Tensor]:
        """Hidden activities ``[h_1 … h_{L-1}]`` and logits, for a flattened input ``x0``."""
        hidden, h = [], x0
        for layer, mask in zip(self.layers[:-1], masks):
            h = layer.tail(layer.linear(h)) * mask
            hidden.append(h)
        return hidden, self.layers[-1].linear(h)

    @torch.no_grad()
    def compute_updates(self, x, y) -> StepResult:
        x0 = self.layers[0].head(x)
        masks = [torch.bernoulli(torch.full((len(x), layer.linear.out_features), self.hp.keep,
                                            dtype=x0.dtype, device=x0.device)) / self.hp.keep
                 for layer in self.layers[:-1]]
        hidden, z = self.forward_pass(x0, masks)
        e = output_error(self.hp.loss, z, y)
        x_mod = x0 + e @ self.input_feedback.T  # x' = x + F e
        hidden_mod, z_mod = self.forward_pass(x_mod, masks)
        e_mod = output_error(self.hp.loss, z_mod, y)

        # Post-synaptic differences and pre-synaptic (modulated) activities, layer by layer.
        posts = [h - h_mod for h, h_mod in zip(hidden, hidden_mod)] + [e_mod]
        pres = [x_mod] + hidden_mod
        for layer, post, pre in zip(self.layers, posts, pres):
            layer.linear.weight.grad = post.T @ pre / len(x)  # = -ΔW / η
            if layer.linear.bias is not None:
                layer.linear.bias.grad = post.mean(0)
        return StepResult(self.loss(z, y), z)
