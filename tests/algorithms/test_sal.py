"""Self-assembling learning. Oracles (exact, float64): with V = V̄ = I and D_d = relu_of_Vh,
SAL is SGD when W̄ = Wᵀ is frozen, FA when W̄ is random and frozen, KP when W̄ is plastic.
Then the self-assembly claims, shapes at every downstream width, C1, and learning."""

from __future__ import annotations

import copy

import pytest
import torch

from bioplausible import train
from bioplausible.algorithms import create_algorithm
from bioplausible.algorithms.sal import plot_diagnostics
from bioplausible.data import BatchLoader, load_dataset
from bioplausible.errors import ConfigError
from bioplausible.models import create_model
from helpers import batch, small_mlp

SPECIAL = dict(cross_init="identity", downstream_activation="relu_of_Vh", freeze_v=True, freeze_vbar=True)


def relu_mlp(seed: int = 0, hidden=(12, 9)):
    return small_mlp(seed=seed, hidden=hidden, activation="relu")


def sal_with_feedback(reference, feedback: list[torch.Tensor], **hyperparameters):
    """SAL on a copy of ``reference`` with W̄^l = feedback[l]ᵀ (feedback in W^l's shape)."""
    sal = create_algorithm("sal", copy.deepcopy(reference), **SPECIAL, **hyperparameters)
    with torch.no_grad():
        for l, level in enumerate(sal.levels, start=1):
            level.wbar.copy_(feedback[l].T)
    return sal


def assert_same_grads(a, b):
    for (name, p_a), p_b in zip(a.model.named_parameters(), b.model.parameters(), strict=True):
        torch.testing.assert_close(p_a.grad, p_b.grad, rtol=0, atol=1e-12, msg=name)


# ------------------------------------------------------------------ special cases (oracles)
@pytest.mark.parametrize("loss", ["ce", "mse"])
def test_identity_cross_wiring_and_transposed_feedback_is_sgd(loss):
    reference = relu_mlp()
    bp = create_algorithm("bp", copy.deepcopy(reference), loss=loss)
    weights = [m.weight.detach() for m in reference.modules() if isinstance(m, torch.nn.Linear)]
    sal = sal_with_feedback(reference, weights, freeze_wbar=True, loss=loss)
    x, y = batch(reference)
    bp.compute_updates(x, y)
    sal.compute_updates(x, y)
    assert_same_grads(sal, bp)


def test_identity_cross_wiring_and_random_frozen_feedback_is_fa():
    reference = relu_mlp()
    fa = create_algorithm("fa", copy.deepcopy(reference))
    sal = sal_with_feedback(reference, [layer.feedback for layer in fa.layers], freeze_wbar=True)
    x, y = batch(reference)
    fa.compute_updates(x, y)
    sal.compute_updates(x, y)
    assert_same_grads(sal, fa)


def test_identity_cross_wiring_and_plastic_feedback_is_kp_over_several_steps():
    lr, decay = 0.1, 0.3
    reference = relu_mlp()
    kp = create_algorithm("kp", copy.deepcopy(reference), decay=decay)
    sal = sal_with_feedback(reference, [layer.feedback for layer in kp.layers], decay=decay)
    for rule in (kp, sal):
        rule.configure_optimizers(lambda groups: torch.optim.SGD(groups, lr=lr))
    for step in range(5):
        x, y = batch(reference, seed=step)
        kp.train_step(x, y)
        sal.train_step(x, y)
        kp_params = dict(kp.model.named_parameters())  # W, b and KP's B (compared below)
        for name, p_sal in sal.model.named_parameters():
            torch.testing.assert_close(p_sal, kp_params[name], rtol=0, atol=1e-12, msg=f"step {step}: {name}")
        for l, level in enumerate(sal.levels, start=1):
            torch.testing.assert_close(level.wbar, kp.layers[l].feedback.T, rtol=0, atol=1e-12)


# ------------------------------------------------------------------ structure
def test_v_and_vbar_receive_transposed_updates_and_their_difference_decays():
    lr, decay = 0.1, 0.3
    sal = create_algorithm("sal", relu_mlp(), decay=decay, downstream_ratio=2)
    sal.configure_optimizers(lambda groups: torch.optim.SGD(groups, lr=lr))
    before = [(level.vbar - level.v.T).detach().clone() for level in sal.levels]
    sal.train_step(*batch(sal.model))
    for level, diff in zip(sal.levels, before):
        torch.testing.assert_close(level.vbar.grad, level.v.grad.T, rtol=0, atol=0)
        torch.testing.assert_close(level.vbar - level.v.T, (1 - lr * decay) * diff, rtol=1e-12, atol=1e-12)  # Lemma 1


