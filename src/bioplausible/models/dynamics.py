"""State functions shared by networks that relax over time (EP's states, the dendritic
network of DEP): the state nonlinearity σ and the fold of a stacked ±β batch."""

from __future__ import annotations

import torch

from ..errors import ConfigError


def hard_sigmoid(t: torch.Tensor) -> torch.Tensor:
    return t.clamp(0.0, 1.0)


STATE_ACTIVATIONS = {"hardsigmoid": hard_sigmoid, "tanh": torch.tanh}


def state_activation(name: str, owner: str):
    try:
        return STATE_ACTIVATIONS[name]
    except KeyError:
        raise ConfigError(
            f"{owner}: unknown state activation '{name}'; available: {', '.join(STATE_ACTIVATIONS)}"
        ) from None


def fold_halves(rows: torch.Tensor) -> torch.Tensor:
    """``[2B, ...] -> [B, ...]``, adding the two halves: Σ_r a_r x_rᵀ over rows whose halves share
    x is (a⁺ + a⁻)ᵀ x, half the work of the product over 2B rows."""
    return rows.view(2, -1, *rows.shape[1:]).sum(0)
