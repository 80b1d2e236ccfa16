"""Predictive coding (BASELINES.md, section 2). The reference is BP on the same model, which is
already in PC form (``μ_{l+1} = W_l f(x_l) + b_l``, linear output). Float64 tiny nets.

Oracles: Z-IL's update equals BP's (1e-12); FPA's errors converge to BP's (1e-10); standard PC
with a soft clamp tends to BP as β → 0 (cosine > 0.999 at β = 1e-3, error linear in β).
Locality: the C1 probe sees the weight transport the flag declares; the update of a layer is
its error node times its rate, from the settled states of its two node populations only."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from bioplausible import train
from bioplausible.algorithms import create_algorithm
from bioplausible.errors import ConfigError
from bioplausible.models import create_model
from helpers import batch, small_cnn, small_mlp

NETS = {"mlp": small_mlp, "cnn": small_cnn}


def bp_gradients(model, x, y, loss):
    """``-ΔW`` of BP on the batch-mean loss, and ``δ_l = -∂(Σ_batch loss)/∂μ_l`` at every weight
    layer's output (PC's error units are per example)."""
    rule = create_algorithm("bp", model, loss=loss)
    outputs = []
    hooks = [s.layer.register_forward_hook(lambda m, i, o: outputs.append(o))
             for s in create_algorithm("pc", model).stages]
    try:
        value = rule.loss(model(x), y)
    finally:
        for h in hooks:
            h.remove()
    params = [p for p in model.parameters()]
    grads = torch.autograd.grad(value, params + outputs)
    deltas = [-g * len(y) for g in grads[len(params):]]
    return list(grads[:len(params)]), [None] + deltas


def pc_gradients(model, x, y, **hp):
    model.zero_grad()
    create_algorithm("pc", model, **hp).compute_updates(x, y)
    return [p.grad.clone() for p in model.parameters()]


# ---------------------------------------------------------------------- exact equivalences
@pytest.mark.parametrize("loss", ["ce", "mse"])
@pytest.mark.parametrize("net", ["mlp", "cnn"])
def test_zil_update_equals_bp(net, loss):
    model = NETS[net]()
    x, y = batch(model)
    expected, _ = bp_gradients(model, x, y, loss)
    for got, want in zip(pc_gradients(model, x, y, variant="zil", loss=loss), expected):
        torch.testing.assert_close(got, want, rtol=0, atol=1e-12)


def test_zil_update_equals_bp_on_regression_targets():
    model = small_mlp()
    x, _ = batch(model)
    y = torch.randn(len(x), model.num_classes, dtype=torch.float64)  # squared error, as LearningRule.loss
    params = list(model.parameters())
    expected = torch.autograd.grad(0.5 * (model(x) - y).pow(2).sum(-1).mean(), params)
    for got, want in zip(pc_gradients(model, x, y, variant="zil"), expected):
        torch.testing.assert_close(got, want, rtol=0, atol=1e-12)


def test_zil_update_equals_bp_on_the_dll_cnn():
    torch.manual_seed(0)
    model = create_model("dll_cnn_mnist", (1, 28, 28), 10).double()  # conv, tanh, max-pool
    x, y = batch(model, n=3)
    expected, _ = bp_gradients(model, x, y, "ce")
    for got, want in zip(pc_gradients(model, x, y, variant="zil"), expected):
        torch.testing.assert_close(got, want, rtol=0, atol=1e-12)


@pytest.mark.parametrize("net", ["mlp", "cnn"])
def test_fpa_errors_converge_to_bp_errors(net):
    model = NETS[net]()
    x, y = batch(model)
    _, deltas = bp_gradients(model, x, y, "ce")
    hp = {"inference_steps": 400, "inference_rate": 0.1} if net == "mlp" else {"inference_steps": 60, "inference_rate": 0.5}
    errors = create_algorithm("pc", model, variant="fpa", **hp).relax(x, y).errors
    for k in range(1, len(deltas)):
        torch.testing.assert_close(errors[k], deltas[k], rtol=0, atol=1e-10)
    expected, _ = bp_gradients(model, x, y, "ce")
    for got, want in zip(pc_gradients(model, x, y, variant="fpa", **hp), expected):
        torch.testing.assert_close(got, want, rtol=0, atol=1e-10)


def test_fpa_converges_geometrically_and_exactly_in_depth_steps_at_rate_one():
    model = small_mlp()  # L = 3 weight layers
    x, y = batch(model)
    _, deltas = bp_gradients(model, x, y, "ce")

    def distance(steps, rate):
        rule = create_algorithm("pc", model, variant="fpa", inference_steps=steps, inference_rate=rate)
        return max((e - d).abs().max().item() for e, d in zip(rule.relax(x, y).errors[1:], deltas[1:]))

    assert distance(2, 1.0) < 1e-15  # the error reaches the bottom hidden layer in L - 1 steps
    assert distance(1, 1.0) > 1e-3
    # Rate 1 - γ: 100 more steps at γ = 0.1 shrink the distance by about 0.9^100 ≈ 2.7e-5.
    ratio = distance(200, 0.1) / distance(100, 0.1)
    assert 1e-5 < ratio < 1e-4


@pytest.mark.parametrize("loss", ["ce", "mse"])
@pytest.mark.parametrize("net", ["mlp", "cnn"])
def test_soft_clamp_tends_to_bp_as_beta_vanishes(net, loss):
    model = NETS[net]()
    x, y = batch(model)
    expected, _ = bp_gradients(model, x, y, loss)

    def relative_errors(beta):
        got = pc_gradients(model, x, y, variant="standard", clamp="soft", beta=beta, loss=loss,
                           inference_steps=40, inference_rate=0.5)  # converged (checked at 300 steps)
        for g, w in zip(got, expected):
            assert F.cosine_similarity(g.flatten(), w.flatten(), dim=0) > (0.999 if beta <= 1e-3 else 0.99)
        return max(((g - w).norm() / w.norm()).item() for g, w in zip(got, expected))

    coarse, fine = relative_errors(1e-2), relative_errors(1e-3)
    assert fine < 0.02
    assert 8 < coarse / fine < 12  # the error is O(β)


# ---------------------------------------------------------------------- locality
def test_c1_probe_sees_weight_transport():
    """The flag is ✗: the error settled at the first hidden layer changes when W_{l+1} does."""
    model = small_mlp(seed=3)
    x, y = batch(model)
    rule = create_algorithm("pc", model, inference_steps=30)
    before = rule.relax(x, y).errors[1].clone()
    with torch.no_grad():
        model.blocks[1][0].weight.add_(torch.randn_like(model.blocks[1][0].weight))
    assert not torch.allclose(rule.relax(x, y).errors[1], before)
    assert not rule.flags.no_weight_transport and rule.flags.local_errors


@pytest.mark.parametrize("clamp", ["hard", "soft"])
def test_update_is_error_node_times_rate_from_the_two_settled_populations(clamp):
    """ΔW_l = (X_{l+1} - W_l f(X_l) - b_l)ᵀ f(X_l) / B (over β when soft) from the settled states
    and W_l alone: the other layers' weights, perturbed after inference, do not enter."""
    model = small_mlp(hidden=(12, 9, 7))
    x, y = batch(model)
    rule = create_algorithm("pc", model, clamp=clamp, beta=0.5, inference_steps=15)
    relaxation = rule.relax(x, y)
    rule.write_updates(relaxation)
    grads = [(s.layer.weight.grad.clone(), s.layer.bias.grad.clone()) for s in rule.stages]
    original = [s.layer.weight.detach().clone() for s in rule.stages]
    noise = [torch.randn_like(w) for w in original]
    scale = 0.5 if clamp == "soft" else 1.0
    states = relaxation.states
    for k in range(len(rule.stages) - 1):  # layers below a hidden error node
        with torch.no_grad():
            for j, s in enumerate(rule.stages):
                s.layer.weight.copy_(original[j] if j == k else original[j] + noise[j])
            rate = rule.f(k, states[k])
            error = states[k + 1] - rule.stages[k].layer(rate)
        torch.testing.assert_close(-grads[k][0], error.T @ rate / len(y) / scale, rtol=0, atol=1e-14)
        torch.testing.assert_close(-grads[k][1], error.mean(0) / scale, rtol=0, atol=1e-14)


