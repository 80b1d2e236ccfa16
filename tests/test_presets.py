"""Every shipped preset in configs/ is a valid configuration (names, options, values)."""

from __future__ import annotations

from pathlib import Path

import pytest

from bioplausible import create_algorithm, create_model, load_config

PRESETS = sorted((Path(__file__).resolve().parent.parent / "configs").rglob("*.yaml"))


def test_presets_exist():
    assert PRESETS


@pytest.mark.parametrize("path", PRESETS, ids=lambda p: str(p.relative_to(p.parents[1])))
def test_preset_is_valid(path):
    config = load_config(path)
    shapes = {"mnist": (1, 28, 28), "mnist_raw": (1, 28, 28), "fashion_mnist": (1, 28, 28), "kmnist": (1, 28, 28),
              "svhn": (3, 32, 32), "cifar10": (3, 32, 32), "digits": (1, 8, 8),
              "tinyshakespeare": (64,), "exchange_rate": (32, 8)}
    model = create_model(config.model, shapes[config.dataset], 10, **config.model_args)
    create_algorithm(config.algo, model, **config.algo_args)  # options are checked here
