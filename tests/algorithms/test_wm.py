"""Weight mirroring. Oracles: the mirror direction is an unbiased estimate of W, and mirror
steps alone (no task error at all) align B with W."""

from __future__ import annotations

import torch

from bioplausible.algorithms import create_algorithm
from helpers import angle_degrees, small_cnn


def test_mirror_direction_is_unbiased_estimate_of_weight():
    torch.manual_seed(0)
    wm = create_algorithm("wm", small_cnn(), mirror_batch=20000)
    for layer in wm.layers:
        estimate = wm.mirror_direction(layer)
        assert estimate.shape == layer.weight.shape
        assert angle_degrees(estimate, layer.weight) < 5


def test_mirror_steps_alone_align_feedback_with_weights():
    torch.manual_seed(0)
    wm = create_algorithm("wm", small_cnn(), mirror_lr=0.1, mirror_decay=0.1, mirror_batch=256)
    mirror_optimizer = wm.configure_optimizers(lambda groups: torch.optim.SGD(groups, lr=0.0))[1]
    weights = [layer.weight.detach().clone() for layer in wm.layers]
    initial = [angle_degrees(layer.weight, layer.feedback) for layer in wm.layers]
    for _ in range(200):
        mirror_optimizer.zero_grad()
        wm.mirror()
        mirror_optimizer.step()
    final = [angle_degrees(layer.weight, layer.feedback) for layer in wm.layers]
    for layer, w in zip(wm.layers, weights):
        assert torch.equal(layer.weight, w)  # no task error: the forward weights never moved
    assert min(initial) > 60
    assert max(final) < 10, f"angles after 200 mirror steps: {final}"
