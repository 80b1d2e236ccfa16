"""Local losses (BASELINES.md section 1), grouped by oracle: the similarity target in closed
form; the pred head's gradient in closed form and BP equivalence of a pred block whose head is
the output layer; locality (each loss reaches only its own unit, the per-unit schedule equals
one backward of the summed losses); the C1 probe with the heads counted as forward weights;
a quick CNN check. Learning on digits runs in tests/test_learning.py (default recipe, ≥ 90%)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from bioplausible.algorithms import ALGORITHMS, create_algorithm
from bioplausible.algorithms.local_losses import similarity, similarity_target
from bioplausible.errors import ConfigError
from bioplausible.models import create_model
from layerwise_checks import (assert_schedule_equals_summed_backward, assert_steps_reduce_every_unit_loss,
                              assert_unit_passes_on_no_graph, owner, sgd0, unit_losses)
from helpers import batch, small_cnn, small_mlp

RULES = ["local_pred", "local_sim", "local_predsim"]


def dropout_mlp(seed: int = 0):
    torch.manual_seed(seed)
    return create_model("mlp", input_shape=(1, 4, 4), num_classes=5, hidden=[12, 9], activation="tanh",
                        batch_norm=True, dropout=0.2).double()


BUILDS = {"mlp": small_mlp, "cnn": small_cnn, "mlp-bn-dropout": dropout_mlp}


# ---------------------------------------------------------------------- closed forms
@pytest.mark.parametrize("C", [2, 5, 10])
def test_similarity_target_is_one_for_same_class_and_minus_one_over_c_minus_one_otherwise(C):
    y = torch.randint(0, C, (40,), generator=torch.Generator().manual_seed(C))
    target = similarity_target(y, C, torch.float64)
    same = y[:, None] == y[None, :]
    expected = torch.where(same, torch.tensor(1.0, dtype=torch.float64), torch.tensor(-1.0 / (C - 1), dtype=torch.float64))
    torch.testing.assert_close(target, expected, rtol=0, atol=1e-12)


def test_similarity_centres_rows_over_features_and_normalises_them():
    z = torch.randn(6, 3, 2, 2, dtype=torch.float64)
    rows = z.flatten(1)
    rows = rows - rows.mean(1, keepdim=True)
    rows = rows / rows.norm(dim=1, keepdim=True)
    torch.testing.assert_close(similarity(z), rows @ rows.T, rtol=0, atol=1e-12)
    assert not torch.allclose(similarity(z), similarity(z - z.mean(0)))  # not centred over the batch


def test_pred_head_gradient_equals_its_closed_form():
    rule = create_algorithm("local_pred", small_mlp())
    x, y = batch(rule.model)
    h = rule.forward_unit(0, x)
    loss, _, scores = rule.unit_loss(0, h, None, y)
    head = rule.pred_heads[0].decoder
    g_w, g_b = torch.autograd.grad(loss, [head.weight, head.bias])
    err = (scores.softmax(-1) - F.one_hot(y, 5)) / len(y)  # ∂CE/∂ŷ, batch mean
    torch.testing.assert_close(g_w, err.T @ h, rtol=0, atol=1e-10)
    torch.testing.assert_close(g_b, err.sum(0), rtol=0, atol=1e-10)


def test_pred_block_whose_head_is_the_output_layer_gets_the_bp_update():
    model = small_mlp(hidden=(12,))
    rule = create_algorithm("local_pred", model)
    with torch.no_grad():  # make D_0 the network's own output layer
        rule.pred_heads[0].decoder.weight.copy_(model.blocks[1][0].weight)
        rule.pred_heads[0].decoder.bias.copy_(model.blocks[1][0].bias)
    rule.configure_optimizers(sgd0)
    x, y = batch(model)
    rule.train_step(x, y)
    local = {"w": model.blocks[0][1].weight.grad.clone(), "d": rule.pred_heads[0].decoder.weight.grad.clone()}
    model.zero_grad(set_to_none=True)
    F.cross_entropy(model(x), y).backward()
    torch.testing.assert_close(local["w"], model.blocks[0][1].weight.grad, rtol=0, atol=1e-12)
    torch.testing.assert_close(local["d"], model.blocks[1][0].weight.grad, rtol=0, atol=1e-12)


# ---------------------------------------------------------------------- locality
@pytest.mark.parametrize("build", BUILDS)
@pytest.mark.parametrize("name", RULES)
def test_each_unit_loss_reaches_only_its_own_unit(name, build):
    rule = create_algorithm(name, BUILDS[build]())
    names, params = zip(*rule.named_parameters())
    own = owner(rule)
    torch.manual_seed(3)
    for i, loss in enumerate(unit_losses(rule, *batch(rule.model))):
        for n, g in zip(names, torch.autograd.grad(loss, params, retain_graph=True, allow_unused=True)):
            if own[n] != i:
                assert g is None or not g.any(), f"loss of unit {i} reaches {n}"
            elif "running" not in n:
                assert g is not None and g.any(), f"loss of unit {i} does not reach its own {n}"


@pytest.mark.parametrize("build", BUILDS)
@pytest.mark.parametrize("name", RULES)
def test_per_unit_schedule_equals_one_backward_of_the_summed_losses(name, build):
    rule = create_algorithm(name, BUILDS[build]())
    assert_schedule_equals_summed_backward(rule, *batch(rule.model))  # the same dropout masks in both


@pytest.mark.parametrize("name", RULES)
def test_the_activity_passed_on_carries_no_graph(name):
    rule = create_algorithm(name, small_cnn())
    assert_unit_passes_on_no_graph(rule, *batch(rule.model))


def test_the_loss_reads_the_activity_before_dropout():
    torch.manual_seed(0)
    model = create_model("mlp", input_shape=(1, 4, 4), num_classes=5, hidden=[12, 9], dropout=0.5).double()
    rule = create_algorithm("local_pred", model)
    rule.train()
    x, _ = batch(rule.model)
    h = rule.forward_unit(0, x)
    rule.eval()
    torch.testing.assert_close(h, rule.forward_unit(0, x))  # no dropout inside unit 0 ...
    rule.train()
    torch.manual_seed(0)
    upper = rule.forward_unit(1, h)
    rule.eval()
    assert not torch.allclose(upper, rule.forward_unit(1, h))  # ... it is applied on entering unit 1


# ---------------------------------------------------------------------- C1 probe
def error_at_first_block(name: str, perturb: bool) -> torch.Tensor:
    """The error reaching h_0 from its own loss, with the heads of unit 0 (forward weights of
    the auxiliary networks) perturbed after their forward pass, or not."""
    torch.manual_seed(0)
    rule = create_algorithm(name, small_mlp(seed=3))
    rule.configure_optimizers(sgd0)
    seen = {}

    def keep(_, __, output):
        output.retain_grad()
        seen["h"] = output

    def perturb_after_forward(module, *_):
        if perturb:  # .data: change the weights without autograd noticing
            for p in module.parameters():
                p.data.add_(torch.randn_like(p))

    rule.model.blocks[0][-1].register_forward_hook(keep)
    for head in rule.unit_modules(0):
        head.register_forward_hook(perturb_after_forward)
    x, y = batch(rule.model)
    rule.train_unit(0, x, None, y)
    return seen["h"].grad


@pytest.mark.parametrize("name", RULES)
def test_c1_probe_with_the_heads_as_forward_weights_matches_the_declared_flag(name):
    unchanged = torch.equal(error_at_first_block(name, False), error_at_first_block(name, True))
    assert unchanged == ALGORITHMS.get(name).flags.no_weight_transport  # ✗: the heads' transposes carry it


# ---------------------------------------------------------------------- CNN and options
@pytest.mark.parametrize("name", RULES)
def test_a_few_steps_on_a_cnn_reduce_every_unit_loss(name):
    rule = create_algorithm(name, small_cnn())
    assert_steps_reduce_every_unit_loss(rule, *batch(rule.model, n=32))


def test_pred_head_pools_conv_maps_down_to_dim_in_decoder():
    model = create_model("dll_cnn_mnist", (1, 28, 28), 10)
    rule = create_algorithm("local_pred", model)
    # 32×12×12 = 4608 > 4096: the height is halved once (32·6·12 = 2304); 64×5×5 and 16×3×3 fit.
    assert [h.pooled for h in rule.pred_heads] == [(6, 12), (5, 5), (3, 3), None]
    small = create_algorithm("local_pred", create_model("dll_cnn_mnist", (1, 28, 28), 10), dim_in_decoder=64)
    assert all(h.decoder.in_features <= 64 for h in small.pred_heads[:3])


def test_options_are_checked():
    with pytest.raises(ConfigError, match="'beta' must be in"):
        create_algorithm("local_predsim", small_mlp(), beta=1.5)
    with pytest.raises(ConfigError, match="'dim_in_decoder'"):
        create_algorithm("local_pred", small_mlp(), dim_in_decoder=0)
    with pytest.raises(ConfigError, match="'loss' must be 'ce'"):
        create_algorithm("local_sim", small_mlp(), loss="mse")
