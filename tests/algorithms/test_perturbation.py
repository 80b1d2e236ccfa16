"""Weight perturbation, node perturbation and forward gradients (BASELINES.md section 3).

Unbiasedness oracles: the mean estimate over many perturbations equals the autograd gradient
within Monte Carlo error. The estimate is averaged over ``CHUNKS`` independent chunks of
``PER_CHUNK`` perturbations; the standard error comes from the spread of the chunk means, and
the test requires ‖mean - ∇L‖ ≤ 4·‖SE‖ (for an unbiased estimator E‖mean - ∇L‖² = ‖SE‖², and
with tens of coordinates the ratio concentrates near 1, so 4 is far in the tail) and ‖SE‖ ≤ 5%
of ‖∇L‖ (so the check has the power to see a bias: the nonlinear WP case below, biased by
O(σ²), fails it). Float64 tiny nets with fixed seeds: deterministic."""

from __future__ import annotations

import pytest
import torch

from bioplausible.algorithms import create_algorithm
from bioplausible.errors import ConfigError
from bioplausible.models import create_model
from helpers import batch, small_mlp

CHUNKS, PER_CHUNK = 100, 400
SIGMA = 0.5  # large on purpose: exactness must not rely on σ → 0 where the loss is quadratic


def true_gradient(rule, x, y) -> torch.Tensor:
    model = rule.model
    model.zero_grad()
    rule.loss(model(x), y).backward()
    grads = torch.cat([p.grad.flatten() for p in model.parameters()])
    model.zero_grad()
    return grads


def chunk_means(estimate) -> torch.Tensor:
    return torch.stack([torch.cat([g.flatten() for g in estimate()]) for _ in range(CHUNKS)])


def mismatch(means: torch.Tensor, truth: torch.Tensor, only: torch.Tensor | None = None) -> tuple[float, float]:
    """‖mean - truth‖ / ‖SE‖ and ‖SE‖ / ‖truth‖, over the coordinates in ``only`` (all by default)."""
    only = torch.ones_like(truth, dtype=torch.bool) if only is None else only
    mean, se = means.mean(0)[only], means.std(0)[only] / CHUNKS**0.5
    return ((mean - truth[only]).norm() / se.norm()).item(), (se.norm() / truth[only].norm()).item()


def net(activation: str, hidden=(5,)):
    return small_mlp(seed=2, hidden=hidden, activation=activation)


def mask_of(model, names: list[str]) -> torch.Tensor:
    return torch.cat([torch.full((p.numel(),), n in names) for n, p in model.named_parameters()])


# ---------------------------------------------------------------------- weight perturbation
def wp_first_layer(activation: str, antithetic: bool, sigma: float = SIGMA) -> tuple[float, float]:
    """WP of ``W_1`` alone in a 16-5-5 net with the squared error."""
    model = net(activation)
    rule = create_algorithm("weight_perturbation", model, loss="mse", sigma=sigma, antithetic=antithetic)
    x, y = batch(model, n=8)
    name, w = next(iter(model.named_parameters()))
    torch.manual_seed(0)
    means = chunk_means(lambda: rule.gradient_estimate(
        x, y, {name: sigma * torch.randn(PER_CHUNK, *w.shape, dtype=w.dtype)}))
    only = mask_of(model, [name])
    assert (means[:, ~only] == 0).all()  # unperturbed tensors get no update
    return mismatch(means, true_gradient(rule, x, y), only)


@pytest.mark.parametrize("antithetic, sigma", [(True, SIGMA), (False, 0.02)], ids=["central", "forward"])
def test_weight_perturbation_of_a_linear_layer_is_unbiased(antithetic, sigma):
    # Linear net + squared error: the loss is quadratic in W_1, so Stein's identity is exact at
    # any σ. The one-sided difference adds the zero-mean term ½ΞᵀHΞ·Ξ/σ², whose variance grows
    # with σ²: at σ = 0.5 its SE is 28% of the gradient (7% at 0.1), so it is checked at σ = 0.02.
    ratio, power = wp_first_layer("identity", antithetic, sigma)
    assert power < 0.05 and ratio < 4, (ratio, power)


def test_weight_perturbation_is_biased_where_the_loss_is_not_quadratic():
    # tanh hidden layer at σ = 0.5: the spec measured a 46% bias; the same check must see it.
    ratio, power = wp_first_layer("tanh", antithetic=True)
    assert power < 0.05 and ratio > 4, (ratio, power)


