"""Signal Propagation (BASELINES.md section 9), grouped by oracle: the update equals autograd
with both streams live and differs from the t-detached one; nearest-target scores equal a linear
layer whose rows are the class signals; locality (each loss reaches only its own block, the
per-unit schedule equals one backward of the summed losses, the streams passed on carry no
graph); the fixed signal; a quick CNN check. Learning on digits: tests/test_learning.py."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from bioplausible.algorithms import create_algorithm
from bioplausible.algorithms.layerwise import detached
from bioplausible.errors import ConfigError
from layerwise_checks import (assert_each_loss_reaches_only_its_unit, assert_schedule_equals_summed_backward,
                              assert_prediction_from_any_stage_equals_predict, assert_steps_reduce_every_unit_loss,
                              assert_unit_passes_on_no_graph, sgd0, unit_losses)
from helpers import batch, small_cnn, small_mlp

BUILDS = {"mlp": small_mlp, "cnn": small_cnn}


# ---------------------------------------------------------------------- the update
@pytest.mark.parametrize("build", BUILDS)
def test_update_uses_both_streams_and_differs_from_the_t_detached_one(build):
    rule = create_algorithm("sigprop", BUILDS[build]())
    rule.configure_optimizers(sgd0)
    x, y = batch(rule.model)
    rule.train_step(x, y)
    block = rule.units[1][0]
    W = next(block.parameters())
    # By hand: block 1 on both detached streams from block 0, logits h tᵀ, CE on the labels.
    h0, t0 = detached(rule.forward_unit(0, x))
    h1, t1 = block(h0), block(t0)
    both = torch.autograd.grad(F.cross_entropy(h1.flatten(1) @ t1.flatten(1).T, y), [W], retain_graph=True)[0]
    h_only = torch.autograd.grad(F.cross_entropy(h1.flatten(1) @ t1.detach().flatten(1).T, y), [W])[0]
    torch.testing.assert_close(W.grad, both, rtol=0, atol=1e-12)
    assert (W.grad - h_only).abs().max() > 1e-3 * W.grad.abs().max()


def test_nearest_target_scores_equal_a_linear_layer_whose_rows_are_the_class_signals():
    rule = create_algorithm("sigprop", small_mlp())
    x, _ = batch(rule.model)
    with torch.no_grad():
        h, t = rule.forward_unit(1, rule.forward_unit(0, x))
        linear = torch.nn.Linear(t.shape[1], t.shape[0], bias=False).double()
        linear.weight.copy_(t)
        torch.testing.assert_close(h @ t.T, linear(h), rtol=0, atol=1e-12)
    assert t.shape == (rule.model.num_classes, h.shape[1])  # one target per class, not per example


# ---------------------------------------------------------------------- locality
@pytest.mark.parametrize("build", BUILDS)
def test_each_block_loss_reaches_only_its_own_block(build):
    rule = create_algorithm("sigprop", BUILDS[build]())
    assert_each_loss_reaches_only_its_unit(rule, unit_losses(rule, *batch(rule.model)))


@pytest.mark.parametrize("build", BUILDS)
def test_per_block_schedule_equals_one_backward_of_the_summed_losses(build):
    rule = create_algorithm("sigprop", BUILDS[build]())
    assert_schedule_equals_summed_backward(rule, *batch(rule.model))


def test_the_streams_passed_on_carry_no_graph():
    rule = create_algorithm("sigprop", small_cnn())
    assert_unit_passes_on_no_graph(rule, *batch(rule.model))


def test_layer_parallel_evaluation_from_any_stage_equals_predict():
    rule = create_algorithm("sigprop", small_mlp())
    rule.eval()
    assert_prediction_from_any_stage_equals_predict(rule, batch(rule.model)[0])


# ---------------------------------------------------------------------- signal, CNN, options
def test_a_fixed_signal_is_a_buffer_and_never_changes():
    rule = create_algorithm("sigprop", small_mlp(), signal="fixed")
    assert "signal.weight" in dict(rule.named_buffers())
    assert not any(n.startswith("signal.") for n, _ in rule.named_parameters())
    before = rule.signal().clone()
    rule.configure_optimizers(lambda groups: torch.optim.SGD(groups, lr=0.1))
    rule.train_step(*batch(rule.model))
    assert torch.equal(rule.signal(), before)


def test_a_few_steps_on_a_cnn_reduce_every_block_loss():
    rule = create_algorithm("sigprop", small_cnn())
    assert_steps_reduce_every_unit_loss(rule, *batch(rule.model, n=32))


def test_options_are_checked():
    with pytest.raises(ConfigError, match="unknown signal 'random'"):
        create_algorithm("sigprop", small_mlp(), signal="random")
    with pytest.raises(ConfigError, match="'loss' must be 'ce'"):
        create_algorithm("sigprop", small_mlp(), loss="mse")
