"""Signal Propagation (Kohan, Rietman & Siegelmann 2023, "Signal propagation: the framework
for learning and inference in a forward pass"; library ``amassivek/signalpropagation``), as
resolved in BASELINES.md section 9, with the spec's recommended class-prototype target.

The target travels forward with the input, through the same weights. The signal of class ``c``
enters the network where the input does:

    t_0(c) = S(e_c),   S = ReLU(LayerNorm(W_S e_c))   (W_S: C → d_0, no bias; d_0 = input size)

and every hidden block ``f_l`` processes both streams, each on the detached output of the
block below:

    h_l = f_l(sg(h_{l-1})),   t_l(c) = f_l(sg(t_{l-1}(c))),   h_0 = x
    Z_l = h_l t_lᵀ  ([B, C]: example · class signal, flattened),   ℓ_l = CE(Z_l, y)

The gradient of ``ℓ_l`` reaches the block's weights through *both* ``h_l`` and ``t_l`` (tested:
detaching ``t`` loses half of it). The model's last block, its linear output layer, is trained
with plain CE on ``sg(h_{L-1})`` and gives the class scores, so :meth:`predict` is the model's
forward pass. ``S`` is learned by the first block's loss (``signal="learned"``, the default) or
fixed at its random initialisation (``signal="fixed"``; its weight is then a buffer).

Deviation from the library's default loss (``v14``), as the spec recommends: v14 feeds one
signal per *example*, ``t_0 = S(onehot(y))``, uses the logits ``h_l t_lᵀ`` ([B, B]) and as the
target of row ``i`` the ``argmax_j (t_{l-1} t_{l-1}ᵀ)_{ij}``, which can pick another class when
norms differ and, with duplicated same-class columns, puts a floor of ``log(n_dup)`` under the
CE. Here the targets are the C class prototypes ``t_l(c)`` and the target of example ``i`` is
its label: the same contrast (an example's activity against the signals of all classes),
without either defect, and no coupling between the examples of a batch.

Both streams go through a block in separate calls, so BatchNorm (if the model has it) takes
separate batch statistics for ``h`` and ``t``; its running averages see both.

Flags (the authors' claim, BASELINES.md; SigProp is not in DLL Table 1):

* C1 ✓: no error travels between blocks and no head reads a transpose: a block's update comes
  from its own forward activity on the input and on the target signal.
* C2 ✓: a block's update depends on its input, its output and the target's pass through the
  same block.
* C3 ✓: the target is a second forward pass (it can run at the same time as the input's, as
  one batch); there is no backward phase between blocks.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from . import register_algorithm
from ..errors import ConfigError
from .base import Hyperparameters, Plausibility
from .layerwise import LayerwiseRule

SIGNALS = ("learned", "fixed")


@dataclass
class SigPropHyperparameters(Hyperparameters):
    signal: str = "learned"  # S trained by the first block's loss, or fixed at its random init

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.loss != "ce":
            raise ConfigError(f"sigprop: the losses are cross-entropies; 'loss' must be 'ce', got '{self.loss}'")
        if self.signal not in SIGNALS:
            raise ConfigError(f"sigprop: unknown signal '{self.signal}'; options: {', '.join(SIGNALS)}")


class TargetSignal(nn.Module):
    """``t_0(c) = ReLU(LayerNorm(W_S e_c))`` for every class, shaped like one input example."""

    def __init__(self, num_classes: int, input_shape: tuple[int, ...], learned: bool):
        super().__init__()
        d = math.prod(input_shape)
        bound = 1 / math.sqrt(num_classes)  # nn.Linear's default initialisation
        weight = torch.empty(d, num_classes).uniform_(-bound, bound)
        if learned:
            self.weight = nn.Parameter(weight)
        else:
            self.register_buffer("weight", weight)
        self.norm = nn.LayerNorm(d, elementwise_affine=learned)
        self.input_shape = input_shape

    def forward(self) -> torch.Tensor:
        # W_S e_c is column c of W_S, so the C signals are the rows of W_Sᵀ.
        return F.relu(self.norm(self.weight.T)).view(-1, *self.input_shape)


@register_algorithm("sigprop")
class SignalPropagation(LayerwiseRule):
    """Signal Propagation: the class signals go forward with the input; each block contrasts them."""

    name = "sigprop"
    flags = Plausibility(no_weight_transport=True, local_errors=True, no_separate_phases=True)
    Hyperparameters = SigPropHyperparameters

    def __init__(self, model, **hyperparameters):
        super().__init__(model, **hyperparameters)
        self.units = [[block] for block in model.blocks]
        param = next(model.parameters())
        self.signal = TargetSignal(model.num_classes, model.input_shape, self.hp.signal == "learned").to(param)

    def unit_modules(self, i: int) -> list[nn.Module]:
        return [self.signal] if i == 0 else []

    def forward_unit(self, i: int, h):
        """``(h_l, t_l)`` for a hidden block, ``h_L`` (the class scores) for the output block.
        Block 0 starts the signal stream, attached, so the first block's loss trains ``S``."""
        h, t = (h, self.signal()) if i == 0 else h
        for block in self.units[i]:
            h = block(h)
            if i < len(self.units) - 1:
                t = block(t)
        return h if i == len(self.units) - 1 else (h, t)

    def unit_loss(self, i: int, h, carry, y: torch.Tensor):
        if i == len(self.units) - 1:  # the output layer: plain CE on sg(h_{L-1})
            return F.cross_entropy(h, y), None, h
        h, t = h
        return F.cross_entropy(h.flatten(1) @ t.flatten(1).T, y), None, None

    @torch.no_grad()
    def predict_from(self, first: int, h) -> torch.Tensor:
        """Class scores from the stream entering block ``first`` (layer-parallel evaluation)."""
        for i in range(first, len(self.units)):
            h = self.forward_unit(i, h)
        return h
