"""Shared plumbing of supervised local learning with auxiliary networks (DGL, InfoPro, AugLocal,
MLAAN; ALGORITHMS.md, last section): the module splitter, the auxiliary heads, and the base rule.

**Splitter.** A :class:`~bioplausible.models.base.Network` is ``blocks = [core_0, ..., core_{B-1},
head]`` (ResNet: stem, BasicBlocks, ``[GAP, Flatten, Linear]``). :func:`split_modules` cuts the
core blocks into ``K`` gradient-isolated local modules of consecutive blocks, as equal in size as
possible (earlier modules take the extra block), and appends the head to the last module. ResNet-32
has 16 core blocks (stem + 15 BasicBlocks), so ``K = 16`` is "stem plus each block" and
``K = 2, 4, 8`` group 8, 4, 2 blocks; ResNet-110 with ``K = 55`` is stem plus each of its 54
BasicBlocks. Module ``j`` takes ``sg(x_{j-1})``; the composition of the modules is the network.

**Auxiliary networks.** Module ``j < K-1`` is trained through an :class:`Auxiliary`: a classifier
(cross-entropy against ``y``) and, for InfoPro, a decoder (binary cross-entropy against the input
image rescaled to ``[0, 1]``). The last module is trained by the model's own head with plain CE.

* DGL head (Belilovsky et al. 2020): adaptive-avg-pool to ``⌈s/4⌉``, 3 × (1×1 conv C→C, BN, ReLU),
  adaptive-avg-pool to 2×2, flatten, 3 × (Linear, BN, ReLU), Linear to classes. The MLP width is
  not fixed by the spec; ``head_width = 0`` (default) uses the flattened width 4C.
* InfoPro head (Wang et al. 2021): conv3×3 stride 2 C→2C, BN, ReLU, GAP, FC 128, ReLU, FC classes;
  decoder: bilinear upsampling to the image size, conv3×3 C→12, BN, ReLU, conv3×3 12→channels,
  sigmoid.
* Flat features ``[B, d]`` (MLP blocks) get the same heads with the convolutional part dropped:
  DGL 3 × (Linear, BN, ReLU) + Linear; InfoPro Linear→128, ReLU, Linear; decoder Linear + sigmoid.

**Reconstruction target.** The datasets are normalised, so the decoder's target is the input
image min-max rescaled to ``[0, 1]`` per example and channel (the InfoPro code un-normalises with
known CIFAR statistics instead; min-max needs no dataset statistics). It is the ``carry`` every
module receives, computed by module 0 from ``x`` (:meth:`initial_carry`), so each module still needs
only ``(h, carry, y)``.
"""

from __future__ import annotations

import copy
import math
import numbers
from dataclasses import dataclass
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ConfigError
from ..models.resnet import BasicBlock
from .base import Hyperparameters
from .layerwise import LayerwiseRule


# ---------------------------------------------------------------------------------- the splitter
def split_modules(model: nn.Module, modules: int | None = None) -> list[list[nn.Module]]:
    """``K = modules`` consecutive groups of ``model.blocks``: the core blocks (all but the last)
    split as evenly as possible, the last block (the classifier) joined to the last group.
    ``None`` gives one module per core block (ResNet-32: 16, ResNet-110: 55)."""
    blocks = list(model.blocks)
    core = len(blocks) - 1
    k = core if modules is None else modules
    if isinstance(k, bool) or not isinstance(k, numbers.Integral) or not 1 <= k <= core:
        raise ConfigError(f"'modules' must be an integer in [1, {core}] (the number of blocks before "
                          f"the classifier), got {modules!r}")
    size, extra = divmod(core, k)
    groups, start = [], 0
    for j in range(k):
        stop = start + size + (j < extra)
        groups.append(blocks[start:stop])
        start = stop
    groups[-1].append(blocks[-1])
    return groups


def compose(units: Sequence[Sequence[nn.Module]], x: torch.Tensor) -> torch.Tensor:
    """The split network's function: each module applied to the output of the one below."""
    for unit in units:
        for block in unit:
            x = block(x)
    return x


@torch.no_grad()
def block_shapes(model: nn.Module) -> list[tuple[int, ...]]:
    """Output shape (no batch dimension) of every block, from one dry forward pass in eval mode."""
    was_training = model.training
    param = next(model.parameters())
    h = torch.zeros(2, *model.input_shape, device=param.device, dtype=param.dtype)
    shapes = []
    try:
        model.eval()
        for block in model.blocks:
            h = block(h)
            shapes.append(tuple(h.shape[1:]))
    finally:
        model.train(was_training)
    return shapes


def stage_starts(model: nn.Module, shapes: Sequence[tuple[int, ...]]) -> list[int]:
    """Indices of the core blocks that change the feature shape (ResNet: the first block of
    stages 2 and 3, which halve the map and double the channels)."""
    inputs = [tuple(model.input_shape), *shapes[:-1]]
    return [i for i in range(len(shapes) - 1) if shapes[i] != inputs[i]]


