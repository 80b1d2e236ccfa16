"""Small convolutional networks: the four DLL-CNNs and a generic ``cnn``.

Every block is one weight layer: a convolution with its activation and the pooling that follows
it, or one fully connected layer. The flattened width before the first fully connected layer is
computed from ``input_shape`` by arithmetic, so a too-small input fails at construction with a
ShapeError that says which layer runs out of pixels.
"""

from __future__ import annotations

import numbers
from dataclasses import dataclass
from typing import Literal, Sequence

from torch import nn

from ..errors import ConfigError, ShapeError
from . import register_model
from .base import Network, make_activation
from .mlp import check_input_shape, check_num_classes, positive_int


def image_shape(input_shape: Sequence[int], model: str) -> tuple[int, int, int]:
    """``(C, H, W)`` from ``input_shape``, or a ShapeError for anything that is not an image."""
    shape = check_input_shape(input_shape, model)
    if len(shape) != 3:
        raise ShapeError(
            f"{model} expects images of shape (C, H, W), got input_shape {tuple(shape)}"
        )
    return shape  # type: ignore[return-value]


def conv_out(size: int, kernel: int, stride: int = 1, padding: int = 0) -> int:
    """Output length of a convolution or pooling along one spatial axis (PyTorch's floor rule)."""
    return (size + 2 * padding - kernel) // stride + 1


@dataclass(frozen=True)
class ConvSpec:
    """One conv block: conv(out_channels, kernel, padding) -> activation -> optional 2x2 pool."""

    out_channels: int
    kernel: int
    padding: int
    pool: Literal["max", "avg", None] = None


def conv_blocks(
    specs: Sequence[ConvSpec],
    input_shape: tuple[int, int, int],
    activation: str,
    model: str,
    shrink_pool: bool = False,
) -> tuple[list[nn.Module], tuple[int, int, int]]:
    """Build one ``nn.Sequential`` per spec and return them with the output shape ``(C, H, W)``.

    With ``shrink_pool`` a 2x2 pool is narrowed along an axis of length 1 (and dropped when both
    are 1) instead of failing, so the generic ``cnn`` runs on inputs as small as 8x8. The DLL
    presets keep the paper's exact pooling and raise instead.
    """
    c, h, w = input_shape
    blocks: list[nn.Module] = []
    for i, spec in enumerate(specs):
        conv = nn.Conv2d(c, spec.out_channels, spec.kernel, padding=spec.padding)
        c = spec.out_channels
        h, w = conv_out(h, spec.kernel, 1, spec.padding), conv_out(w, spec.kernel, 1, spec.padding)
        if h < 1 or w < 1:
            raise ShapeError(
                f"{model}: input_shape {input_shape} is too small: conv layer {i} "
                f"(kernel {spec.kernel}, padding {spec.padding}) would output {h}x{w}"
            )
        layers: list[nn.Module] = [conv, make_activation(activation)]
        if spec.pool is not None:
            pool_cls = nn.MaxPool2d if spec.pool == "max" else nn.AvgPool2d
            kh, kw = 2, 2
            if shrink_pool:
                kh, kw = min(2, h), min(2, w)
            if (kh, kw) != (1, 1):
                layers.append(pool_cls((kh, kw)))
                h, w = conv_out(h, kh, kh), conv_out(w, kw, kw)
            if h < 1 or w < 1:
                raise ShapeError(
                    f"{model}: input_shape {input_shape} is too small: the {spec.pool}-pool after "
                    f"conv layer {i} would output {h}x{w}"
                )
        blocks.append(nn.Sequential(*layers))
    return blocks, (c, h, w)


def _dll_cnn(
    name: str,
    input_shape,
    num_classes,
    specs: Sequence[ConvSpec],
    projection: int,
    activation: str,
) -> Network:
    shape = image_shape(input_shape, name)
    num_classes = check_num_classes(num_classes)
    blocks, (c, h, w) = conv_blocks(specs, shape, activation, name)
    # The "projection layer" carries the activation too ("tanh in all layers except the output").
    blocks.append(nn.Sequential(nn.Flatten(), nn.Linear(c * h * w, projection), make_activation(activation)))
    blocks.append(nn.Sequential(nn.Linear(projection, num_classes)))
    return Network(blocks, shape, num_classes)


