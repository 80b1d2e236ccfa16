"""Multilayer perceptrons: a generic ``mlp`` and the DLL paper's two presets.

Also holds the small argument checks that every architecture module shares
(:func:`positive_int`, :func:`check_num_classes`, :func:`check_input_shape`).
"""

from __future__ import annotations

import math
import numbers
from typing import Sequence

from torch import nn

from ..errors import ConfigError, ShapeError
from . import register_model
from .base import Network, make_activation


def positive_int(value, what: str) -> int:
    """``value`` as an int, or a ConfigError naming ``what`` and the value."""
    # bool is an int subclass: reject it so that ``hidden=(True,)`` is not a width of 1.
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        raise ConfigError(f"{what} must be a positive integer, got {value!r}")
    return int(value)


def check_num_classes(num_classes) -> int:
    return positive_int(num_classes, "num_classes")


def check_input_shape(input_shape: Sequence[int], model: str) -> tuple[int, ...]:
    """The shape of one example as a tuple of positive ints, or a ShapeError."""
    try:
        shape = tuple(input_shape)
    except TypeError:
        raise ShapeError(f"{model}: input_shape must be a sequence of ints, got {input_shape!r}") from None
    if not shape or any(
        isinstance(s, bool) or not isinstance(s, numbers.Integral) or s < 1 for s in shape
    ):
        raise ShapeError(f"{model}: input_shape must be positive ints, got {input_shape!r}")
    return tuple(int(s) for s in shape)


def _widths(hidden) -> tuple[int, ...]:
    if isinstance(hidden, numbers.Integral) and not isinstance(hidden, bool):
        hidden = (hidden,)
    try:
        widths = tuple(hidden)
    except TypeError:
        raise ConfigError(f"mlp: hidden must be a sequence of widths, got {hidden!r}") from None
    return tuple(positive_int(h, f"mlp: hidden width {i}") for i, h in enumerate(widths))


@register_model("mlp")
def mlp(input_shape, num_classes, hidden=(256,), activation="relu", bias=True, batch_norm=False,
        dropout=0.0) -> Network:
    """A fully connected network on the flattened input.

    Blocks: ``[Flatten, Linear, act]``, then ``[Linear, act]`` per further hidden layer, then
    ``[Linear]`` (a linear output, so losses see logits). ``hidden=()`` gives a linear classifier.
    One block per weight layer, because layer-local rules (and DLL's per-layer errors) treat each
    weight layer as its own module.

    ``batch_norm`` puts a BatchNorm1d between each hidden Linear and its activation and
    ``dropout`` a Dropout after it: Nøkland & Eidnes (2019)'s MLP (Linear, BN, LeakyReLU,
    dropout 0.1), the setting of SLL's Table 1. Both are off by default.
    """
    shape = check_input_shape(input_shape, "mlp")
    num_classes = check_num_classes(num_classes)
    widths = _widths(hidden)
    make_activation(activation)  # fail early on an unknown name
    if isinstance(dropout, bool) or not isinstance(dropout, numbers.Real) or not 0 <= dropout < 1:
        raise ConfigError(f"mlp: dropout must be a probability in [0, 1), got {dropout!r}")

    blocks: list[nn.Module] = []
    fan_in = math.prod(shape)
    for i, width in enumerate(widths):
        layers = [nn.Flatten()] if i == 0 else []
        layers.append(nn.Linear(fan_in, width, bias=bias))
        if batch_norm:
            layers.append(nn.BatchNorm1d(width))
        layers.append(make_activation(activation))
        if dropout:
            layers.append(nn.Dropout(dropout))
        blocks.append(nn.Sequential(*layers))
        fan_in = width
    out = [nn.Flatten()] if not widths else []
    blocks.append(nn.Sequential(*out, nn.Linear(fan_in, num_classes, bias=bias)))
    return Network(blocks, shape, num_classes)


@register_model("mlp_dll_mnist")
def mlp_dll_mnist(input_shape, num_classes, activation="tanh", bias=True) -> Network:
    """DLL-MLP for MNIST / FashionMNIST: 784-1024-512-256-10, tanh hidden layers.

    Source: Dendritic Localized Learning (DLL), Appendix D.2.1 ("5-layer DLL-MLPs with layer sizes
    of 784, 1024, 512, 256, and 10"; "the hyperbolic tangent activation function was employed in
    all layers except the output layer").
    """
    return mlp(input_shape, num_classes, hidden=(1024, 512, 256), activation=activation, bias=bias)


@register_model("mlp_dll_cifar")
def mlp_dll_cifar(input_shape, num_classes, activation="tanh", bias=True) -> Network:
    """DLL-MLP for SVHN / CIFAR-10: 3072-4096-2048-1024-256-10, tanh hidden layers.

    Source: DLL, Appendix D.2.1 ("a deeper 6-layer DLL-MLPs, with layer sizes of 3072, 4096, 2048,
    1024, 256, and 10 neurons"). Meant for 3x32x32 inputs; any input shape is flattened.
    """
    return mlp(
        input_shape, num_classes, hidden=(4096, 2048, 1024, 256), activation=activation, bias=bias
    )
