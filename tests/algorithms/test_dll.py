"""Dendritic localized learning, grouped by oracle (ALGORITHMS.md, DLL):

* equivalence: with Θ tied to W, ΔW equals minus the autograd gradient of the same loss;
* closed form: ΔΘ is eq. (9), -g ξᵀ batch-averaged, computed here by hand;
* convergence: the apical dynamics (6) settle to the closed form (7);
* C1 is in test_c1_weight_transport.py.
"""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

from bioplausible.algorithms import create_algorithm
from bioplausible.algorithms.feedback import trainable_layers
from bioplausible.errors import ConfigError
import helpers
from helpers import batch, small_cnn, small_mlp


def tie_theta_to_weights(rule):
    with torch.no_grad():
        for layer in rule.layers:
            layer.feedback.copy_(layer.weight)


@pytest.mark.parametrize("build", [small_mlp, small_cnn], ids=["mlp", "cnn"])
@pytest.mark.parametrize("loss", ["mse", "ce"])
def test_tied_theta_gives_bp_weight_updates(build, loss):
    reference = build()
    bp = create_algorithm("bp", copy.deepcopy(reference), loss=loss)
    dll = create_algorithm("dll", copy.deepcopy(reference), loss=loss)
    tie_theta_to_weights(dll)
    x, y = batch(reference)
    bp.compute_updates(x, y)
    dll.compute_updates(x, y)
    dll_params = dict(dll.model.named_parameters())
    for name, p_bp in bp.model.named_parameters():
        torch.testing.assert_close(dll_params[name].grad, p_bp.grad, rtol=0, atol=1e-14, msg=name)


@pytest.mark.parametrize("loss", ["mse", "ce"])
def test_theta_update_is_equation_9(loss):
    """Hand-written Algorithm 1 for a 3-layer tanh MLP: ξ_L, g, ξ_i = Θ_iᵀ g_{i+1}, ΔΘ_i = -g ξᵀ."""
    model = small_mlp()
    dll = create_algorithm("dll", model, loss=loss)
    x, y = batch(model)
    dll.compute_updates(x, y)

    linears = [m for block in model.blocks for m in block if isinstance(m, torch.nn.Linear)]
    u, pre = [x.flatten(1)], []
    for i, layer in enumerate(linears):
        a = u[-1] @ layer.weight.T + layer.bias
        pre.append(a)
        u.append(torch.tanh(a) if i < len(linears) - 1 else a)
    onehot = F.one_hot(y, model.num_classes).double()
    xi = onehot - (u[-1] if loss == "mse" else u[-1].softmax(-1))  # ξ_L
    for i in range(len(linears) - 1, 0, -1):
        fprime = torch.ones_like(pre[i]) if i == len(linears) - 1 else 1 - torch.tanh(pre[i]) ** 2
        g = xi * fprime  # g_{i+1}
        xi_below = g @ linears[i].feedback  # ξ_i = Θ_iᵀ g_{i+1} (row vectors)
        delta_w = g.T @ u[i] / len(y)  # (8)
        delta_theta = -g.T @ xi_below / len(y)  # (9)
        torch.testing.assert_close(linears[i].weight.grad, -delta_w, rtol=0, atol=1e-14)
        torch.testing.assert_close(linears[i].feedback.grad, -delta_theta, rtol=0, atol=1e-14)
        xi = xi_below
    assert not hasattr(linears[0], "feedback")  # the first layer sends no error: no Θ_0


def test_conv_theta_update_pairs_each_output_error_with_the_input_error_under_its_kernel():
    """Eq. (9) for a convolution, by hand: ΔΘ = -(1/B) Σ_{b,p} g[b,:,p] unfold(ξ)[b,:,p]ᵀ, the
    error g at output position p paired with the apical errors ξ in that position's receptive
    field (the pairing the authors' code gets wrong). g and ξ are read off the backward pass by
    tensor hooks on each convolution's output and input."""
    model = small_cnn()
    dll = create_algorithm("dll", model, loss="mse")
    convs = [layer for layer in dll.layers if isinstance(layer, torch.nn.Conv2d)]
    assert convs
    errors = {}

    def keep_errors(layer, args, output):  # gradients of the summed loss: -ξ at the input, -g at the output
        args[0].register_hook(lambda grad: errors.__setitem__((layer, "xi"), -grad))
        output.register_hook(lambda grad: errors.__setitem__((layer, "g"), -grad))

    hooks = [layer.register_forward_hook(keep_errors) for layer in convs]
    x, y = batch(model)
    dll.compute_updates(x, y)
    for hook in hooks:
        hook.remove()
    for layer in convs:
        g, xi = errors[layer, "g"], errors[layer, "xi"]
        patches = F.unfold(xi, layer.kernel_size, dilation=layer.dilation, padding=layer.padding, stride=layer.stride)
        delta_theta = -torch.einsum("bop,bkp->ok", g.flatten(2), patches) / len(y)
        torch.testing.assert_close(layer.feedback.grad, -delta_theta.view_as(layer.feedback), rtol=0, atol=1e-14)
        assert delta_theta.abs().max() > 1e-6  # the check is not of zeros