@pytest.mark.parametrize("gate", ["identity", "relu_of_Vh", "relu", "tanh"])
def test_the_update_is_a_batch_mean_for_every_gate(gate):
    """Repeating a batch leaves every update unchanged: the downstream gates act on each example's
    own error, not on an error divided by the batch size (which made ``tanh`` linear at large B)."""
    updates = []
    for repeats in (1, 4):
        sal = create_algorithm("sal", relu_mlp(), downstream_activation=gate)
        x, y = batch(sal.model)
        sal.compute_updates(x.repeat(repeats, *[1] * (x.dim() - 1)), y.repeat(repeats))
        updates.append({name: p.grad for name, p in sal.named_parameters() if p.grad is not None})
    assert updates[0].keys() == updates[1].keys() and len(updates[0]) > 4
    for name in updates[0]:
        torch.testing.assert_close(updates[1][name], updates[0][name], rtol=1e-10, atol=1e-13, msg=name)


@pytest.mark.parametrize("ratio", [0.5, 1, 2, 5, 8])
@pytest.mark.parametrize("gate", ["identity", "relu_of_Vh", "relu", "tanh"])
def test_any_downstream_width_runs(ratio, gate):
    sal = create_algorithm("sal", relu_mlp(hidden=(10, 6)), downstream_ratio=ratio, downstream_activation=gate)
    sal.configure_optimizers(lambda groups: torch.optim.SGD(groups, lr=0.1))
    for level, (d, d_above) in zip(sal.levels, [(10, 6), (6, 5)]):
        d_bar = max(1, round(ratio * d))
        d_bar_above = 5 if d_above == 5 else max(1, round(ratio * d_above))
        assert level.v.shape == (d_bar, d) and level.vbar.shape == (d, d_bar)
        assert level.wbar.shape == (d_bar, d_bar_above)
    result = sal.train_step(*batch(sal.model))
    assert torch.isfinite(result.loss)
    assert all(torch.isfinite(p).all() for p in sal.parameters())


def test_width_scaled_rates_divide_the_cross_stream_steps_by_the_ratio():
    """With ``width_scaled_rates`` the W̄, V, V̄ steps (and their decay) are those of rates / r,
    while W's are unchanged: compared against the unscaled rule with the ratios set by hand."""
    ratio, lr, decay = 4, 0.1, 0.5
    runs = []
    for options in ({"width_scaled_rates": True}, {"wbar_lr_ratio": 1 / ratio, "v_lr_ratio": 1 / ratio, "vbar_lr_ratio": 1 / ratio}):
        sal = create_algorithm("sal", relu_mlp(), downstream_ratio=ratio, decay=decay, **options)
        sal.configure_optimizers(lambda groups: torch.optim.SGD(groups, lr=lr))
        sal.train_step(*batch(sal.model))
        runs.append(sal)
    for (name, a), b in zip(runs[0].state_dict().items(), runs[1].state_dict().values(), strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0, msg=name)
    unscaled = create_algorithm("sal", relu_mlp(), downstream_ratio=ratio, decay=decay)
    unscaled.configure_optimizers(lambda groups: torch.optim.SGD(groups, lr=lr))
    unscaled.train_step(*batch(unscaled.model))
    assert not torch.equal(unscaled.levels[0].v, runs[0].levels[0].v)


def test_frozen_matrices_are_buffers_and_everything_is_checkpointed():
    sal = create_algorithm("sal", relu_mlp(), freeze_wbar=True, freeze_vbar=True)
    level = sal.levels[0]
    assert isinstance(level.v, torch.nn.Parameter)
    assert not isinstance(level.wbar, torch.nn.Parameter) and not isinstance(level.vbar, torch.nn.Parameter)
    state = sal.state_dict()
    assert {"levels.0.wbar", "levels.0.v", "levels.0.vbar"} <= set(state)
    clone = create_algorithm("sal", relu_mlp(seed=5), freeze_wbar=True, freeze_vbar=True)
    clone.load_state_dict(state)
    for key, value in clone.state_dict().items():
        assert torch.equal(value, state[key]), key


