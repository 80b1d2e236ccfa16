"""Batched augmentation on ``[B, C, H, W]`` tensors: one indexing op per batch, no PIL."""

from __future__ import annotations

import torch
from torch import Tensor

from ..errors import ConfigError, ShapeError


class BatchAugment:
    """Random crop after zero padding (per-example offsets) and random horizontal flip (p=0.5).

    All randomness comes from the ``generator`` passed in, so a seeded generator reproduces
    the same augmentation; random numbers are drawn on the generator's device, then moved.
    """

    def __init__(self, crop_padding: int = 0, flip: bool = False):
        if isinstance(crop_padding, bool) or not isinstance(crop_padding, int) or crop_padding < 0:
            raise ConfigError(f"crop_padding must be an integer >= 0, got {crop_padding!r}")
        self.crop_padding = crop_padding
        self.flip = bool(flip)

    @property
    def active(self) -> bool:
        return self.crop_padding > 0 or self.flip

    def __repr__(self) -> str:
        return f"BatchAugment(crop_padding={self.crop_padding}, flip={self.flip})"

    def __call__(self, x: Tensor, generator: torch.Generator) -> Tensor:
        if x.ndim != 4:
            raise ShapeError(f"BatchAugment expects [B, C, H, W] images, got shape {tuple(x.shape)}")
        if not self.active or len(x) == 0:
            return x
        b, c, h, w = x.shape
        p, gdev = self.crop_padding, generator.device
        zeros = torch.zeros(b, dtype=torch.long, device=x.device)
        if p > 0:
            dy = torch.randint(0, 2 * p + 1, (b,), generator=generator, device=gdev).to(x.device)
            dx = torch.randint(0, 2 * p + 1, (b,), generator=generator, device=gdev).to(x.device)
            x = torch.nn.functional.pad(x, (p, p, p, p))
        else:
            dy = dx = zeros
        cols = torch.arange(w, device=x.device).expand(b, w)
        if self.flip:
            flipped = (torch.rand(b, generator=generator, device=gdev) < 0.5).to(x.device)
            cols = torch.where(flipped[:, None], cols.flip(1), cols)
        # Crop and flip as one gather over flattened pixels: output (i, j) reads padded
        # (dy + i, dx + cols[j]). Measured ~3.5x faster on CPU than advanced
        # indexing followed by a where() over a flipped copy.
        width = w + 2 * p
        rows = dy[:, None] + torch.arange(h, device=x.device)  # [B, H]
        flat = rows[:, :, None] * width + (dx[:, None] + cols)[:, None, :]  # [B, H, W]
        flat = flat.reshape(b, 1, h * w).expand(b, c, h * w)
        return x.reshape(b, c, -1).gather(2, flat).reshape(b, c, h, w)
