"""CIFAR ResNets (He et al. 2016, "Deep Residual Learning for Image Recognition", section 4.2).

Three stages of ``n`` BasicBlocks with ``width``, ``2*width`` and ``4*width`` channels (16/32/64 in
the paper) on feature maps of 32, 16 and 8 pixels; depth ``6n + 2``. ResNet-32 (n=5) and
ResNet-110 (n=18) are the backbones of the local-learning papers (DGL, InfoPro, MLAAN: "ResNet-32
K=16" = stem + 15 BasicBlocks, "ResNet-110 K=55" = stem + 54 BasicBlocks).

Downsampling shortcuts are 1x1 conv + BN projections (the paper's option B) rather than option A's
zero-padded identity: the parameter count changes by 0.6% (0.464M -> 0.467M for ResNet-32), and a
projection is an ordinary module that learning rules can treat like any other conv.
"""

from __future__ import annotations

import numbers

import torch
from torch import nn

from ..errors import ConfigError
from . import register_model
from .base import Network
from .cnn import image_shape
from .mlp import check_num_classes, positive_int


def conv3x3(in_channels: int, out_channels: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False)


class BasicBlock(nn.Module):
    """``relu(bn2(conv2(relu(bn1(conv1(x))))) + shortcut(x))`` (He et al. 2016, Figure 2 left)."""

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1):
        super().__init__()
        self.conv1 = conv3x3(in_channels, out_channels, stride)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.relu1 = nn.ReLU()
        self.conv2 = conv3x3(out_channels, out_channels)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.relu2 = nn.ReLU()
        if stride != 1 or in_channels != out_channels:
            self.shortcut: nn.Module = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False),
                nn.BatchNorm2d(out_channels),
            )
        else:
            self.shortcut = nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu1(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu2(out + self.shortcut(x))


def _blocks_per_stage(depth) -> int:
    if isinstance(depth, bool) or not isinstance(depth, numbers.Integral) or depth < 8 or (depth - 2) % 6:
        raise ConfigError(
            f"resnet: depth must be 6n+2 with n >= 1 (8, 14, 20, 32, 44, 56, 110, ...), got {depth!r}"
        )
    return (int(depth) - 2) // 6


@register_model("resnet")
def resnet(input_shape, num_classes, depth=32, width=16) -> Network:
    """CIFAR ResNet of ``depth = 6n + 2`` layers (He et al. 2016, section 4.2).

    Blocks: ``[conv3x3, BN, ReLU]`` (stem), then each :class:`BasicBlock` (3n of them; the first of
    stages 2 and 3 has stride 2), then ``[AdaptiveAvgPool2d(1), Flatten, Linear]``.
    """
    shape = image_shape(input_shape, "resnet")
    num_classes = check_num_classes(num_classes)
    n = _blocks_per_stage(depth)
    width = positive_int(width, "resnet: width")

    blocks: list[nn.Module] = [
        nn.Sequential(conv3x3(shape[0], width), nn.BatchNorm2d(width), nn.ReLU())
    ]
    channels = width
    for stage in range(3):
        out = width * 2**stage
        for i in range(n):
            stride = 2 if stage > 0 and i == 0 else 1
            blocks.append(BasicBlock(channels, out, stride))
            channels = out
    blocks.append(nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(channels, num_classes)))

    model = Network(blocks, shape, num_classes)
    # He initialisation (He et al. 2015), as the paper uses.
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
    return model


@register_model("resnet32")
def resnet32(input_shape, num_classes, width=16) -> Network:
    """ResNet-32 (He et al. 2016, Table 6: n=5, 0.46M parameters): stem + 15 BasicBlocks + head."""
    return resnet(input_shape, num_classes, depth=32, width=width)


@register_model("resnet110")
def resnet110(input_shape, num_classes, width=16) -> Network:
    """ResNet-110 (He et al. 2016, Table 6: n=18, 1.7M parameters): stem + 54 BasicBlocks + head."""
    return resnet(input_shape, num_classes, depth=110, width=width)
