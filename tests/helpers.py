"""Small builders shared by the tests."""

from __future__ import annotations

import torch

from bioplausible.models import create_model


def small_mlp(seed: int = 0, dtype=torch.float64, hidden=(12, 9), activation="tanh"):
    torch.manual_seed(seed)
    return create_model("mlp", input_shape=(1, 4, 4), num_classes=5, hidden=list(hidden), activation=activation).to(dtype)


def small_cnn(seed: int = 0, dtype=torch.float64):
    torch.manual_seed(seed)
    return create_model("cnn", input_shape=(2, 8, 8), num_classes=5, channels=[4, 6], hidden=10, activation="tanh").to(dtype)


def batch(model, n: int = 7, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    dtype = next(model.parameters()).dtype
    x = torch.randn(n, *model.input_shape, generator=g, dtype=dtype)
    y = torch.randint(0, model.num_classes, (n,), generator=g)
    return x, y


def angle_degrees(a: torch.Tensor, b: torch.Tensor) -> float:
    cos = torch.nn.functional.cosine_similarity(a.flatten().double(), b.flatten().double(), dim=0)
    return torch.rad2deg(torch.arccos(cos.clamp(-1, 1))).item()
