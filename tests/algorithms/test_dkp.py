"""Direct Kolen-Pollack (BASELINES.md section 10): DFA with direct feedback that learns as a
readout from each layer's input to the logits."""

from __future__ import annotations

import pytest
import torch

from bioplausible.algorithms import create_algorithm
from bioplausible.config import TrainConfig
from bioplausible.errors import ConfigError
from bioplausible.training.optim import OptimizerFactory
from helpers import batch, small_mlp

LR, DECAY = 0.1, 0.5


def plain_sgd(rule):
    """The trainer's optimizer factory (it honours the feedback group's lr_scale), SGD without momentum."""
    return rule.configure_optimizers(OptimizerFactory(TrainConfig(optimizer="sgd", lr=LR, momentum=0.0)))


def train(rule, steps=6):
    for step in range(steps):
        rule.train_step(*batch(rule.model, n=8, seed=step))


def weights(model):
    return [p.detach() for n, p in model.named_parameters() if not n.endswith("feedback")]


# ---------------------------------------------------------------------- equivalences
def test_frozen_feedback_is_dfa():
    # η_B = 0 (and no decay): B never moves and every forward update is DFA's (spec oracle 2).
    dfa = create_algorithm("dfa", small_mlp(seed=0))
    dkp = create_algorithm("dkp", small_mlp(seed=0), feedback_lr_scale=0.0, decay=0.0)
    with torch.no_grad():
        for a, b in zip(dkp.layers, dfa.layers[1:]):  # DFA's first layer's B carries no error
            a.feedback.copy_(b.feedback)
    start = [layer.feedback.detach().clone() for layer in dkp.layers]
    for rule in (dfa, dkp):
        plain_sgd(rule)
        train(rule)
    for a, b in zip(weights(dkp.model), weights(dfa.model)):
        torch.testing.assert_close(a, b, rtol=1e-13, atol=1e-15)
    assert all(torch.equal(b0, layer.feedback) for b0, layer in zip(start, dkp.layers))
    assert not torch.equal(weights(dkp.model)[0], weights(small_mlp(seed=0))[0])


def test_one_hidden_layer_is_kp():
    # With one hidden layer B is the output layer's feedback, its update is W_2's, and both
    # decay alike, so DKP is KP step for step (spec oracle 1) and W_2 - B shrinks by (1 - ηλ).
    kp = create_algorithm("kp", small_mlp(seed=1, hidden=(9,)), decay=DECAY)
    dkp = create_algorithm("dkp", small_mlp(seed=1, hidden=(9,)), decay=DECAY)
    with torch.no_grad():
        dkp.layers[0].feedback.copy_(kp.layers[1].feedback)
    for rule in (kp, dkp):
        plain_sgd(rule)
    w2, b = dkp.model.blocks[1][0].weight, dkp.layers[0].feedback
    for step in range(6):
        gap = (w2 - b).detach().clone()
        for rule in (kp, dkp):
            rule.train_step(*batch(rule.model, n=8, seed=step))
        torch.testing.assert_close(w2 - b, (1 - LR * DECAY) * gap, rtol=1e-12, atol=1e-15)
    for a, c in zip(weights(dkp.model), weights(kp.model)):
        torch.testing.assert_close(a, c, rtol=1e-12, atol=1e-15)
    torch.testing.assert_close(b, kp.layers[1].feedback, rtol=1e-12, atol=1e-15)


def test_feedback_update_is_the_gradient_of_a_direct_readout():
    # ΔB_l = -η_B Eᵀ h_l is the gradient of a zero-initialised readout R_l from h_l added to the
    # logits (spec oracle 3).
    model = small_mlp(seed=2)
    dkp = create_algorithm("dkp", model)
    x, y = batch(model)
    dkp.compute_updates(x, y)

    plain = small_mlp(seed=2)
    inputs = []
    for block in plain.blocks[1:]:
        block.register_forward_pre_hook(lambda m, args: inputs.append(args[0]))
    logits = plain(x)
    readouts = [torch.zeros(5, h.shape[1], dtype=h.dtype, requires_grad=True) for h in inputs]
    logits = logits + sum(h.detach() @ r.T for h, r in zip(inputs, readouts))
    torch.nn.functional.cross_entropy(logits, y).backward()
    for layer, r in zip(dkp.layers, readouts):
        torch.testing.assert_close(layer.feedback.grad, r.grad, rtol=1e-12, atol=1e-15)


# ---------------------------------------------------------------------- C1 and state
def test_c1_probe_error_ignores_the_forward_weights_above():
    # Perturb W_{l+1} after the forward pass: the error reaching h_1 must not change.
    def error_at_first_hidden(perturb):
        model = small_mlp(seed=3)
        rule = create_algorithm("dkp", model)
        seen = {}

        def keep(_, __, output):
            output.retain_grad()
            seen["h"] = output

        def perturb_above(*_):
            if perturb:
                model.blocks[1][0].weight.data.add_(torch.randn_like(model.blocks[1][0].weight))

        model.blocks[0].register_forward_hook(keep)
        model.blocks[-1].register_forward_hook(perturb_above)
        rule.compute_updates(*batch(model))
        return seen["h"].grad

    assert torch.equal(error_at_first_hidden(False), error_at_first_hidden(True))


def test_feedback_is_checkpointed_and_in_its_own_group():
    rule = create_algorithm("dkp", small_mlp(seed=0), feedback_lr_scale=0.25)
    keys = [k for k in rule.state_dict() if k.endswith("feedback")]
    assert len(keys) == 2  # the layers above the first
    (opt,) = plain_sgd(rule)
    lrs = {g["name"]: g["lr"] for g in opt.param_groups}
    assert lrs["feedback"] == pytest.approx(0.25 * LR) and lrs["blocks.0"] == LR


def test_options_are_checked():
    with pytest.raises(ConfigError, match="'feedback_lr_scale' must be non-negative"):
        create_algorithm("dkp", small_mlp(), feedback_lr_scale=-1.0)