@pytest.mark.parametrize("build", [small_mlp, small_cnn], ids=["mlp", "cnn"])
def test_settling_with_unit_rate_reaches_closed_form_after_depth_steps(build):
    reference = build()
    depth = len(reference.blocks)
    closed = create_algorithm("dll", copy.deepcopy(reference))
    settled = create_algorithm("dll", copy.deepcopy(reference), settle_steps=depth - 1, eta_x=1.0)
    for layer_c, layer_s in zip(closed.layers, settled.layers):
        layer_s.feedback.data.copy_(layer_c.feedback)
    x, y = batch(reference)
    closed.compute_updates(x, y)
    settled.compute_updates(x, y)
    for (name, p_c), p_s in zip(closed.named_parameters(), settled.parameters()):
        torch.testing.assert_close(p_s.grad, p_c.grad, rtol=0, atol=1e-13, msg=name)


def test_settling_converges_geometrically_to_closed_form():
    reference = small_mlp()
    closed = create_algorithm("dll", copy.deepcopy(reference))
    x, y = batch(reference)
    closed.compute_updates(x, y)
    gaps = []
    for steps in (2, 10, 80):
        settled = create_algorithm("dll", copy.deepcopy(reference), settle_steps=steps, eta_x=0.3)
        for layer_c, layer_s in zip(closed.layers, settled.layers):
            layer_s.feedback.data.copy_(layer_c.feedback)
        settled.compute_updates(x, y)
        gaps.append(max((p_s.grad - p_c.grad).abs().max().item()
                        for p_c, p_s in zip(closed.parameters(), settled.parameters())))
    assert gaps[0] > gaps[1] > gaps[2]
    assert gaps[0] > 1e-3 and gaps[2] < 1e-10


def test_dll_fa_theta_is_frozen_buffer_and_learns_nothing():
    dll_fa = create_algorithm("dll_fa", small_mlp())
    dll_fa.configure_optimizers(lambda groups: torch.optim.SGD(groups, lr=0.1))
    before = [layer.feedback.clone() for layer in dll_fa.layers]
    dll_fa.train_step(*batch(dll_fa.model))
    for layer, theta in zip(dll_fa.layers, before):
        assert not isinstance(layer.feedback, torch.nn.Parameter)
        assert torch.equal(layer.feedback, theta)


def test_theta_learning_rate_defaults_to_a_tenth():
    dll = create_algorithm("dll", small_mlp())
    theta_group = next(g for g in dll.param_groups() if g["name"] == "theta")
    assert theta_group["lr_scale"] == 0.1
    assert {id(p) for p in theta_group["params"]} == {id(layer.feedback) for layer in dll.layers}
    assert create_algorithm("dll", small_mlp(), theta_lr=3e-4).param_groups()[-1]["lr"] == 3e-4


def test_bad_settle_options_are_named():
    with pytest.raises(ConfigError, match="'settle_steps' must be a non-negative integer"):
        create_algorithm("dll", small_mlp(), settle_steps=-1)
    with pytest.raises(ConfigError, match="'eta_x' must be positive"):
        create_algorithm("dll", small_mlp(), eta_x=0.0)