# ---------------------------------------------------------------------- variants and options
def test_ipc_steps_the_optimizer_at_every_inference_step():
    model = small_mlp()
    x, y = batch(model)
    rule = create_algorithm("pc", model, variant="ipc", inference_steps=6)
    with pytest.raises(RuntimeError, match="configure_optimizers"):
        rule.compute_updates(x, y)
    (opt,) = rule.configure_optimizers(lambda groups: torch.optim.SGD(groups, lr=0.05))
    bottom, top = model.blocks[0][1].weight, model.blocks[-1][0].weight
    seen = []
    opt.register_step_post_hook(lambda *_: seen.append((bottom.detach().clone(), top.detach().clone())))
    initial = bottom.detach().clone()
    loss_before = rule.loss(model(x), y).item()
    for _ in range(5):
        rule.train_step(x, y)
    assert len(seen) == 30  # T = 6 weight updates per batch
    assert all(not torch.equal(a[1], b[1]) for a, b in zip(seen, seen[1:]))  # the top layer: every step
    # The error needs L - 1 = 2 steps to reach the bottom hidden node, then W_0 moves too.
    assert torch.equal(seen[0][0], initial) and torch.equal(seen[1][0], initial)
    assert not torch.equal(seen[2][0], seen[1][0])
    assert rule.loss(model(x), y).item() < loss_before