def test_c1_error_pathway_never_reads_forward_weights():
    def first_layer_update(perturb: bool) -> torch.Tensor:
        model = relu_mlp(seed=3)
        sal = create_algorithm("sal", model)
        def perturb_layer_above(*_):  # after the forward pass, change W^1 behind autograd's back
            model.blocks[1][0].weight.data.add_(torch.randn_like(model.blocks[1][0].weight))

        if perturb:
            model.blocks[-1].register_forward_hook(perturb_layer_above)
        sal.compute_updates(*batch(model))
        return model.blocks[0][1].weight.grad

    assert torch.equal(first_layer_update(False), first_layer_update(True))
    assert create_algorithm("sal", relu_mlp()).flags.no_weight_transport


@pytest.mark.parametrize("bad, message", [
    (dict(downstream_activation="sigmoid"), "unknown downstream_activation 'sigmoid'"),
    (dict(cross_init="identity", downstream_ratio=2), "needs downstream_ratio 1"),
    (dict(decay=-1.0), "'decay' must be non-negative"),
    (dict(downstream_ratio=0), "'downstream_ratio' must be positive"),
    (dict(freeze_v="yes"), "'freeze_v' must be true or false"),
])
def test_bad_hyperparameters_are_named(bad, message):
    with pytest.raises(ConfigError, match=message):
        create_algorithm("sal", relu_mlp(), **bad)


def test_models_other_than_relu_mlps_are_refused():
    with pytest.raises(ConfigError, match="ReLU hidden layers"):
        create_algorithm("sal", small_mlp(activation="tanh"))


def test_modulation_in_the_sgd_case_lowers_the_loss():
    reference = relu_mlp()
    weights = [m.weight.detach() for m in reference.modules() if isinstance(m, torch.nn.Linear)]
    sal = sal_with_feedback(reference, weights, freeze_wbar=True)
    result = sal.modulate(*batch(reference, n=32), step=0.05)
    assert result.loss_after < result.loss_before
    assert result.output.shape == (32, 5)


# ------------------------------------------------------------------ self-assembly and learning
def test_self_assembly_on_digits(tmp_path):
    torch.manual_seed(0)
    data = load_dataset("digits")
    model = create_model("mlp", data.input_shape, data.num_classes, hidden=[64, 64])
    sal = create_algorithm("sal", model, decay=1.0)
    sal.configure_optimizers(lambda groups: torch.optim.SGD(groups, lr=0.01, momentum=0.9))
    x_probe, y_probe = data.train[0][:500], data.train[1][:500]
    history = [{**sal.diagnostics(), **sal.update_alignment(x_probe, y_probe)}]
    loader = BatchLoader(*data.train, batch_size=32, seed=0)
    for epoch in range(8):
        loader.set_epoch(epoch)
        for x, y in loader:
            sal.train_step(x, y)
        history.append({**sal.diagnostics(), **sal.update_alignment(x_probe, y_probe)})
    first, last = history[0], history[-1]
    for l in (1, 2):  # Lemma 1: V̄ → Vᵀ from random; the effective feedback aligns with W
        assert first[f"angle_vbar_vT/{l}"] > 80 and last[f"angle_vbar_vT/{l}"] < 20, (first, last)
        assert first[f"angle_feedback_W/{l}"] > 80 and last[f"angle_feedback_W/{l}"] < 45, (first, last)
    for l in (0, 1):  # below the output layer (whose update is exact), SAL's ΔW turns towards -∇W F
        angles = [h[f"angle_update_grad/{l}"] for h in history]
        assert angles[0] > 80 and min(angles) < 60, angles
    assert plot_diagnostics(history, tmp_path / "sal.png").stat().st_size > 0


def test_sal_learns_digits_with_sgd(tmp_path):
    result = train(algo="sal", model="mlp", dataset="digits", epochs=10, batch_size=32, lr=0.01, optimizer="sgd",
                   model_args={"hidden": [128]}, seed=0, progress=False, out=str(tmp_path / "sal"))
    assert result.summary["final"]["test_acc"] >= 0.90, result.summary["final"]


@pytest.mark.real_data
@pytest.mark.slow
def test_sal_on_real_mnist_in_two_epochs(data_dir, tmp_path):
    result = train(algo="sal", model="mlp", dataset="mnist", data_dir=str(data_dir), epochs=2, batch_size=256,
                   lr=1e-3, optimizer="adam", model_args={"hidden": [200, 200, 200]}, seed=0,
                   progress=False, out=str(tmp_path / "sal"))
    assert result.summary["final"]["test_acc"] >= 0.90, result.summary["final"]
