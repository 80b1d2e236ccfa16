"""Difference target propagation (BASELINES.md, section 4). Float64 tiny nets.

Oracles with exact inverses ``g_l = f_l^{-1}`` of square invertible layers: forward consistency
``f_l(ĥ_{l-1}) = ĥ_l``; in a leaky-ReLU net the target is the Gauss-Newton one,
``(ĥ_l - h_l)/β = -J_{L-1,l}^{-1} ∂ℓ/∂h_{L-1}`` (not BP's); with linear orthogonal layers the
update is BP's. Closed form of the layer update; locality (C1 probe on the targets); the
reconstruction loss trains the inverses; the feedback is trained before the targets are
computed; the DLL CNN runs."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from bioplausible.algorithms import create_algorithm
from bioplausible.algorithms.dtp import Inverse
from bioplausible.errors import ConfigError
from bioplausible.models import create_model
from helpers import batch, small_mlp

SLOPE = 0.2


class ExactInverse(nn.Module):
    """``f^{-1}(h) = W^{-1}(σ^{-1}(h) - b)`` of a square Linear followed by a leaky ReLU."""

    def __init__(self, linear: nn.Linear):
        super().__init__()
        self.linear = linear

    def forward(self, h):
        a = torch.where(h >= 0, h, h / SLOPE)
        return torch.linalg.solve(self.linear.weight, (a - self.linear.bias).T).T


def square_net(activation: str, seed: int = 0):
    """4-4-4-4-3: three square hidden layers, so blocks 1 and 2 have exact inverses."""
    torch.manual_seed(seed)
    model = create_model("mlp", (1, 2, 2), 3, hidden=[4, 4, 4], activation=activation).double()
    if activation == "leaky_relu":
        for block in model.blocks[:-1]:
            block[-1] = nn.LeakyReLU(SLOPE)
    return model


def exact_inverses(rule):
    for key in rule.inverses:
        rule.inverses[key] = ExactInverse(rule.model.blocks[int(key)][-2])


def per_example_gradient(model, h, y, start):
    """``∂ℓ/∂h`` of the per-example CE, ``h`` the input of block ``start``."""
    h = h.detach().requires_grad_(True)
    out = h
    for block in model.blocks[start:]:
        out = block(out)
    return torch.autograd.grad(nn.functional.cross_entropy(out, y, reduction="sum"), h)[0]


# ---------------------------------------------------------------------- exact inverses
def test_forward_consistency_with_exact_inverses():
    model = square_net("leaky_relu")
    rule = create_algorithm("dtp", model, beta=0.1)
    exact_inverses(rule)
    x, y = batch(model, n=6)
    forward = rule.forward_pass(x)
    targets = rule.targets(forward, y)
    with torch.no_grad():
        for k in (1, 2):  # f_k(ĥ_k) = ĥ_{k+1}
            torch.testing.assert_close(model.blocks[k](targets[k]), targets[k + 1], rtol=0, atol=1e-13)


def test_exact_inverses_give_the_gauss_newton_target():
    model = square_net("leaky_relu")
    # Small enough that no unit crosses its kink (at 1e-3 one unit of this net does, and the
    # target of that example is off by 146: the identity is exact only piecewise).
    beta = 1e-4
    rule = create_algorithm("dtp", model, beta=beta)
    exact_inverses(rule)
    x, y = batch(model, n=6)
    forward = rule.forward_pass(x)
    targets = rule.targets(forward, y)
    penultimate = 3
    for l in (1, 2, 3):  # leaky ReLU keeps the sign: same sign pattern, same linear piece
        assert torch.equal(targets[l] >= 0, forward.h(l) >= 0)
    grad = per_example_gradient(model, forward.h(penultimate), y, penultimate)
    for l in (1, 2):
        for b in range(len(y)):
            def up(h, l=l):  # h_l -> h_{L-1}, one example
                for block in model.blocks[l:penultimate]:
                    h = block(h)
                return h
            jacobian = torch.autograd.functional.jacobian(up, forward.h(l)[b:b + 1]).reshape(4, 4)
            gauss_newton = -torch.linalg.solve(jacobian, grad[b])
            got = (targets[l][b] - forward.h(l)[b]) / beta
            # Rounding, amplified by 1/β and cond(J) (up to 600 here), sets the tolerance.
            torch.testing.assert_close(got, gauss_newton, rtol=0, atol=1e-9)


def test_linear_orthogonal_layers_with_exact_inverses_give_bp():
    model = square_net("identity")
    with torch.no_grad():
        for block in model.blocks[:-1]:
            block[-2].weight.copy_(torch.linalg.qr(torch.randn(4, 4, dtype=torch.float64))[0])
    rule = create_algorithm("dtp", model, beta=0.3)
    for key, g in rule.inverses.items():  # g(h) = Wᵀ(h - b), in the rule's own Inverse form
        linear = model.blocks[int(key)][-2]
        with torch.no_grad():
            g.linear.weight.copy_(linear.weight.T)
            g.linear.bias.copy_(-linear.weight.T @ linear.bias)
    assert all(isinstance(g.activation, nn.Identity) for g in rule.inverses.values())
    x, y = batch(model, n=6)
    params = list(model.parameters())
    expected = torch.autograd.grad(nn.functional.cross_entropy(model(x), y), params)
    rule.compute_updates(x, y)
    for p, want in zip(params, expected):
        torch.testing.assert_close(p.grad, want, rtol=0, atol=1e-12)


# ---------------------------------------------------------------------- the update and locality
def test_layer_update_is_the_local_closed_form():
    model = small_mlp(hidden=(12, 9, 7))  # tanh, learned (inexact) inverses
    beta = 0.25
    rule = create_algorithm("dtp", model, beta=beta)
    x, y = batch(model)
    rule.compute_updates(x, y)
    forward = rule.forward_pass(x)
    targets = rule.targets(forward, y)
    for k, block in enumerate(model.blocks[:-1]):
        linear = block[-2]
        h_prev, h = forward.h(k).flatten(1), forward.h(k + 1)
        local = (h - targets[k + 1]) * (1 - h**2)  # (h_l - ĥ_l) ⊙ f'
        torch.testing.assert_close(linear.weight.grad, local.T @ h_prev / (len(y) * beta), rtol=0, atol=1e-14)
        torch.testing.assert_close(linear.bias.grad, local.sum(0) / (len(y) * beta), rtol=0, atol=1e-14)
    out = model.blocks[-1][0]
    expected = torch.autograd.grad(nn.functional.cross_entropy(model(x), y), out.weight)[0]
    torch.testing.assert_close(out.weight.grad, expected, rtol=0, atol=1e-14)


def test_c1_probe_targets_ignore_the_forward_weights_of_the_layers_above():
    model = small_mlp(hidden=(12, 9, 7), seed=3)
    rule = create_algorithm("dtp", model)
    x, y = batch(model)
    forward = rule.forward_pass(x)
    before = rule.targets(forward, y)
    with torch.no_grad():  # after the forward pass, every hidden layer's W changes
        for block in model.blocks[1:-1]:
            block[-2].weight.add_(torch.randn_like(block[-2].weight))
    after = rule.targets(forward, y)
    for k in (1, 2, 3):
        torch.testing.assert_close(after[k], before[k], rtol=0, atol=0)
    assert rule.flags.no_weight_transport and rule.flags.local_errors


# ---------------------------------------------------------------------- feedback training
def test_reconstruction_loss_trains_the_inverses():
    torch.manual_seed(0)
    model = create_model("mlp", (1, 2, 4), 3, hidden=[8, 10, 10], activation="tanh").double()
    rule = create_algorithm("dtp", model)
    rule.configure_optimizers(lambda groups: torch.optim.Adam(groups, lr=1e-2))
    feedback = rule.optimizers[1]
    x_test, _ = batch(model, n=64, seed=5)

    def reconstruction_error():
        forward = rule.forward_pass(x_test)
        with torch.no_grad():
            return sum(((rule.inverses[k](forward.h(int(k) + 1)) - forward.h(int(k))).pow(2).sum()
                        / (forward.h(int(k)) - forward.h(int(k)).mean(0)).pow(2).sum()).item()
                       for k in rule.inverses)

    weights = [p.detach().clone() for p in model.parameters()]
    initial = reconstruction_error()
    for step in range(300):
        feedback.zero_grad()
        rule.feedback_loss(rule.forward_pass(batch(model, n=32, seed=100 + step)[0])).backward()
        feedback.step()
    assert reconstruction_error() < 0.2 * initial
    assert all(torch.equal(p, w) for p, w in zip(model.parameters(), weights))  # W untouched


def test_train_step_trains_the_feedback_before_computing_the_targets():
    model = small_mlp(hidden=(12, 9, 7))
    rule = create_algorithm("dtp", model)
    rule.configure_optimizers(lambda groups: torch.optim.SGD(groups, lr=0.5))
    assert len(rule.optimizers) == 2 and rule.optimizers[1].param_groups[0]["lr"] == rule.hp.feedback_lr
    before = copy.deepcopy(rule)
    x, y = batch(model)
    rule.train_step(x, y)
    # Same forward weights as before the step, the inverses as after it: the same forward update.
    before.inverses.load_state_dict(rule.inverses.state_dict())
    before.model.zero_grad()
    before._forward_update(before.forward_pass(x), y)
    for p, q in zip(model.parameters(), before.model.parameters()):
        torch.testing.assert_close(p.grad, q.grad, rtol=0, atol=1e-15)


# ---------------------------------------------------------------------- CNN and options
def test_runs_on_the_dll_cnn_with_dense_inverses():
    torch.manual_seed(0)
    model = create_model("dll_cnn_mnist", (1, 28, 28), 10)
    rule = create_algorithm("dtp", model)
    assert {k: tuple(g.linear.weight.shape) for k, g in rule.inverses.items()} == {
        "1": (32 * 12 * 12, 64 * 5 * 5), "2": (64 * 5 * 5, 16 * 3 * 3), "3": (16 * 3 * 3, 200)}
    assert all(isinstance(g.activation, nn.Tanh) for g in rule.inverses.values())
    rule.configure_optimizers(lambda groups: torch.optim.SGD(groups, lr=0.1))
    before = [p.detach().clone() for p in rule.parameters()]
    result = rule.train_step(*batch(model, n=4))
    assert torch.isfinite(result.loss)
    for p, b in zip(rule.parameters(), before):
        assert torch.isfinite(p).all() and not torch.equal(p, b)


def test_options_are_checked_and_named():
    with pytest.raises(ConfigError, match="dtp: 'beta' must be positive"):
        create_algorithm("dtp", small_mlp(), beta=0.0)
    with pytest.raises(ConfigError, match="dtp: 'noise' must be positive"):
        create_algorithm("dtp", small_mlp(), noise=-1.0)
    assert isinstance(create_algorithm("dtp", small_mlp()).inverses["1"], Inverse)
