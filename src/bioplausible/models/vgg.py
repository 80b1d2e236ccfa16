"""VGG-11 for CIFAR-size images (Simonyan & Zisserman 2015, configuration "A").

Used by SLL (section 5.2, VGG-11 on F-MNIST / CIFAR / Tiny-ImageNet), which does not spell out its
CIFAR adaptation. This one is the common one: the 8 conv layers of configuration A with BatchNorm,
and global average pooling plus a single Linear layer in place of the three 4096-wide fully
connected layers (which only make sense for 224x224 ImageNet inputs)."""

from __future__ import annotations

import numbers

from torch import nn

from ..errors import ConfigError
from . import register_model
from .base import Network
from .cnn import image_shape
from .mlp import check_num_classes

# Configuration "A" of Simonyan & Zisserman (2015), Table 1: ints are 3x3 conv widths, "M" a 2x2
# max pool.
VGG11_CONFIG = (64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M")


@register_model("vgg11")
def vgg11(input_shape, num_classes, batch_norm=True, width=1.0) -> Network:
    """VGG-11 with 3x3 convs (padding 1), optional BatchNorm, ReLU; head = GAP + Linear.

    Blocks: one per conv (conv [+ BN] + ReLU [+ the max pool that follows it]), then
    ``[AdaptiveAvgPool2d(1), Flatten, Linear]``. ``width`` scales every channel count (0.125 gives a
    tiny net for tests). A max pool is skipped once the feature map is 1x1 (e.g. the fifth pool on
    28x28 inputs), and the adaptive pool makes the head independent of the final size.
    """
    shape = image_shape(input_shape, "vgg11")
    num_classes = check_num_classes(num_classes)
    if isinstance(width, bool) or not isinstance(width, numbers.Real) or not width > 0:
        raise ConfigError(f"vgg11: width must be a positive number, got {width!r}")

    c, h, w = shape
    blocks: list[nn.Module] = []
    layers: list[nn.Module] = []
    for item in VGG11_CONFIG:
        if item == "M":
            if h > 1 or w > 1:
                kh, kw = min(2, h), min(2, w)
                layers.append(nn.MaxPool2d((kh, kw)))
                h, w = h // kh, w // kw
            continue
        if layers:
            blocks.append(nn.Sequential(*layers))
        out = max(1, round(item * width))
        # BN follows the conv, so a conv bias would be redundant with BN's shift.
        layers = [nn.Conv2d(c, out, 3, padding=1, bias=not batch_norm)]
        if batch_norm:
            layers.append(nn.BatchNorm2d(out))
        layers.append(nn.ReLU())
        c = out
    blocks.append(nn.Sequential(*layers))
    blocks.append(nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(c, num_classes)))

    model = Network(blocks, shape, num_classes)
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
    return model
