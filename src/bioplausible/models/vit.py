"""A small Vision Transformer (Dosovitskiy et al. 2021, "An Image is Worth 16x16 Words").

Pre-norm blocks as in the ViT paper (eqs. 2-3): ``x + MSA(LN(x))`` then ``x + MLP(LN(x))``.
Attention is written with ``nn.Linear`` for the qkv and output projections (and
``F.scaled_dot_product_attention`` for the softmax part) rather than ``nn.MultiheadAttention``,
whose fused in-projection is a bare parameter: rules that rewire ``nn.Linear`` modules (FA, DFA,
KP, ...) then reach every weight matrix. SLL (section 5) trains ViTs block by block, which is why
each transformer block is one block of the network.
"""

from __future__ import annotations

import numbers

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ConfigError
from . import register_model
from .base import Network
from .cnn import image_shape
from .mlp import check_num_classes, positive_int

POOLS = ("cls", "mean")


class PatchEmbedding(nn.Module):
    """Non-overlapping patches -> linear embedding (a conv with kernel = stride = patch) ->
    prepend the class token -> add a learned position embedding. Output ``[B, 1 + N, dim]``."""

    # Its class token does not depend on the input, so a local loss read from it (SLL's "cls"
    # pooling) would train nothing: layer-wise rules put it in the first transformer block's unit.
    joins_next_unit = True

    def __init__(self, in_channels: int, image_size: tuple[int, int], patch_size: int, dim: int):
        super().__init__()
        self.proj = nn.Conv2d(in_channels, dim, patch_size, stride=patch_size)
        self.flatten = nn.Flatten(2)  # [B, dim, H/p, W/p] -> [B, dim, N]
        self.num_patches = (image_size[0] // patch_size) * (image_size[1] // patch_size)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, 1 + self.num_patches, dim))
        nn.init.trunc_normal_(self.cls_token, std=0.02)
        nn.init.trunc_normal_(self.pos_embed, std=0.02)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens = self.flatten(self.proj(x)).transpose(1, 2)
        cls = self.cls_token.expand(tokens.shape[0], -1, -1)
        return torch.cat([cls, tokens], dim=1) + self.pos_embed


class Attention(nn.Module):
    """Multi-head self-attention from two ``nn.Linear`` layers (``qkv`` and ``proj``)."""

    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, d = x.shape
        q, k, v = self.qkv(x).reshape(b, n, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        out = F.scaled_dot_product_attention(q, k, v)  # [B, heads, N, d/heads]
        return self.proj(out.transpose(1, 2).reshape(b, n, d))


class TransformerBlock(nn.Module):
    """Pre-norm encoder block: ``x + attn(norm1(x))``, then ``x + mlp(norm2(x))``."""

    def __init__(self, dim: int, heads: int, mlp_hidden: int):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = Attention(dim, heads)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, mlp_hidden), nn.GELU(), nn.Linear(mlp_hidden, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class ViTHead(nn.Module):
    """Final LayerNorm, then the class token (``"cls"``) or the mean of the patch tokens
    (``"mean"``, class token excluded), then a Linear classifier."""

    def __init__(self, dim: int, num_classes: int, pool: str):
        super().__init__()
        self.pool = pool
        self.norm = nn.LayerNorm(dim)
        self.fc = nn.Linear(dim, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.norm(x)
        x = x[:, 0] if self.pool == "cls" else x[:, 1:].mean(dim=1)
        return self.fc(x)


@register_model("vit_tiny")
def vit_tiny(
    input_shape, num_classes, patch_size=4, dim=64, depth=4, heads=4, mlp_ratio=2.0, pool="cls"
) -> Network:
    """A small ViT for 28x28 / 32x32 images (Dosovitskiy et al. 2021, section 3.1).

    Blocks: :class:`PatchEmbedding`, ``depth`` x :class:`TransformerBlock`, :class:`ViTHead`.
    ``patch_size`` must divide the image height and width; ``heads`` must divide ``dim``.
    """
    c, h, w = image_shape(input_shape, "vit_tiny")
    num_classes = check_num_classes(num_classes)
    patch_size = positive_int(patch_size, "vit_tiny: patch_size")
    dim = positive_int(dim, "vit_tiny: dim")
    depth = positive_int(depth, "vit_tiny: depth")
    heads = positive_int(heads, "vit_tiny: heads")
    if h % patch_size or w % patch_size:
        raise ConfigError(
            f"vit_tiny: patch_size {patch_size} must divide the image size {h}x{w} "
            f"(input_shape {(c, h, w)})"
        )
    if dim % heads:
        raise ConfigError(f"vit_tiny: heads {heads} must divide dim {dim}")
    if isinstance(mlp_ratio, bool) or not isinstance(mlp_ratio, numbers.Real) or not mlp_ratio > 0:
        raise ConfigError(f"vit_tiny: mlp_ratio must be a positive number, got {mlp_ratio!r}")
    if pool not in POOLS:
        raise ConfigError(f"vit_tiny: unknown pool {pool!r}; options: {', '.join(POOLS)}")

    mlp_hidden = max(1, round(dim * mlp_ratio))
    blocks: list[nn.Module] = [PatchEmbedding(c, (h, w), patch_size, dim)]
    blocks += [TransformerBlock(dim, heads, mlp_hidden) for _ in range(depth)]
    blocks.append(ViTHead(dim, num_classes, pool))

    model = Network(blocks, (c, h, w), num_classes)
    # timm's ViT initialisation: truncated-normal linear weights, zero biases.
    for m in model.modules():
        if isinstance(m, nn.Linear):
            nn.init.trunc_normal_(m.weight, std=0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
    return model