# ---------------------------------------------------------------------------------- the heads
class GradScale(torch.autograd.Function):
    """Identity forward, gradient times ``scale`` backward: weighs what one loss sends into the
    backbone without weighing what it sends into its own auxiliary network (MLAAN's ``a``)."""

    @staticmethod
    def forward(ctx, x, scale):
        ctx.scale = scale
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad):
        return grad * ctx.scale, None


def scale_grad(x: torch.Tensor, scale: float) -> torch.Tensor:
    return x if scale == 1 else GradScale.apply(x, scale)


def _mlp(width_in: int, width: int, layers: int, num_classes: int) -> list[nn.Module]:
    out: list[nn.Module] = []
    for _ in range(layers):
        # No bias before BN: BN's shift makes it redundant (and its gradient is exactly zero).
        out += [nn.Linear(width_in, width, bias=False), nn.BatchNorm1d(width), nn.ReLU()]
        width_in = width
    return out + [nn.Linear(width_in, num_classes)]


def dgl_head(shape: tuple[int, ...], num_classes: int, width: int = 0) -> nn.Module:
    """DGL's auxiliary classifier for a module output of ``shape`` (C, H, W) or (d,)."""
    if len(shape) == 1:
        return nn.Sequential(*_mlp(shape[0], width or shape[0], 3, num_classes))
    c, h, w = shape
    convs: list[nn.Module] = [nn.AdaptiveAvgPool2d((math.ceil(h / 4), math.ceil(w / 4)))]
    for _ in range(3):
        convs += [nn.Conv2d(c, c, 1, bias=False), nn.BatchNorm2d(c), nn.ReLU()]
    return nn.Sequential(*convs, nn.AdaptiveAvgPool2d(2), nn.Flatten(), *_mlp(4 * c, width or 4 * c, 3, num_classes))