@pytest.mark.parametrize("build", [small_mlp, small_cnn], ids=["mlp", "cnn"])
@pytest.mark.parametrize("tied", [False, True], ids=["random-theta", "tied-theta"])
def test_epoch_diagnostics_are_the_angles_to_theta_and_to_bps_gradient(build, tied):
    """∠(Θ_i, W_i) and ∠(ΔW_i, -∇W_i of BP), each against an independent computation (BP's rule
    on a copy of the model); 0° with Θ tied to W; and the rule's state is left untouched."""
    reference = build()
    bp = create_algorithm("bp", copy.deepcopy(reference), loss="mse")
    dll = create_algorithm("dll", copy.deepcopy(reference), loss="mse")
    if tied:
        tie_theta_to_weights(dll)
    x, y = batch(reference)
    before = {k: v.clone() for k, v in dll.state_dict().items()}
    diagnostics = dll.epoch_diagnostics(x, y)
    assert all(torch.equal(v, before[k]) for k, v in dll.state_dict().items())
    assert all(p.grad is None for p in dll.parameters())

    bp.compute_updates(x, y)
    dll.compute_updates(x, y)
    names = {id(p): n for n, p in dll.model.named_parameters()}
    bp_grads = {n: p.grad for n, p in bp.model.named_parameters()}
    layers = [layer for _, layer in trainable_layers(dll.model)]
    assert layers[1:] == dll.layers  # every layer but the first has a Θ
    assert len(layers) >= 3 and len(diagnostics) == 2 * len(layers) + 2 * len(dll.layers)
    for i, layer in enumerate(layers):
        bp_grad = bp_grads[names[id(layer.weight)]]
        expected_update = helpers.angle_degrees(layer.weight.grad, bp_grad)
        assert diagnostics[f"angle_update_grad/{i}"] == pytest.approx(expected_update, abs=1e-3)
        assert diagnostics[f"update_norm_ratio/{i}"] == pytest.approx((layer.weight.grad.norm() / bp_grad.norm()).item())
        if tied:
            assert diagnostics[f"angle_update_grad/{i}"] < 1e-3
            assert diagnostics[f"update_norm_ratio/{i}"] == pytest.approx(1.0, abs=1e-5)
        if i == 0:
            assert "angle_theta_W/0" not in diagnostics and "theta_norm_ratio/0" not in diagnostics
            continue
        expected_theta = helpers.angle_degrees(layer.feedback, layer.weight)
        assert diagnostics[f"angle_theta_W/{i}"] == pytest.approx(expected_theta, abs=1e-6)
        assert diagnostics[f"theta_norm_ratio/{i}"] == pytest.approx((layer.feedback.norm() / layer.weight.norm()).item())
        if tied:
            assert diagnostics[f"angle_theta_W/{i}"] < 1e-3
        else:
            assert diagnostics[f"angle_theta_W/{i}"] > 45
    if not tied:  # the first layer's error came through every Θ: far from BP's
        assert diagnostics["angle_update_grad/0"] > 10


def test_diagnostics_of_a_truncated_settle_compare_with_bps_gradient():
    """With settle_steps = 1 and η_x = 0.5 from rest, tied Θ: the top layer's update is BP's, the
    next one down gets half of BP's error, the one below none yet. The reference stays BP's
    gradient (an independent BP rule), not the truncated settle of tied Θ."""
    reference = small_mlp()
    bp = create_algorithm("bp", copy.deepcopy(reference), loss="mse")
    dll = create_algorithm("dll", copy.deepcopy(reference), loss="mse", settle_steps=1, eta_x=0.5)
    tie_theta_to_weights(dll)
    x, y = batch(reference)
    diagnostics = dll.epoch_diagnostics(x, y)
    assert dll.hp.settle_steps == 1
    bp.compute_updates(x, y)
    bp_grads = [layer.weight.grad for _, layer in trainable_layers(bp.model)]
    assert [diagnostics[f"update_norm_ratio/{i}"] for i in range(3)] == pytest.approx([0.0, 0.5, 1.0], abs=1e-12)
    dll.compute_updates(x, y)
    for i, (_, layer) in enumerate(list(trainable_layers(dll.model))[1:], start=1):
        assert diagnostics[f"angle_update_grad/{i}"] == pytest.approx(helpers.angle_degrees(layer.weight.grad, bp_grads[i]), abs=1e-3)
        assert diagnostics[f"angle_update_grad/{i}"] < 1e-3


def test_trainer_logs_dll_diagnostics_every_epoch(tmp_path):
    from bioplausible import train

    result = train(algo="dll", model="mlp", dataset="digits", epochs=2, batch_size=64, model_args={"hidden": [32, 16]},
                   seed=0, progress=False, out=str(tmp_path / "dll"))
    for metrics in result.history:
        assert {"angle_update_grad/0", "angle_update_grad/1", "angle_update_grad/2", "update_norm_ratio/0",
                "angle_theta_W/1", "angle_theta_W/2", "theta_norm_ratio/1"} <= set(metrics)