def test_options_are_checked_and_named():
    model = small_mlp()
    with pytest.raises(ConfigError, match="unknown variant 'fast'"):
        create_algorithm("pc", model, variant="fast")
    with pytest.raises(ConfigError, match="'clamp' soft applies to variants standard and ipc"):
        create_algorithm("pc", model, variant="fpa", clamp="soft")
    with pytest.raises(ConfigError, match="zil runs exactly L - 1 inference steps"):
        create_algorithm("pc", model, variant="zil", inference_steps=5)
    with pytest.raises(ConfigError, match="'inference_rate' 1"):
        create_algorithm("pc", model, variant="zil", inference_rate=0.5)
    with pytest.raises(ConfigError, match="'beta' must be in"):
        create_algorithm("pc", model, clamp="soft", beta=2.0)
    with pytest.raises(ConfigError, match="'inference_steps' must be a positive integer"):
        create_algorithm("pc", model, inference_steps=0)


def test_refuses_batch_norm_and_dropout_with_the_reason():
    model = create_model("mlp", (1, 4, 4), 3, hidden=[5], batch_norm=True)
    with pytest.raises(ConfigError, match="cannot train Network: block 0: BatchNorm1d after the weight layer"):
        create_algorithm("pc", model)
    model = create_model("mlp", (1, 4, 4), 3, hidden=[5], dropout=0.1)
    with pytest.raises(ConfigError, match="block 0: Dropout after the weight layer"):
        create_algorithm("pc", model)


def test_predict_is_the_free_equilibrium():
    model = small_mlp()
    x, _ = batch(model)
    rule = create_algorithm("pc", model)
    torch.testing.assert_close(rule.predict(x), model(x).detach(), rtol=0, atol=0)


# ---------------------------------------------------------------------- learning
@pytest.mark.parametrize("variant, options, epochs, bar", [
    # Standard PC and Z-IL: BP-like updates (Z-IL's is BP's), so the BP bar in fewer epochs.
    ("standard", {"inference_steps": 10}, 3, 0.90),
    ("zil", {}, 3, 0.90),
    # iPC steps the optimizer at each of its T = 5 inference steps: 5x the weight updates.
    ("ipc", {"inference_steps": 5}, 2, 0.90),
])
def test_variants_learn_digits(variant, options, epochs, bar, tmp_path):
    result = train(algo="pc", model="mlp", dataset="digits", epochs=epochs, batch_size=32, lr=1e-3,
                   model_args={"hidden": [64]}, algo_args={"variant": variant, **options}, seed=0,
                   progress=False, out=str(tmp_path / variant))
    assert result.summary["final"]["test_acc"] >= bar, result.summary["final"]