def infopro_head(shape: tuple[int, ...], num_classes: int, width: int = 128) -> nn.Module:
    """InfoPro's task head: conv3×3 s2 C→2C, BN, ReLU, GAP, FC ``width``, ReLU, FC classes."""
    if len(shape) == 1:
        return nn.Sequential(nn.Linear(shape[0], width), nn.ReLU(), nn.Linear(width, num_classes))
    c = shape[0]
    return nn.Sequential(
        nn.Conv2d(c, 2 * c, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(2 * c), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(2 * c, width), nn.ReLU(), nn.Linear(width, num_classes),
    )


class Decoder(nn.Module):
    """InfoPro's decoder: features → an image in ``[0, 1]`` of the input's shape."""

    def __init__(self, shape: tuple[int, ...], image_shape: tuple[int, ...], width: int = 12):
        super().__init__()
        self.image_shape = tuple(image_shape)
        if len(shape) == 1:
            self.net = nn.Sequential(nn.Linear(shape[0], math.prod(image_shape)), nn.Sigmoid())
        else:
            self.net = nn.Sequential(
                nn.Upsample(size=tuple(image_shape[1:]), mode="bilinear", align_corners=True),
                nn.Conv2d(shape[0], width, 3, padding=1, bias=False), nn.BatchNorm2d(width), nn.ReLU(),
                nn.Conv2d(width, image_shape[0], 3, padding=1), nn.Sigmoid(),
            )

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.net(h).reshape(len(h), *self.image_shape)


class Auxiliary(nn.Module):
    """One auxiliary network: a classifier and, for InfoPro, a decoder."""

    def __init__(self, classifier: nn.Module, decoder: nn.Module | None = None):
        super().__init__()
        self.classifier = classifier
        self.decoder = decoder


def image_target(x: torch.Tensor) -> torch.Tensor:
    """The input rescaled to ``[0, 1]`` per example and channel (InfoPro's reconstruction target)."""
    flat = x.detach().flatten(2) if x.dim() > 2 else x.detach().unsqueeze(1)
    lo, hi = flat.amin(-1, keepdim=True), flat.amax(-1, keepdim=True)
    return ((flat - lo) / (hi - lo).clamp_min(1e-8)).reshape(x.shape)


def fresh_block(block: nn.Module, shape: tuple[int, ...], out_shape: tuple[int, ...]) -> nn.Module:
    """A newly initialised block of ``block``'s architecture that reads features of ``shape``
    (AugLocal's auxiliary layers: the first weight layer is resized to the input it gets). A
    BasicBlock also takes the stride that brings its map to ``out_shape``, the size the original
    block outputs, so an auxiliary that skips a downsampling block still downsamples."""
    if isinstance(block, BasicBlock):
        stride = max(1, shape[1] // out_shape[1]) if len(shape) == 3 else 1
        return BasicBlock(shape[0], block.conv1.out_channels, stride)
    new = copy.deepcopy(block)
    flat = any(isinstance(m, nn.Flatten) for m in new.modules())
    for parent in new.modules():
        for name, child in parent.named_children():
            if isinstance(child, nn.Conv2d):
                setattr(parent, name, nn.Conv2d(shape[0], child.out_channels, child.kernel_size, child.stride,
                                                child.padding, bias=child.bias is not None))
                break
            if isinstance(child, nn.Linear):
                fan_in = math.prod(shape) if flat else shape[-1]
                setattr(parent, name, nn.Linear(fan_in, child.out_features, bias=child.bias is not None))
                break
        else:
            continue
        break
    for m in new.modules():
        if hasattr(m, "reset_parameters") and m is not new:
            m.reset_parameters()
    return new


def pooled_classifier(shape: tuple[int, ...], num_classes: int) -> list[nn.Module]:
    """GAP (for maps) + Linear to classes: the end of LAM's and AugLocal's auxiliaries."""
    if len(shape) == 1:
        return [nn.Linear(shape[0], num_classes)]
    return [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(shape[0], num_classes)]


@torch.no_grad()
def output_shape(module: nn.Module, shape: tuple[int, ...], like: torch.Tensor) -> tuple[int, ...]:
    was_training = module.training
    module.eval()
    try:
        return tuple(module(torch.zeros(2, *shape, device=like.device, dtype=like.dtype)).shape[1:])
    finally:
        module.train(was_training)


# ---------------------------------------------------------------------------------- the base rule
@dataclass
class AuxHyperparameters(Hyperparameters):
    modules: int | None = None  # K gradient-isolated modules; None: one per block before the classifier

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.loss != "ce":
            raise ConfigError(f"'loss' must be 'ce' (the auxiliary losses are cross-entropies), got '{self.loss}'")
        if self.modules is not None and (isinstance(self.modules, bool) or not isinstance(self.modules, numbers.Integral)
                                         or self.modules < 1):
            raise ConfigError(f"'modules' must be a positive integer or null, got {self.modules!r}")


def interpolate(pair: Sequence[float], i: int, n: int) -> float:
    """``pair[0]`` at module 0 to ``pair[1]`` at module ``n - 1``, linearly (InfoPro's λ schedule)."""
    t = i / (n - 1) if n > 1 else 0.0
    return float(pair[0]) * (1 - t) + float(pair[1]) * t


def check_pair(rule: str, name: str, value) -> None:
    if (not isinstance(value, (list, tuple)) or len(value) != 2
            or any(isinstance(v, bool) or not isinstance(v, numbers.Real) or v < 0 for v in value)):
        raise ConfigError(f"{rule}: '{name}' must be two non-negative numbers [first module, last module], got {value!r}")


class AuxiliaryRule(LayerwiseRule):
    """K gradient-isolated modules, each trained by its own auxiliary network; the last by the
    model's head. Subclasses build ``self.aux`` (one :class:`Auxiliary` per module but the last)
    and may weigh the two losses per module (:meth:`loss_weights`)."""

    Hyperparameters = AuxHyperparameters

    def __init__(self, model, **hyperparameters):
        super().__init__(model, **hyperparameters)
        self.units = split_modules(model, self.hp.modules)
        self.shapes = block_shapes(model)  # output shape of every block
        index = {id(b): k for k, b in enumerate(model.blocks)}
        # Last block of each module: its output is what the module's auxiliary reads.
        self.last_block = [index[id(unit[-1])] for unit in self.units]

    def module_shape(self, j: int) -> tuple[int, ...]:
        return self.shapes[self.last_block[j]]

    def unit_modules(self, i: int) -> list[nn.Module]:
        return [self.aux[i]] if i < len(self.aux) else []

    def loss_weights(self, i: int) -> tuple[float, float]:
        """``(reconstruction, task)`` weights of module ``i``'s auxiliary loss."""
        return 0.0, 1.0

    def initial_carry(self, x: torch.Tensor):
        """What every module receives besides its input: the reconstruction target, if any
        auxiliary has a decoder."""
        return image_target(x) if any(a.decoder is not None for a in self.aux) else None

    def train_unit(self, i: int, h, carry, y):
        if i == 0:  # the first module (or pipeline stage) makes the carry from the input batch
            carry = self.initial_carry(h)
        return super().train_unit(i, h, carry, y)

    def aux_loss(self, i: int, aux: Auxiliary, h: torch.Tensor, image, y: torch.Tensor):
        """``λ1 BCE(decoder(h), image) + λ2 CE(classifier(h), y)`` and the class scores."""
        recon, task = self.loss_weights(i)
        scores = aux.classifier(h)
        loss = task * F.cross_entropy(scores, y)
        if aux.decoder is not None and recon > 0:
            loss = loss + recon * F.binary_cross_entropy(aux.decoder(h), image)
        return loss, scores

    def unit_loss(self, i: int, h, carry, y):
        if i == len(self.units) - 1:  # the model's own head
            return F.cross_entropy(h, y), carry, h
        loss, scores = self.aux_loss(i, self.aux[i], h, carry, y)
        return loss, carry, scores

    @torch.no_grad()
    def module_outputs(self, x: torch.Tensor) -> list[torch.Tensor]:
        """The output of every module for ``x`` (diagnostics: linear probes, CKA)."""
        outs = []
        for i in range(len(self.units)):
            x = self.forward_unit(i, x)
            outs.append(x)
        return outs
