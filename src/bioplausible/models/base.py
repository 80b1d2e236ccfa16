"""What every architecture in the library is: a chain of blocks with a known input shape.

Learning rules rely on three things only:

* ``model.blocks`` -- an ``nn.ModuleList`` whose sequential composition is ``model.forward``.
  Layer-local rules (SLL, DGL, InfoPro, local losses, layer-parallel training) split the
  network at these boundaries; per-layer learning rates are given per block.
* ``model.input_shape`` -- the shape of one example (no batch dimension). Rules that need the
  shape of every layer (DFA's feedback matrices) run one dry forward pass on it.
* ``model.num_classes`` -- the width of the output.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from ..errors import ConfigError, ShapeError

ACTIVATIONS: dict[str, type[nn.Module]] = {
    "relu": nn.ReLU,
    "tanh": nn.Tanh,
    "sigmoid": nn.Sigmoid,
    "hardsigmoid": nn.Hardsigmoid,
    "leaky_relu": nn.LeakyReLU,
    "gelu": nn.GELU,
    "elu": nn.ELU,
    "identity": nn.Identity,
}


def make_activation(name: str) -> nn.Module:
    try:
        return ACTIVATIONS[name]()
    except KeyError:
        raise ConfigError(
            f"unknown activation '{name}'; available: {', '.join(sorted(ACTIVATIONS))}"
        ) from None


class Network(nn.Module):
    """A model whose forward pass is the composition of ``blocks``."""

    def __init__(self, blocks: Sequence[nn.Module], input_shape: Sequence[int], num_classes: int):
        super().__init__()
        self.blocks = nn.ModuleList(blocks)
        self.input_shape = tuple(int(s) for s in input_shape)
        self.num_classes = int(num_classes)

    def check_input(self, x: torch.Tensor) -> None:
        if tuple(x.shape[1:]) != self.input_shape:
            raise ShapeError(
                f"wrong input shape: {type(self).__name__} expects [batch, "
                f"{', '.join(map(str, self.input_shape))}], got {list(x.shape)}"
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.check_input(x)
        for block in self.blocks:
            x = block(x)
        return x