@register_model("dll_cnn_mnist")
def dll_cnn_mnist(input_shape, num_classes, activation="tanh") -> Network:
    """DLL-CNN for MNIST: conv32 k5 -> maxpool -> conv64 k3 -> maxpool -> conv16 k3 -> fc200 -> fc.

    Source: DLL, Appendix D.2.2 (no padding anywhere; tanh in all layers but the output, from the
    "Training Hyper-parameters" paragraph). Pools are 2x2 with stride 2, so a 28x28 input gives
    16x3x3 = 144 features before the projection layer.
    """
    specs = [ConvSpec(32, 5, 0, "max"), ConvSpec(64, 3, 0, "max"), ConvSpec(16, 3, 0)]
    return _dll_cnn("dll_cnn_mnist", input_shape, num_classes, specs, 200, activation)


@register_model("dll_cnn_fmnist")
def dll_cnn_fmnist(input_shape, num_classes, activation="tanh") -> Network:
    """DLL-CNN for FashionMNIST: conv64 k5 -> maxpool -> conv128 k3 -> avgpool -> conv64 k3 -> fc128 -> fc.

    Source: DLL, Appendix D.2.2 (no padding; 2x2 pools; 64x3x3 = 576 features on 28x28 inputs).
    """
    specs = [ConvSpec(64, 5, 0, "max"), ConvSpec(128, 3, 0, "avg"), ConvSpec(64, 3, 0)]
    return _dll_cnn("dll_cnn_fmnist", input_shape, num_classes, specs, 128, activation)


@register_model("dll_cnn_svhn")
def dll_cnn_svhn(input_shape, num_classes, activation="tanh") -> Network:
    """DLL-CNN for SVHN: conv64 k3 p1 -> maxpool -> conv128 k3 p1 -> maxpool -> conv64 k3 p1 -> fc256 -> fc.

    Source: DLL, Appendix D.2.2 (64x8x8 = 4096 features on 32x32 inputs).
    """
    specs = [ConvSpec(64, 3, 1, "max"), ConvSpec(128, 3, 1, "max"), ConvSpec(64, 3, 1)]
    return _dll_cnn("dll_cnn_svhn", input_shape, num_classes, specs, 256, activation)


@register_model("dll_cnn_cifar10")
def dll_cnn_cifar10(input_shape, num_classes, activation="tanh") -> Network:
    """DLL-CNN for CIFAR-10: as the SVHN net plus an average pool after the third conv.

    Source: DLL, Appendix D.2.2 (conv64 k3 p1, maxpool, conv128 k3 p1, maxpool, conv64 k3 p1,
    avgpool, fc256, fc; 64x4x4 = 1024 features on 32x32 inputs).
    """
    specs = [ConvSpec(64, 3, 1, "max"), ConvSpec(128, 3, 1, "max"), ConvSpec(64, 3, 1, "avg")]
    return _dll_cnn("dll_cnn_cifar10", input_shape, num_classes, specs, 256, activation)


@register_model("cnn")
def cnn(input_shape, num_classes, channels=(32, 64), hidden=128, activation="relu") -> Network:
    """A generic small CNN: per entry of ``channels`` a block conv3x3 p1 -> act -> maxpool 2x2,
    then ``[Flatten, Linear(hidden), act]`` and ``[Linear(num_classes)]``.

    Padding 1 keeps the size through each conv, so only the pools shrink it; a pool is narrowed
    (or dropped) along an axis that is already 1 pixel, so the net runs on 8x8 digits as well as
    on 28x28 and 32x32 images.
    """
    shape = image_shape(input_shape, "cnn")
    num_classes = check_num_classes(num_classes)
    if isinstance(channels, numbers.Integral) and not isinstance(channels, bool):
        channels = (channels,)
    try:
        channels = tuple(channels)
    except TypeError:
        raise ConfigError(f"cnn: channels must be a sequence of ints, got {channels!r}") from None
    widths = [positive_int(ch, f"cnn: channels[{i}]") for i, ch in enumerate(channels)]
    hidden = positive_int(hidden, "cnn: hidden")
    specs = [ConvSpec(ch, 3, 1, "max") for ch in widths]
    blocks, (c, h, w) = conv_blocks(specs, shape, activation, "cnn", shrink_pool=True)
    blocks.append(nn.Sequential(nn.Flatten(), nn.Linear(c * h * w, hidden), make_activation(activation)))
    blocks.append(nn.Sequential(nn.Linear(hidden, num_classes)))
    return Network(blocks, shape, num_classes)
