"""Rate-based reward-modulated STDP (BASELINES.md section 6, non-spiking simplification)."""

from __future__ import annotations

import copy

import pytest
import torch

from bioplausible.algorithms import create_algorithm
from bioplausible.algorithms.rstdp import rstdp_update, top_k_mask
from bioplausible.errors import ConfigError
from helpers import batch, small_mlp

RATES = (0.004, -0.003, -0.004, 0.0005)  # a⁺, a⁻, a_p⁻, a_p⁺ (the output's defaults)
STDP = (0.15, -0.1125, 0.0, 0.0)  # the hidden layers' defaults; r ≡ +1 never reads the punishment slots


def reference(weight, pre, winners, reward, rates):
    """The rule example by example and synapse by synapse (spec): for each winner i of example b,
    Δw_ij = w_ij(1-w_ij) × (a⁺ or a⁻ if r = +1; a_p⁻ or a_p⁺ if r = -1), the first of each pair when
    pre j spiked."""
    a_plus, a_minus, a_punish_minus, a_punish_plus = rates
    delta = torch.zeros_like(weight)
    for b in range(len(pre)):
        for i in winners[b].nonzero().flatten().tolist():
            for j in range(weight.shape[1]):
                spiked = bool(pre[b, j])
                if reward[b] > 0:
                    rate = a_plus if spiked else a_minus
                else:
                    rate = a_punish_minus if spiked else a_punish_plus
                delta[i, j] += rate * weight[i, j] * (1 - weight[i, j])
    return delta


def rule_and_batch(seed=0, **options):
    model = small_mlp(seed=seed, hidden=(12,))
    rule = create_algorithm("rstdp", model, **options)
    return model, rule, batch(model, n=9, seed=seed + 1)


# ---------------------------------------------------------------------- closed form
def test_update_equals_the_per_synapse_rule_for_both_rewards():
    torch.manual_seed(0)
    weight = torch.rand(5, 7, dtype=torch.float64)
    pre = (torch.rand(6, 7) > 0.5).double()
    winners = top_k_mask(torch.randn(6, 5, dtype=torch.float64), 2)
    reward = torch.tensor([1.0, -1, 1, -1, -1, 1], dtype=torch.float64)
    torch.testing.assert_close(rstdp_update(weight, pre, winners, reward, RATES),
                               reference(weight, pre, winners, reward, RATES), rtol=1e-12, atol=1e-15)


def test_rule_applies_stdp_to_hidden_winners_and_rstdp_to_the_decision():
    # Hidden layers: unsupervised STDP, i.e. R-STDP with r ≡ +1 (spec oracle 1); output: r = ±1
    # from the decision.
    model, rule, (x, y) = rule_and_batch()
    weights = [layer.linear.weight.detach().clone() for layer in rule.layers]
    pres, wins, drive = rule.spikes(x)
    rule.compute_updates(x, y)
    reward = torch.where(drive.argmax(1) == y, 1.0, -1.0).double()
    assert (reward > 0).any() and (reward < 0).any()  # both branches exercised
    expected_hidden = reference(weights[0], pres[0], wins[0], torch.ones(len(x)), STDP)
    expected_output = reference(weights[1], pres[1], top_k_mask(drive, 1), reward, RATES)
    torch.testing.assert_close(-rule.layers[0].linear.weight.grad, expected_hidden, rtol=1e-12, atol=1e-15)
    torch.testing.assert_close(-rule.layers[1].linear.weight.grad, expected_output, rtol=1e-12, atol=1e-15)


def test_only_the_winners_rows_change():
    model, rule, (x, y) = rule_and_batch(winners=2)
    _, wins, drive = rule.spikes(x)
    rule.compute_updates(x, y)
    for layer, win in zip(rule.layers, wins + [top_k_mask(drive, 1)]):
        changed = layer.linear.weight.grad.abs().sum(1) > 0
        assert torch.equal(changed, win.sum(0) > 0)
    assert (wins[0].sum(1) == 2).all()  # k = 2 winners per example


def test_first_layer_spikes_are_thresholded_pixels():
    model, rule, (x, y) = rule_and_batch(threshold=0.3)
    pres, _, _ = rule.spikes(x)
    assert torch.equal(pres[0], (x.flatten(1) > 0.3).double())


# ---------------------------------------------------------------------- bounds
def test_soft_bound_keeps_weights_in_the_unit_interval():
    # One example, |a| ≤ 1: w + a w(1-w) ∈ [0, 1] for w ∈ [0, 1] (spec oracle 3), so no clipping is needed.
    torch.manual_seed(1)
    weight = torch.rand(4, 50, dtype=torch.float64)
    for rates in [(1.0, -1.0, -1.0, 1.0), (-1.0, 1.0, 1.0, -1.0)]:
        for reward in (1.0, -1.0):
            pre = (torch.rand(1, 50) > 0.5).double()
            new = weight + rstdp_update(weight, pre, top_k_mask(torch.randn(1, 4), 4), torch.tensor([reward]), rates)
            assert new.min() >= 0 and new.max() <= 1


def test_training_keeps_weights_in_the_unit_interval():
    model, rule, _ = rule_and_batch()
    rule.configure_optimizers(lambda g: torch.optim.SGD(g, lr=50.0))  # steps far larger than the soft bound allows
    for step in range(10):
        rule.train_step(*batch(model, n=16, seed=step))
    for layer in rule.layers:
        assert layer.linear.weight.min() >= 0 and layer.linear.weight.max() <= 1
        assert not layer.linear.bias.requires_grad and (layer.linear.bias == 0).all()


# ---------------------------------------------------------------------- invariance and locality
def test_relabelling_classes_with_the_decision_map_gives_the_same_weights():
    # Permute the labels and the output units together: every weight follows (spec oracle 5).
    perm = torch.tensor([3, 0, 4, 1, 2])
    model, rule, _ = rule_and_batch()
    twin = copy.deepcopy(rule)
    with torch.no_grad():
        twin.layers[-1].linear.weight[perm] = rule.layers[-1].linear.weight.clone()
    for r in (rule, twin):
        r.configure_optimizers(lambda g: torch.optim.SGD(g, lr=1.0))
    for step in range(8):
        x, y = batch(model, n=16, seed=step)
        rule.train_step(x, y)
        twin.train_step(x, perm[y])
    assert torch.equal(twin.layers[0].linear.weight, rule.layers[0].linear.weight)
    assert torch.equal(twin.layers[-1].linear.weight[perm], rule.layers[-1].linear.weight)
    assert not torch.equal(rule.layers[-1].linear.weight, twin.layers[-1].linear.weight)


def test_update_runs_without_autograd():
    model, rule, (x, y) = rule_and_batch()
    seen = []
    for layer in rule.layers:
        layer.linear.register_forward_hook(
            lambda m, args, out: seen.append(args[0].requires_grad or out.grad_fn is not None))
    rule.compute_updates(x, y)
    assert seen == [False] * len(rule.layers)


def test_options_are_checked():
    with pytest.raises(ConfigError, match="'winners' must be positive"):
        create_algorithm("rstdp", small_mlp(), winners=0)
