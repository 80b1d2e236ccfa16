"""The fully connected chain of an ``mlp`` as the forward-only rules see it (perturbation,
Hebbian, R-STDP, PEPITA): each block split into ``head`` (Flatten, first block only), its one
``linear`` and ``tail`` (activation, nothing for the output), so that a rule can read a layer's
input and pre-activation, add noise to the pre-activation, or swap the nonlinearity.

Not a rule (the leading underscore keeps the package from importing it as one).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .base import LearningRule
from .ep import mlp_linear_layers


@dataclass
class ChainLayer:
    head: nn.Sequential
    linear: nn.Linear
    tail: nn.Sequential


def mlp_chain(model: nn.Module, rule: str) -> list[ChainLayer] | str:
    """The model's layers in forward order, or the reason it is not a plain ``mlp`` chain.

    Dropout is refused: these rules compare two forward passes (clean and perturbed, or PEPITA's
    two passes), and a module drawing fresh masks in each would make the difference noise."""
    layers = mlp_linear_layers(model)
    if isinstance(layers, str):
        return layers
    chain = []
    for i, block in enumerate(model.blocks):
        top = list(block) if isinstance(block, nn.Sequential) else []
        if not any(m is layers[i] for m in top):
            return f"block {i} is not a Sequential holding its Linear (use model 'mlp')"
        if any(isinstance(m, nn.Dropout) for m in top):
            return f"block {i} has Dropout, which would draw different masks in {rule}'s passes"
        k = next(j for j, m in enumerate(top) if m is layers[i])
        chain.append(ChainLayer(block[:k], layers[i], block[k + 1:]))
    return chain


def per_example_loss(kind: str, output: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """``L_b`` per row, the terms whose batch mean is :meth:`LearningRule.loss`."""
    if kind == "ce":
        return F.cross_entropy(output, y, reduction="none")
    target = F.one_hot(y, output.shape[-1]).to(output.dtype)
    return 0.5 * (output - target).pow(2).sum(-1)


def output_error(kind: str, output: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """``e_b = ∂L_b/∂z_b`` per row: ``softmax(z) - onehot(y)`` for cross-entropy, ``z - onehot(y)`` for MSE."""
    target = F.one_hot(y, output.shape[-1]).to(output.dtype)
    return (output.softmax(-1) if kind == "ce" else output) - target


class ChainRule(LearningRule):
    """Base of the rules defined on an ``mlp`` chain: refuses other models and keeps the chain
    as ``self.layers``."""

    @classmethod
    def supports(cls, model: nn.Module) -> str | None:
        chain = mlp_chain(model, cls.name)
        return chain if isinstance(chain, str) else None

    def __init__(self, model: nn.Module, **hyperparameters):
        super().__init__(model, **hyperparameters)
        self.layers = mlp_chain(model, self.name)
