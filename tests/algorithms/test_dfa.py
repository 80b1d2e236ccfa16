"""Direct feedback alignment. Oracle (closed form): the error reaching every layer's input is
exactly ``B_l e`` with ``e = ∂L/∂output``, of the input's shape."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from bioplausible.algorithms import create_algorithm
from helpers import batch, small_cnn, small_mlp


@pytest.mark.parametrize("build", [small_mlp, small_cnn], ids=["mlp", "cnn"])
def test_every_hidden_layer_receives_B_times_output_error(build):
    model = build()
    dfa = create_algorithm("dfa", model)
    inputs = {}

    def keep_input(layer, args):
        if args[0].requires_grad:
            args[0].retain_grad()
            inputs[layer] = args[0]

    hooks = [layer.register_forward_pre_hook(keep_input) for layer in dfa.layers]
    x, y = batch(model)
    output = model(x)
    e = torch.autograd.grad(F.cross_entropy(output, y), output)[0]
    dfa.compute_updates(x, y)
    for hook in hooks:
        hook.remove()
    assert len(inputs) == len(dfa.layers) - 1  # all but the first layer, whose input is data
    for layer, h in inputs.items():
        assert layer.feedback.shape == (model.num_classes, h[0].numel())
        assert h.grad.shape == h.shape
        torch.testing.assert_close(h.grad, (e @ layer.feedback).view(h.shape), rtol=0, atol=1e-14)


def test_output_layer_update_equals_bp():
    model = small_mlp()
    bp_model = small_mlp()
    dfa = create_algorithm("dfa", model)
    bp = create_algorithm("bp", bp_model)
    x, y = batch(model)
    dfa.compute_updates(x, y)
    bp.compute_updates(x, y)
    torch.testing.assert_close(model.blocks[-1][0].weight.grad, bp_model.blocks[-1][0].weight.grad)
