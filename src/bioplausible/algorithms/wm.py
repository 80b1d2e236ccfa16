"""Weight mirroring (Akrout et al. 2019, "Deep learning without weight transport").

The task update is FA's (errors through ``B``). Besides it, each step runs a *mirror step*
that makes ``B`` learn ``W`` from activity alone: feed zero-mean noise ``ξ`` (variance σ²) into
layer ``l``, observe ``y = W_l ξ`` at its output, and update

    ΔB_l = η_B ξ yᵀ / σ² - λ B_l            (stored as B_lᵀ: η_B y ξᵀ / σ² - λ B_l)

whose expectation is ``η_B W_lᵀ - λ B_l``: ``B`` converges to ``(η_B/λ) W_lᵀ``. For a
convolution the noise is a kernel-sized patch, which makes the conv a matrix product over
the unfolded patch.

``B`` is a parameter with its own plain-SGD optimizer (learning rate ``mirror_lr``), so the
mirror step is an ordinary optimizer step whatever optimizer trains ``W``. The authors' code
rebinds a local variable in its normalisation, which therefore has no effect; nothing of it
is copied here (ALGORITHMS.md).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from . import register_algorithm
from ..errors import require_non_negative, require_positive
from .base import Hyperparameters, LearningRule, Plausibility, StepResult
from .feedback import random_like_weight, rewire, without


@dataclass
class WMHyperparameters(Hyperparameters):
    mirror_lr: float = 0.05  # η_B
    mirror_decay: float = 0.05  # λ, per mirror step
    noise_std: float = 1.0  # σ
    mirror_batch: int = 64  # noise samples per mirror step

    def __post_init__(self) -> None:
        super().__post_init__()
        require_positive("wm", mirror_lr=self.mirror_lr, noise_std=self.noise_std, mirror_batch=self.mirror_batch)
        require_non_negative("wm", mirror_decay=self.mirror_decay)


@register_algorithm("wm")
class WeightMirror(LearningRule):
    """Weight mirroring: FA whose feedback B learns W from noise injected into each layer."""

    name = "wm"
    flags = Plausibility(no_weight_transport=True, local_errors=False, no_separate_phases=False)
    # B's update is written by the rule (noise differs per rank), W's comes from autograd.
    update_kind = "manual"
    Hyperparameters = WMHyperparameters

    def __init__(self, model, **hyperparameters):
        super().__init__(model, **hyperparameters)
        self.layers = rewire(model, random_like_weight, plastic=True)

    def param_groups(self) -> list[dict]:
        return without(super().param_groups(), [layer.feedback for layer in self.layers])

    def configure_optimizers(self, make_optimizer):
        # SGD's coupled decay η_B·(λ/η_B)·B is exactly the spec's -λB.
        mirror = torch.optim.SGD(
            [layer.feedback for layer in self.layers],
            lr=self.hp.mirror_lr,
            weight_decay=self.hp.mirror_decay / self.hp.mirror_lr,
            fused=all(layer.feedback.device.type in ("cpu", "cuda") for layer in self.layers),
        )
        self.optimizers = [make_optimizer(self.param_groups()), mirror]
        return self.optimizers

    def compute_updates(self, x, y) -> StepResult:
        result = self.backward_loss(self.model(x), y)  # task update through B (FA)
        self.mirror()
        return result

    @torch.no_grad()
    def mirror(self) -> None:
        """Write B.grad = -ΔB for every layer (ΔB without the decay, which SGD adds)."""
        for layer in self.layers:
            layer.feedback.grad = self.mirror_direction(layer).neg_()

    def mirror_direction(self, layer: nn.Module) -> torch.Tensor:
        """``y ξᵀ / (n σ²)`` in ``W``'s shape: an unbiased estimate of ``W``."""
        n, sigma = self.hp.mirror_batch, self.hp.noise_std
        w = layer.weight
        if isinstance(layer, nn.Linear):
            xi = torch.empty(n, w.shape[1], device=w.device, dtype=w.dtype).normal_(0, sigma)
            y = xi @ w.T
            return (y.T @ xi).div_(n * sigma**2)
        # Conv2d: a kernel-sized noise patch gives a 1x1 output per filter.
        kh = layer.dilation[0] * (w.shape[2] - 1) + 1
        kw = layer.dilation[1] * (w.shape[3] - 1) + 1
        xi = torch.empty(n, layer.in_channels, kh, kw, device=w.device, dtype=w.dtype).normal_(0, sigma)
        y = F.conv2d(xi, w, None, 1, 0, layer.dilation, layer.groups)
        grad = torch.ops.aten.convolution_backward(
            y, xi, w, None, [1, 1], [0, 0], list(layer.dilation), False, [0, 0], layer.groups,
            [False, True, False],
        )[1]
        return grad.div_(n * sigma**2)
