"""Every registered rule, on an MLP and a CNN: one step gives finite updates for every
trainable tensor and changes the weights."""

from __future__ import annotations

import pytest
import torch

from bioplausible.algorithms import ALGORITHMS, create_algorithm
from bioplausible.errors import ConfigError
from helpers import batch, small_cnn, small_mlp


def sgd(groups):
    return torch.optim.SGD(groups, lr=0.1)


@pytest.mark.parametrize("build", [small_mlp, small_cnn], ids=["mlp", "cnn"])
@pytest.mark.parametrize("name", ALGORITHMS.names())
def test_one_step_updates_every_parameter(name, build):
    model = build(dtype=torch.float32)
    reason = ALGORITHMS.get(name).supports(model)
    if reason is not None:  # a rule for another architecture family must say so, not fail later
        with pytest.raises(ConfigError, match=f"algorithm '{name}' cannot train"):
            create_algorithm(name, model)
        return
    rule = create_algorithm(name, model)
    rule.configure_optimizers(sgd)
    before = {n: p.detach().clone() for n, p in rule.named_parameters()}
    x, y = batch(model)
    result = rule.train_step(x, y)
    assert torch.isfinite(result.loss)
    assert result.output.shape == (len(y), model.num_classes)
    for n, p in rule.named_parameters():
        if p.requires_grad:
            assert p.grad is not None, f"{name}: no update for {n}"
            assert torch.isfinite(p.grad).all(), f"{name}: non-finite update for {n}"
            assert not torch.equal(p.detach(), before[n]), f"{name}: {n} did not change"


@pytest.mark.parametrize("name", ALGORITHMS.names())
def test_rule_declares_flags_and_update_kind(name):
    rule = ALGORITHMS.get(name)
    assert len(rule.flags.symbols()) == 3
    assert rule.update_kind in ("autograd", "manual")
    assert rule.describe()


def test_unknown_rule_and_option_are_named():
    with pytest.raises(ConfigError, match="unknown algorithm 'nope'.*available: .*bp"):
        create_algorithm("nope", small_mlp())
    with pytest.raises(ConfigError, match="algorithm 'kp' has no option 'decy'"):
        create_algorithm("kp", small_mlp(), decy=0.1)
    with pytest.raises(ConfigError, match="'decay' must be non-negative"):
        create_algorithm("kp", small_mlp(), decay=-1.0)
    with pytest.raises(ConfigError, match="unknown loss 'hinge'"):
        create_algorithm("bp", small_mlp(), loss="hinge")
