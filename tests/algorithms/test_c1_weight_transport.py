"""The C1 probe (ALGORITHMS.md): after the forward pass, perturb the forward weights of layer
l+1; the error delivered to layer l must not change for rules that claim no weight transport,
and must change for BP."""

from __future__ import annotations

import pytest
import torch

from bioplausible.algorithms import ALGORITHMS, create_algorithm
from helpers import batch, small_mlp

WEIGHT_TRANSPORT_FAMILY = ["bp", "fa", "dfa", "kp", "wm", "dll", "dll_fa"]


def error_at_first_hidden_layer(name: str, perturb: bool) -> torch.Tensor:
    model = small_mlp(seed=3)
    rule = create_algorithm(name, model)
    seen = {}

    def keep(_, __, output):
        output.retain_grad()
        seen["h"] = output

    def perturb_layer_above(*_):
        if perturb:  # .data: change the weight without autograd noticing, after the forward
            model.blocks[1][0].weight.data.add_(torch.randn_like(model.blocks[1][0].weight))

    model.blocks[0].register_forward_hook(keep)
    model.blocks[-1].register_forward_hook(perturb_layer_above)
    rule.compute_updates(*batch(model))
    return seen["h"].grad


@pytest.mark.parametrize("name", WEIGHT_TRANSPORT_FAMILY)
def test_c1_probe_matches_declared_flag(name):
    unchanged = torch.equal(error_at_first_hidden_layer(name, False), error_at_first_hidden_layer(name, True))
    assert unchanged == ALGORITHMS.get(name).flags.no_weight_transport
