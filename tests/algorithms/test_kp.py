"""Kolen-Pollack. Oracles: B receives exactly W's update, ``W - B`` shrinks by ``(1 - ηλ)`` per
SGD step, and the forward/backward angle falls below 10° within a few hundred steps."""

from __future__ import annotations


import torch

from bioplausible.algorithms import create_algorithm
from bioplausible.data import BatchLoader, load_dataset
from bioplausible.models import create_model
from helpers import angle_degrees, batch, small_mlp


def test_feedback_gets_the_same_update_as_the_weight():
    kp = create_algorithm("kp", small_mlp())
    kp.compute_updates(*batch(kp.model))
    for layer in kp.layers:
        torch.testing.assert_close(layer.feedback.grad, layer.weight.grad, rtol=0, atol=0)


def test_difference_shrinks_by_one_minus_lr_times_decay():
    lr, decay = 0.1, 0.3
    kp = create_algorithm("kp", small_mlp(), decay=decay)
    kp.configure_optimizers(lambda groups: torch.optim.SGD(groups, lr=lr))
    before = [(layer.weight - layer.feedback).detach().clone() for layer in kp.layers]
    kp.train_step(*batch(kp.model))
    for layer, diff in zip(kp.layers, before):
        torch.testing.assert_close(layer.weight - layer.feedback, (1 - lr * decay) * diff, rtol=1e-12, atol=1e-12)


def test_backward_weights_align_with_forward_weights():
    torch.manual_seed(0)
    data = load_dataset("digits")
    model = create_model("mlp", data.input_shape, data.num_classes, hidden=[64, 32])
    kp = create_algorithm("kp", model, decay=0.5)
    kp.configure_optimizers(lambda groups: torch.optim.SGD(groups, lr=0.05, momentum=0.9))
    initial = [angle_degrees(layer.weight, layer.feedback) for layer in kp.layers]
    loader = BatchLoader(*data.train, batch_size=32, seed=0)
    steps = 0
    for epoch in range(10):
        loader.set_epoch(epoch)
        for x, y in loader:
            kp.train_step(x, y)
            steps += 1
            if steps == 300:
                break
        if steps == 300:
            break
    final = [angle_degrees(layer.weight, layer.feedback) for layer in kp.layers]
    assert min(initial) > 60
    assert max(final) < 10, f"angles after 300 steps: {final}"
