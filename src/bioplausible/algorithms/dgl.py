"""Decoupled Greedy Learning (DGL; Belilovsky, Eickenberg & Oyallon 2020), as read in
ALGORITHMS.md, last section, and used as the base of MLAAN (paper
``mlaan_leap_augmented_auxiliary_network.txt``, "Preparations").

The network is split into K gradient-isolated modules ``f_θj`` (:func:`auxiliary.split_modules`);
module j reads ``x_j = sg(x_{j-1})`` and its auxiliary classifier ``g_γj`` (the DGL head:
pool to ⌈s/4⌉, 3 × 1×1 conv-BN-ReLU, pool to 2×2, 3 × Linear-BN-ReLU, Linear) turns its output
into a prediction ``ŷ_j = g_γj(f_θj(x_j))``. Both are trained on that module's loss alone
(MLAAN paper, eqs. (1)-(2)):

    γ_j ← γ_j − η ∇_γj CE(ŷ_j, y)                                                   (1)
    θ_j ← θ_j − η ∇_θj CE(ŷ_j, y)                                                   (2)

The last module ends with the model's own classifier and is trained with plain CE on it; the
prediction is the network's output. Each module runs its backward and optimizer step before the
next module's forward (:class:`~bioplausible.algorithms.layerwise.LayerwiseRule`), so only one
module's graph is alive at a time.

Plausibility flags (ALGORITHMS.md criteria; DLL Table 1 row "local losses" ✗✓✗):

* C1 ✗: the error reaching a module is backpropagated through the transposed weights of its
  learned auxiliary head (and, inside a module, of its own layers).
* C2 ✓: no error crosses a module boundary; each module learns from its own loss.
* C3 ✗: each module runs a forward phase, then a backward phase kept apart from it.
"""

from __future__ import annotations

import numbers
from dataclasses import dataclass

from torch import nn

from . import register_algorithm
from ..errors import ConfigError
from .auxiliary import AuxHyperparameters, Auxiliary, AuxiliaryRule, dgl_head
from .base import Plausibility


@dataclass
class DGLHyperparameters(AuxHyperparameters):
    head_width: int = 0  # width of the head's 3 hidden Linear layers; 0: the flattened width 4C

    def __post_init__(self) -> None:
        super().__post_init__()
        if isinstance(self.head_width, bool) or not isinstance(self.head_width, numbers.Integral) or self.head_width < 0:
            raise ConfigError(f"dgl: 'head_width' must be a non-negative integer, got {self.head_width!r}")


@register_algorithm("dgl")
class DecoupledGreedyLearning(AuxiliaryRule):
    """Decoupled greedy learning: K gradient-isolated modules, each with a CE auxiliary classifier."""

    name = "dgl"
    flags = Plausibility(no_weight_transport=False, local_errors=True, no_separate_phases=False)
    Hyperparameters = DGLHyperparameters

    def __init__(self, model, **hyperparameters):
        super().__init__(model, **hyperparameters)
        param = next(model.parameters())
        self.aux = nn.ModuleList(
            Auxiliary(dgl_head(self.module_shape(j), model.num_classes, self.hp.head_width))
            for j in range(len(self.units) - 1)
        ).to(param)
