"""Learning: every rule learns digits; BP and FA reach the issue's bars on real MNIST.

These train real models, so they take seconds each; the MNIST test needs the datasets
directory and fails (not skips) under CI=true without it (see conftest.data_dir)."""

from __future__ import annotations

import pytest

from bioplausible import train
from bioplausible.algorithms import ALGORITHMS
from bioplausible.models import create_model


# Rules for another architecture (dep, dbptt: the dendritic network) test learning in their own files.
MLP_RULES = [n for n in ALGORITHMS.names() if ALGORITHMS.get(n).supports(create_model("mlp", (1, 8, 8), 10)) is None]

# The shared recipe: Adam 1e-3, 15 epochs, one hidden layer of 128, and the bar every BP-like
# rule must clear. A rule that learns by a different mechanism states its own settings and bar
# here, with the reason (chance on digits is 10%).
DEFAULT_RECIPE = {"settings": {}, "bar": 0.90}
RECIPES: dict[str, dict] = {
    # Perturbation, Hebbian, R-STDP (measured with seed 0 on this recipe unless stated):
    # Weight perturbation: 16 samples per step for 9.5k weights, so each step sees a very noisy
    # gradient estimate. 80.0% measured; bar 60%, i.e. 50 points above chance.
    "weight_perturbation": {"settings": {}, "bar": 0.60},
    # Node perturbation: noise on 138 units only, so it is BP-like here. 95.8% measured.
    "node_perturbation": {"settings": {}, "bar": 0.90},
    # Forward gradient: 16 tangent passes per step, so 5 epochs to keep the test short; the
    # estimate's variance grows with the parameter count. 65.3% measured; bar 45%.
    "forward_gradient": {"settings": {"epochs": 5}, "bar": 0.45},
    # Hebbian (SoftHebb by default) and random features: a linear readout on a hidden layer that
    # is not trained for the task. 95.8% and 92.5% measured; bar 80%.
    "hebbian": {"settings": {}, "bar": 0.80},
    "random_features": {"settings": {}, "bar": 0.80},
    # R-STDP: winner-take-all STDP features and a reward-gated readout, with the paper's rates,
    # so plain SGD at lr 1 (Adam's rescaling gives 38.6%). 63.3% measured; it swings by ±5
    # points from epoch to epoch; bar 40%, i.e. 30 points above chance.
    "rstdp": {"settings": {"optimizer": "sgd", "lr": 1.0, "momentum": 0.0}, "bar": 0.40},
    # PEPITA (96.7% measured) and DKP (97.2%) take the shared recipe and bar.
    # The issue's bar for PC is on its FPA variant (BP's errors at equilibrium); the default
    # variant is standard PC, whose other variants test_pc.py trains on digits.
    "pc": {"settings": {"algo_args": {"variant": "fpa"}}, "bar": 0.90},
    # Two hidden layers: with one, DTP's only hidden target is the penultimate gradient step and
    # no inverse is trained, so the recipe would test BP. 96.9% measured.
    "dtp": {"settings": {"model_args": {"hidden": [128, 128]}}, "bar": 0.90},
    # Local losses (local_pred 96.9%, local_sim 97.2%, local_predsim 96.9% measured) and SigProp
    # (96.7%) take the shared recipe; the issue's bar for local losses is BP's 90%, and SigProp is
    # held to it too (80 points above chance).
    # Forward-Forward predicts from the goodness of every layer but the first, so it needs two
    # hidden layers (with one, only the 10-unit output block would vote); lr 3e-3 and a label
    # value of 2 (about the standardised digits' maximum, 1.85; with 1 the label is one faint
    # pixel among 64 and three seeds gave 89-94%). 94.4% measured (92.2% before the loss took
    # Hinton's sum-goodness logit, algorithms/ff.py).
    "ff": {"settings": {"lr": 3e-3, "model_args": {"hidden": [256, 256]}, "algo_args": {"label_value": 2.0}},
           "bar": 0.90},
}


def digits_recipe(algo: str) -> tuple[dict, float]:
    """The ``train`` settings of ``algo``'s digits run and the accuracy it must reach."""
    recipe = RECIPES.get(algo, DEFAULT_RECIPE)
    settings = {"model": "mlp", "dataset": "digits", "seed": 0, "progress": False, "epochs": 15, "batch_size": 32,
                "lr": 1e-3, "model_args": {"hidden": [128]}, **recipe["settings"]}
    return settings, recipe["bar"]


@pytest.mark.parametrize("algo", MLP_RULES)
def test_every_rule_learns_digits(algo, tmp_path):
    settings, bar = digits_recipe(algo)
    result = train(algo=algo, out=str(tmp_path / algo), **settings)
    assert result.summary["final"]["test_acc"] >= bar, result.summary["final"]


@pytest.mark.real_data
@pytest.mark.slow
@pytest.mark.parametrize("algo, bar", [("bp", 0.97), ("fa", 0.95)])
def test_mlp_on_real_mnist_in_two_epochs(algo, bar, data_dir, tmp_path):
    result = train(algo=algo, model="mlp", dataset="mnist", data_dir=str(data_dir), epochs=2, batch_size=64,
                   lr=1e-3, model_args={"hidden": [256]}, seed=0, progress=False, out=str(tmp_path / algo))
    assert result.summary["final"]["test_acc"] >= bar, result.summary["final"]
