"""InfoPro (Wang, Ni, Song, Yang & Huang 2021, "Revisiting locally supervised learning"), as read
in ALGORITHMS.md, last section.

Gradient-isolated modules as in DGL (:mod:`.dgl`), but module j's auxiliary loss keeps the
information about the input (a reconstruction term, InfoPro's surrogate of ``I(h, x)``) as well
as the task information (``I(h, y)``):

    L_j = λ1(j) · BCE(d_j(h_j), x̃) + λ2(j) · CE(g_j(h_j), y)

with ``h_j`` module j's output, ``x̃`` the input image rescaled to [0, 1] (the carry every module
receives), ``d_j`` the decoder (bilinear upsampling, conv3×3 C→12, BN, ReLU, conv3×3 12→channels,
sigmoid) and ``g_j`` the task head (conv3×3 s2 C→2C, BN, ReLU, GAP, FC 128, ReLU, FC). The weights
are interpolated linearly over the modules 0..K-2 (ResNet-32 K=16: λ1 5 → 0.2, λ2 0.05 → 0.5):
early modules keep the input, later ones discard what the task does not need. The last module is
trained with plain CE through the model's classifier.

Plausibility flags: as DGL (✗✓✗): the error reaches a module through its learned heads'
transposed weights (C1 ✗), never crosses a module (C2 ✓), and needs a separate backward phase
(C3 ✗).
"""

from __future__ import annotations

import numbers
from dataclasses import dataclass, field

from torch import nn

from . import register_algorithm
from ..errors import ConfigError
from .auxiliary import AuxHyperparameters, Auxiliary, AuxiliaryRule, Decoder, check_pair, infopro_head, interpolate
from .base import Plausibility


@dataclass
class InfoProHyperparameters(AuxHyperparameters):
    recon_weight: list = field(default_factory=lambda: [5.0, 0.2])  # λ1 at the first and last auxiliary module
    task_weight: list = field(default_factory=lambda: [0.05, 0.5])  # λ2 at the first and last auxiliary module
    head_width: int = 128  # hidden FC width of the task head
    decoder_width: int = 12  # channels of the decoder's hidden conv

    def __post_init__(self) -> None:
        super().__post_init__()
        check_pair("infopro", "recon_weight", self.recon_weight)
        check_pair("infopro", "task_weight", self.task_weight)
        for name in ("head_width", "decoder_width"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
                raise ConfigError(f"infopro: '{name}' must be a positive integer, got {value!r}")


def infopro_auxiliary(rule, j: int) -> Auxiliary:
    """Module j's InfoPro auxiliary (task head and decoder)."""
    shape, hp = rule.module_shape(j), rule.hp
    return Auxiliary(infopro_head(shape, rule.model.num_classes, hp.head_width),
                     Decoder(shape, rule.model.input_shape, hp.decoder_width))


def infopro_weights(rule, i: int) -> tuple[float, float]:
    """``(λ1, λ2)`` of module i, interpolated over the K-1 auxiliary modules."""
    n = len(rule.units) - 1
    return interpolate(rule.hp.recon_weight, i, n), interpolate(rule.hp.task_weight, i, n)


@register_algorithm("infopro")
class InfoPro(AuxiliaryRule):
    """InfoPro: gradient-isolated modules trained on λ1·reconstruction + λ2·task losses."""

    name = "infopro"
    flags = Plausibility(no_weight_transport=False, local_errors=True, no_separate_phases=False)
    Hyperparameters = InfoProHyperparameters

    def __init__(self, model, **hyperparameters):
        super().__init__(model, **hyperparameters)
        param = next(model.parameters())
        self.aux = nn.ModuleList(infopro_auxiliary(self, j) for j in range(len(self.units) - 1)).to(param)

    def loss_weights(self, i: int) -> tuple[float, float]:
        return infopro_weights(self, i)
