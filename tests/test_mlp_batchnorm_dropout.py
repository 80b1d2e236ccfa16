"""The mlp's optional BatchNorm and dropout (Nøkland & Eidnes 2019's MLP, SLL Table 1)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from bioplausible.errors import ConfigError
from bioplausible.models import create_model


def layer_types(model) -> list[list[type]]:
    return [[type(m) for m in block] for block in model.blocks]


def test_defaults_add_neither_batch_norm_nor_dropout():
    model = create_model("mlp", input_shape=(1, 4, 4), num_classes=3, hidden=[5, 6])
    assert layer_types(model) == [[nn.Flatten, nn.Linear, nn.ReLU], [nn.Linear, nn.ReLU], [nn.Linear]]


def test_batch_norm_sits_between_linear_and_activation_and_dropout_after():
    model = create_model("mlp", input_shape=(1, 4, 4), num_classes=3, hidden=[5, 6], activation="leaky_relu",
                         batch_norm=True, dropout=0.1)
    hidden = [nn.Linear, nn.BatchNorm1d, nn.LeakyReLU, nn.Dropout]
    assert layer_types(model) == [[nn.Flatten, *hidden], hidden, [nn.Linear]]
    assert model.blocks[1][3].p == 0.1
    model.eval()  # dropout off, BN on running statistics: deterministic
    x = torch.randn(2, 1, 4, 4)
    assert torch.equal(model(x), model(x)) and model(x).shape == (2, 3)


@pytest.mark.parametrize("dropout", [-0.1, 1.0, "0.1", True])
def test_bad_dropout_is_named(dropout):
    with pytest.raises(ConfigError, match="mlp: dropout must be a probability"):
        create_model("mlp", input_shape=(4,), num_classes=3, dropout=dropout)


@pytest.mark.parametrize("algo", ["bp", "fa", "dfa", "sll"])
def test_rules_of_the_sll_table_train_the_batch_norm_mlp(algo):
    """DFA's and SLL's dry shape passes run in eval mode: BatchNorm1d cannot take a training
    batch of one, and the dry pass must not move its running statistics."""
    from bioplausible.algorithms import create_algorithm

    torch.manual_seed(0)
    model = create_model("mlp", input_shape=(1, 4, 4), num_classes=3, hidden=[5, 6], activation="leaky_relu",
                         batch_norm=True, dropout=0.1)
    rule = create_algorithm(algo, model)
    assert model.training and not model.blocks[0][2].running_mean.any()
    rule.configure_optimizers(lambda groups: torch.optim.SGD(groups, lr=0.1))
    assert torch.isfinite(rule.train_step(torch.randn(4, 1, 4, 4), torch.tensor([0, 1, 2, 0])).loss)
