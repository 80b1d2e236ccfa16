"""Forward-Forward (BASELINES.md section 7), grouped by oracle: negative labels (never the true
one, uniform over the wrong ones); the label embedding; scale invariance of the length
normalisation; the layer loss's gradient in closed form; prediction on a hand-built net;
locality (each loss reaches only its own layer, the per-unit schedule equals one backward of
the summed losses); a quick CNN check. Learning on digits: tests/test_learning.py RECIPES."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from bioplausible.algorithms import create_algorithm
from bioplausible.algorithms.ff import goodness
from bioplausible.algorithms.layerwise import detached
from bioplausible.errors import ConfigError
from bioplausible.models import create_model
from bioplausible.models.base import Network
from layerwise_checks import (assert_each_loss_reaches_only_its_unit, assert_schedule_equals_summed_backward,
                              assert_prediction_from_any_stage_equals_predict, assert_unit_passes_on_no_graph,
                              unit_losses)
from helpers import batch, small_cnn, small_mlp

BUILDS = {"mlp": small_mlp, "cnn": small_cnn}


# ---------------------------------------------------------------------- negative data
def test_negative_labels_never_equal_the_true_label_and_are_uniform_over_the_wrong_ones():
    C, n = 10, 100_000
    rule = create_algorithm("ff", create_model("mlp", (1, 8, 8), C, hidden=[8, 8]))
    torch.manual_seed(0)
    y = torch.randint(0, C, (n,))
    y_neg = rule.negative_labels(y)
    assert not (y_neg == y).any()
    offsets = torch.bincount((y_neg - y) % C, minlength=C)[1:].double()  # counts of the 9 wrong offsets
    chi2 = ((offsets - n / (C - 1)) ** 2 / (n / (C - 1))).sum().item()
    assert chi2 < 27.9  # χ²(8 dof) at p = 0.0005


def test_the_label_replaces_the_first_c_input_entries():
    rule = create_algorithm("ff", small_cnn(), label_value=2.0)
    x, y = batch(rule.model)
    embedded = rule.embed(x, y).flatten(1)
    torch.testing.assert_close(embedded[:, :5], 2.0 * F.one_hot(y, 5).double())
    torch.testing.assert_close(embedded[:, 5:], x.flatten(1)[:, 5:])
    candidates = rule.candidates(x).flatten(1).view(len(x), 5, -1)
    torch.testing.assert_close(candidates[:, :, :5], 2.0 * torch.eye(5, dtype=x.dtype).expand(len(x), 5, 5))


# ---------------------------------------------------------------------- layer maths
@pytest.mark.parametrize("build", BUILDS)
def test_scaling_a_layers_input_leaves_its_activity_unchanged(build):
    rule = create_algorithm("ff", BUILDS[build]())
    x, _ = batch(rule.model)
    h = rule.layer(0, x)
    for c in (0.1, 0.5, 7.0):  # up to ε = 1e-8 against an RMS of order 0.1
        torch.testing.assert_close(rule.layer(1, c * h), rule.layer(1, h), rtol=1e-5, atol=1e-7)


def test_layer_loss_gradient_equals_its_closed_form():
    rule = create_algorithm("ff", small_mlp(activation="relu"), threshold=0.3)
    x, y = batch(rule.model, n=9)
    torch.manual_seed(0)
    streams = rule.streams(x, y)
    h = rule.forward_unit(1, detached(rule.forward_unit(0, streams)))
    loss, _, _ = rule.unit_loss(1, h, None, y)
    W = rule.model.blocks[1][0].weight
    (autograd,) = torch.autograd.grad(loss, [W])
    # ℓ = mean softplus(d(θ - G⁺)) + mean softplus(d(G⁻ - θ)), G = mean_j h_j², h = ReLU(W x̂ + b):
    # ∂ℓ/∂W = Σ_streams Σ_b s_b 2 (h_b ⊙ 1[h_b > 0]) x̂_bᵀ / B with s = -σ(d(θ - G⁺)) or σ(d(G⁻ - θ)).
    x0 = rule.forward_unit(0, streams)
    closed = torch.zeros_like(W)
    for stream, sign in ((0, -1.0), (1, 1.0)):
        inp = x0[stream] / (x0[stream].pow(2).mean(1, keepdim=True).sqrt() + rule.hp.eps)
        out = torch.relu(inp @ W.T + rule.model.blocks[1][0].bias)
        s = torch.sigmoid(sign * out.shape[1] * (goodness(out) - 0.3)) * sign
        closed += ((s[:, None] * 2 * out).T @ inp) / len(y)
    torch.testing.assert_close(autograd, closed, rtol=1e-9, atol=1e-12)


def test_prediction_sums_goodness_over_every_layer_but_the_first():
    """A hand-built net on 3 inputs (a 2-class label in entries 0-1, a feature in entry 2): the
    first layer is far better for label 0, the third only for label 1. Leaving the first layer out,
    label 1 wins; counting it, label 0 would."""
    first, second, third = nn.Linear(3, 2), nn.Linear(2, 2), nn.Linear(2, 2)
    with torch.no_grad():
        first.weight.copy_(torch.tensor([[100.0, 0, 0], [0, 1, 0]]))  # label 0 lights layer 1 up
        first.bias.zero_()
        second.weight.copy_(torch.eye(2))
        second.bias.zero_()
        third.weight.copy_(torch.tensor([[0.0, 0], [0, 5]]))  # only label 1 is good above layer 1
        third.bias.zero_()
    model = Network([nn.Sequential(first, nn.ReLU()), nn.Sequential(second, nn.ReLU()), nn.Sequential(third)], (3,), 2)
    rule = create_algorithm("ff", model)
    x = torch.tensor([[0.0, 0.0, 1.0], [0.0, 0.0, -3.0]])
    scores = rule.predict(x)
    assert scores.argmax(1).tolist() == [1, 1]
    # By hand: layer 1 gives (100, 0) for label 0 and (0, 1) for label 1; normalised to RMS 1 they
    # enter layer 2 as (√2, 0) and (0, √2) (goodness 2 each); layer 3 gives 0 and (0, 5√2) (50).
    expected = torch.tensor([[2.0 + 0.0, 2.0 + 50.0]] * 2)
    torch.testing.assert_close(scores, expected, rtol=1e-6, atol=1e-6)


# ---------------------------------------------------------------------- locality
@pytest.mark.parametrize("build", BUILDS)
def test_each_layer_loss_reaches_only_its_own_layer(build):
    rule = create_algorithm("ff", BUILDS[build]())
    torch.manual_seed(3)
    x, y = batch(rule.model)
    assert_each_loss_reaches_only_its_unit(rule, unit_losses(rule, x, y, rule.streams(x, y)))


@pytest.mark.parametrize("build", BUILDS)
def test_per_layer_schedule_equals_one_backward_of_the_summed_losses(build):
    rule = create_algorithm("ff", BUILDS[build]())
    x, y = batch(rule.model)
    # The same streams in both: the same negative labels.
    result, before = assert_schedule_equals_summed_backward(rule, x, y, streams=True)
    # the training scores are the prediction of the weights before the step
    torch.testing.assert_close(result.output, before.predict(x))


def test_the_streams_passed_on_carry_no_graph():
    rule = create_algorithm("ff", small_cnn())
    assert_unit_passes_on_no_graph(rule, *batch(rule.model))


def test_layer_parallel_evaluation_from_any_stage_equals_predict():
    rule = create_algorithm("ff", small_mlp())
    assert_prediction_from_any_stage_equals_predict(rule, batch(rule.model)[0])


# ---------------------------------------------------------------------- CNN and options
def test_a_few_steps_on_a_cnn_reduce_every_layer_loss():
    rule = create_algorithm("ff", small_cnn())
    rule.configure_optimizers(lambda groups: torch.optim.Adam(groups, lr=1e-2))
    x, y = batch(rule.model, n=32)

    def losses():
        torch.manual_seed(7)  # the same negatives before and after
        with torch.no_grad():
            return torch.stack(unit_losses(rule, x, y, rule.streams(x, y)))

    before = losses()
    for _ in range(20):
        rule.train_step(x, y)
    after = losses()
    assert (after < before).all(), (before, after)


def test_options_are_checked():
    with pytest.raises(ConfigError, match="'threshold' must be a positive number"):
        create_algorithm("ff", small_mlp(), threshold=0)
    with pytest.raises(ConfigError, match="cannot train"):
        create_algorithm("ff", create_model("mlp", (3,), 5, hidden=[4]))