# ---------------------------------------------------------------------- node perturbation
def np_at(layer: int, activation: str) -> tuple[float, float]:
    model = net(activation)
    rule = create_algorithm("node_perturbation", model, loss="mse", sigma=SIGMA, antithetic=False)
    x, y = batch(model, n=8)
    widths = [l.linear.out_features for l in rule.layers]

    def estimate():
        noise = [None] * len(widths)
        noise[layer] = SIGMA * torch.randn(PER_CHUNK * len(x), widths[layer], dtype=x.dtype)
        return rule.gradient_estimate(x, y, noise)

    torch.manual_seed(0)
    means = chunk_means(estimate)
    block = f"blocks.{layer % len(widths)}."
    only = mask_of(model, [n for n, _ in model.named_parameters() if n.startswith(block)])
    assert (means[:, ~only] == 0).all()  # noiseless layers get no update
    return mismatch(means, true_gradient(rule, x, y), only)


@pytest.mark.parametrize("activation", ["tanh", "identity"])
def test_node_perturbation_at_the_output_is_unbiased(activation):
    # The squared error is quadratic in the output pre-activation whatever lies below it.
    ratio, power = np_at(-1, activation)
    assert power < 0.05 and ratio < 4, (ratio, power)


def test_node_perturbation_at_a_linear_hidden_layer_is_unbiased():
    # Linear layers above: the loss is quadratic in the hidden pre-activation too.
    ratio, power = np_at(0, "identity")
    assert power < 0.05 and ratio < 4, (ratio, power)


def test_node_perturbation_rows_are_sample_major_copies_of_the_batch():
    # Zero noise: every noisy row equals its clean row, so every estimate is exactly 0.
    model = net("tanh")
    rule = create_algorithm("node_perturbation", model, samples=4)
    x, y = batch(model, n=3)
    noise = [torch.zeros(12, l.linear.out_features, dtype=x.dtype) for l in rule.layers]
    assert all((g == 0).all() for g in rule.gradient_estimate(x, y, noise))
    assert [n.shape[0] for n in rule.draw(x)] == [12, 12]  # 2 antithetic pairs x 3 examples


# ---------------------------------------------------------------------- forward gradient
def test_forward_gradient_is_unbiased_for_a_nonlinear_net():
    # E[(∇L·v) v] = E[v vᵀ] ∇L = ∇L for any smooth loss: tanh net, cross-entropy, all tensors.
    # A 3-4-4-3 net: the estimator's variance grows with the parameter count (here 51).
    torch.manual_seed(2)
    model = create_model("mlp", input_shape=(3,), num_classes=3, hidden=[4, 4], activation="tanh").double()
    rule = create_algorithm("forward_gradient", model)
    x, y = batch(model, n=8)
    params = dict(model.named_parameters())
    torch.manual_seed(0)
    means = chunk_means(lambda: rule.gradient_estimate(
        x, y, {n: torch.randn(PER_CHUNK, *p.shape, dtype=p.dtype) for n, p in params.items()}))
    ratio, power = mismatch(means, true_gradient(rule, x, y))
    assert power < 0.05 and ratio < 4, (ratio, power)


def test_forward_gradient_slope_is_the_exact_directional_derivative():
    model = net("tanh")
    rule = create_algorithm("forward_gradient", model)
    x, y = batch(model, n=4)
    v = {n: torch.randn(1, *p.shape, dtype=p.dtype) for n, p in model.named_parameters()}
    estimate = torch.cat([g.flatten() for g in rule.gradient_estimate(x, y, v)])
    flat_v = torch.cat([t.flatten() for t in v.values()])
    slope = true_gradient(rule, x, y) @ flat_v
    torch.testing.assert_close(estimate, slope * flat_v, rtol=1e-12, atol=1e-14)


# ---------------------------------------------------------------------- locality
@pytest.mark.parametrize("name", ["weight_perturbation", "node_perturbation", "forward_gradient"])
def test_no_autograd_graph_crosses_a_layer(name):
    model = small_mlp(seed=0)
    rule = create_algorithm(name, model)
    seen = []
    for layer in rule.layers:
        layer.linear.register_forward_hook(lambda m, args, out: seen.append((args[0].requires_grad, out.grad_fn)))
    rule.compute_updates(*batch(model))
    assert len(seen) >= len(rule.layers)
    assert all(not needs and fn is None for needs, fn in seen)


def test_options_are_checked():
    with pytest.raises(ConfigError, match="'samples' must be even"):
        create_algorithm("node_perturbation", small_mlp(), samples=3)
    with pytest.raises(ConfigError, match="'sigma' must be positive"):
        create_algorithm("weight_perturbation", small_mlp(), sigma=0.0)
    with pytest.raises(ConfigError, match="cannot train"):
        create_algorithm("node_perturbation", small_mlp().__class__(
            [torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(16, 5), torch.nn.Dropout(0.1))], (1, 4, 4), 5))
