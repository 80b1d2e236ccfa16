"""AugLocal (Ma et al. 2024, "Scaling supervised local learning with augmented auxiliary
networks"), as read in ALGORITHMS.md, last section.

Gradient-isolated modules as in DGL (:mod:`.dgl`), with auxiliaries that imitate the network
above the module instead of a fixed small head: the auxiliary of module ``l`` is a stack of fresh,
trainable copies of ``d_l`` blocks sampled uniformly from the blocks above it, then GAP + Linear.

* Uniform sampling: the ``d_l`` blocks are evenly spaced over the blocks after module ``l``'s last
  block, up to and including the last block before the classifier (so the auxiliary always ends
  at the network's final width); each copy's first layer is resized to the features it receives,
  and a copied BasicBlock downsamples to the map size of its original (a skipped stride-2 block
  would otherwise leave the auxiliary at full resolution with 4× the channels).
* Pyramidal depth with coefficient τ = ``pyramid`` (0.5): ``d_l = max(1, round(d (1 − τ l/(K−2))))``
  for modules ``l = 0..K-2``, capped by the number of blocks above; early modules, furthest from
  the output, get the deepest auxiliaries.
* Copies are newly initialised ("fresh"), not copied weights, and are trained only by their
  module's loss, ``CE(aux_l(h_l), y)``.

Plausibility flags: as DGL (✗✓✗): the error reaches a module through its learned auxiliary's
transposed weights (C1 ✗), never crosses a module (C2 ✓), and needs a separate backward phase
(C3 ✗).
"""

from __future__ import annotations

import numbers
from dataclasses import dataclass

from torch import nn

from . import register_algorithm
from ..errors import ConfigError
from .auxiliary import AuxHyperparameters, Auxiliary, AuxiliaryRule, fresh_block, output_shape, pooled_classifier
from .base import Plausibility


@dataclass
class AugLocalHyperparameters(AuxHyperparameters):
    aux_depth: int = 3  # d: blocks in the first module's auxiliary
    pyramid: float = 0.5  # τ: the last auxiliary has about d(1 − τ) blocks

    def __post_init__(self) -> None:
        super().__post_init__()
        if isinstance(self.aux_depth, bool) or not isinstance(self.aux_depth, numbers.Integral) or self.aux_depth < 1:
            raise ConfigError(f"auglocal: 'aux_depth' must be a positive integer, got {self.aux_depth!r}")
        if isinstance(self.pyramid, bool) or not isinstance(self.pyramid, numbers.Real) or not 0 <= self.pyramid <= 1:
            raise ConfigError(f"auglocal: 'pyramid' must be in [0, 1], got {self.pyramid!r}")


def sampled_blocks(first: int, last: int, depth: int) -> list[int]:
    """``depth`` indices evenly spaced over ``first..last``, always ending at ``last``."""
    count = last - first + 1
    depth = min(depth, count)
    if depth == 1:
        return [last]
    return sorted({round(first + k * (count - 1) / (depth - 1)) for k in range(depth)})


@register_algorithm("auglocal")
class AugLocal(AuxiliaryRule):
    """AugLocal: each module's auxiliary is built from fresh copies of uniformly sampled later blocks."""

    name = "auglocal"
    flags = Plausibility(no_weight_transport=False, local_errors=True, no_separate_phases=False)
    Hyperparameters = AugLocalHyperparameters

    def __init__(self, model, **hyperparameters):
        super().__init__(model, **hyperparameters)
        param = next(model.parameters())
        n = len(self.units) - 1
        last_core = len(model.blocks) - 2
        self.aux_blocks: list[list[int]] = []  # which backbone blocks each auxiliary copies
        aux = []
        for l in range(n):
            t = l / (n - 1) if n > 1 else 0.0
            depth = max(1, round(self.hp.aux_depth * (1 - self.hp.pyramid * t)))
            chosen = sampled_blocks(self.last_block[l] + 1, last_core, depth)
            shape, layers = self.module_shape(l), []
            for b in chosen:
                layers.append(fresh_block(model.blocks[b], shape, self.shapes[b]).to(param))
                shape = output_shape(layers[-1], shape, param)
            self.aux_blocks.append(chosen)
            aux.append(Auxiliary(nn.Sequential(*layers, *pooled_classifier(shape, model.num_classes))))
        self.aux = nn.ModuleList(aux).to(param)
