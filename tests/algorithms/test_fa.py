"""Feedback alignment. Oracle (equivalence): with B = W, FA's updates equal BP's exactly."""

from __future__ import annotations

import copy

import pytest
import torch

from bioplausible.algorithms import create_algorithm
from bioplausible.algorithms.feedback import FeedbackConv2d, FeedbackLinear
from helpers import batch, small_cnn, small_mlp


@pytest.mark.parametrize("build", [small_mlp, small_cnn], ids=["linear", "conv2d"])
@pytest.mark.parametrize("loss", ["ce", "mse"])
def test_fa_with_transposed_forward_weights_is_bp(build, loss):
    reference = build()
    bp = create_algorithm("bp", copy.deepcopy(reference), loss=loss)
    fa = create_algorithm("fa", copy.deepcopy(reference), loss=loss)
    for layer in fa.layers:
        layer.feedback.copy_(layer.weight)
    x, y = batch(reference)
    bp.compute_updates(x, y)
    fa.compute_updates(x, y)
    for (name, p_bp), p_fa in zip(bp.model.named_parameters(), fa.model.parameters()):
        torch.testing.assert_close(p_fa.grad, p_bp.grad, rtol=0, atol=1e-13, msg=name)


def test_fa_random_feedback_differs_from_bp_below_the_top():
    reference = small_mlp()
    bp = create_algorithm("bp", copy.deepcopy(reference))
    fa = create_algorithm("fa", copy.deepcopy(reference))
    x, y = batch(reference)
    bp.compute_updates(x, y)
    fa.compute_updates(x, y)
    bp_grads = [p.grad for p in bp.model.parameters()]
    fa_grads = [p.grad for p in fa.model.parameters()]
    torch.testing.assert_close(fa_grads[-1], bp_grads[-1])  # output layer: same local rule
    assert not torch.allclose(fa_grads[0], bp_grads[0])  # first layer: error came through B


def test_fa_feedback_is_a_fixed_buffer_with_the_weight_shape():
    fa = create_algorithm("fa", small_cnn())
    kinds = {type(layer) for layer in fa.layers}
    assert kinds == {FeedbackLinear, FeedbackConv2d}
    for layer in fa.layers:
        assert layer.feedback.shape == layer.weight.shape
        assert not isinstance(layer.feedback, torch.nn.Parameter)
    names = set(fa.model.state_dict())
    assert {n for n in names if n.endswith("feedback")}, "feedback must be checkpointed"
    assert all(p is not layer.feedback for layer in fa.layers for p in fa.parameters())
