"""Perturbation learning: weight perturbation, node perturbation and forward gradients
(Williams 1992; Werfel, Xie & Seung 2003; Baydin et al. 2022; BASELINES.md section 3).

No error is sent anywhere: the network tries a random change, sees how the loss moved (one
global scalar per example), and correlates that with the change it tried.

* **Weight perturbation** (``weight_perturbation``). ``Ξ ~ N(0, σ² I)`` over every trainable
  tensor at once; with antithetic pairs (the default)

      ∇̂θ = (L(θ+Ξ) - L(θ-Ξ)) Ξ / (2σ²),   else   (L(θ+Ξ) - L(θ)) Ξ / σ²,

  averaged over ``samples`` draws, with ``L`` the batch-mean loss (the weights are shared by the
  batch). ``Δθ = -η ∇̂θ``.
* **Node perturbation** (``node_perturbation``): REINFORCE with Gaussian units and the clean
  loss as baseline. The noisy pass adds ``ψ_l ~ N(0, σ² I)`` to every pre-activation ``a_l`` and
  the noise propagates forward; per example ``b``

      ∇̂W_l = 1/(KB) Σ_{k,b} (L̃_{kb} - L_b) ψ_{l,kb} h̃_{l-1,kb}ᵀ / σ²      (bias: without h̃ᵀ)

  with ``h̃`` the presynaptic activity of the noisy pass. Per-example loss differences are
  unbiased and far less noisy than the batch mean. Antithetic draws use ``ψ`` and ``-ψ`` in
  two rows, each with the clean baseline (the rows see different ``h̃``).
* **Forward gradient** (``forward_gradient``): ``v ~ N(0, I)`` over the parameters, the exact
  directional derivative ``∇L·v`` from one forward-mode pass (``torch.func.jvp``), and
  ``∇̂θ = (∇L·v) v``, unbiased for any smooth loss because ``E[vvᵀ] = I``.

The ``samples`` perturbations run as one batched pass (``torch.func.vmap``, or repeated batch
rows for NP), all under ``no_grad``. Both WP and NP estimate the gradient of the
Gaussian-smoothed loss (Stein's identity): exact when the loss is quadratic in the perturbed
block, biased by O(σ²) otherwise; so σ is kept small. WP's variance grows with the number of
weights, NP's with the number of units: WP is practical only for small networks.

Flags ✓✓✗ (DLL Table 1's "perturbation" row). C1: nothing travels backwards, so no weight is
transported. C2: a synapse changes from its own pre/post (noise) activity and one global scalar
(the loss change), the three-factor form DLL counts as local. C3: a clean and a perturbed pass
(or a tangent pass) must be compared, which separates inference from learning.

Only ``mlp`` chains are covered (``supports``): NP adds noise per pre-activation of a Linear
chain, and dropout would make the clean and noisy passes differ by more than the noise.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch.func import functional_call, jvp, vmap

from . import register_algorithm
from ..errors import ConfigError, require_positive
from ._chain import ChainRule, per_example_loss
from .base import Hyperparameters, Plausibility, StepResult

FLAGS = Plausibility(no_weight_transport=True, local_errors=True, no_separate_phases=False)


@dataclass
class PerturbationHyperparameters(Hyperparameters):
    samples: int = 16  # K perturbations per batch (K/2 antithetic pairs)
    sigma: float = 1e-3  # σ; the spec proposes none for WP: small against weights of scale 1/√fan_in
    antithetic: bool = True  # ±ξ pairs (central difference) instead of the clean baseline alone

    def __post_init__(self) -> None:
        super().__post_init__()
        require_positive("perturbation", samples=self.samples, sigma=self.sigma)
        if self.antithetic and self.samples % 2:
            raise ConfigError(f"perturbation: 'samples' must be even with antithetic pairs, got {self.samples}")


@dataclass
class NodePerturbationHyperparameters(PerturbationHyperparameters):
    samples: int = 32  # 16 antithetic pairs (spec)
    sigma: float = 1e-2  # pre-activations of standardised data have RMS ≈ 1: σ ≈ 0.01 RMS (spec)


@dataclass
class ForwardGradientHyperparameters(Hyperparameters):
    # K tangents per batch. One tangent's estimate has variance ≈ n‖∇L‖² for n parameters, and
    # under Adam's per-element normalisation K = 1 is close to a random walk on the digits MLP
    # (6.7% after 3 epochs, 51% with K = 16).
    samples: int = 16

    def __post_init__(self) -> None:
        super().__post_init__()
        require_positive("forward_gradient", samples=self.samples)


class PerturbationRule(ChainRule):
    """What the three share: the mlp check, no autograd, ``.grad`` = the estimate."""

    flags = FLAGS
    update_kind = "manual"  # written under no_grad: the distributed runtime all-reduces .grad

    def trainable(self) -> dict[str, torch.Tensor]:
        return {n: p.detach() for n, p in self.model.named_parameters() if p.requires_grad}

    def batch_loss(self, output: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return per_example_loss(self.hp.loss, output, y).mean()

    def draw(self, x: torch.Tensor):
        """Fresh perturbations for the batch ``x``, from the global (seeded) RNG."""
        raise NotImplementedError

    def gradient_estimate(self, x, y, noise) -> list[torch.Tensor]:
        """The estimate of ∇L for the perturbations ``noise``, in ``model.parameters()`` order
        (taking the perturbations as an argument is what lets the tests average many draws)."""
        raise NotImplementedError

    @torch.no_grad()
    def compute_updates(self, x, y) -> StepResult:
        output = self.model(x)
        estimate = self.gradient_estimate(x, y, self.draw(x))
        for p, g in zip(self.model.parameters(), estimate):
            p.grad = g
        return StepResult(self.batch_loss(output, y), output)


def _along_samples(scalars: torch.Tensor, tensor: torch.Tensor) -> torch.Tensor:
    """``scalars[k]`` times ``tensor[k, ...]``, averaged over k."""
    return (scalars.view(-1, *[1] * (tensor.dim() - 1)) * tensor).mean(0)


@register_algorithm("weight_perturbation")
class WeightPerturbation(PerturbationRule):
    """Weight perturbation: perturb all weights at once, correlate the loss change with the perturbation."""

    name = "weight_perturbation"
    Hyperparameters = PerturbationHyperparameters

    def draw(self, x):
        k = self.hp.samples // 2 if self.hp.antithetic else self.hp.samples
        return {n: self.hp.sigma * torch.randn(k, *p.shape, dtype=p.dtype, device=p.device)
                for n, p in self.trainable().items()}

    @torch.no_grad()
    def gradient_estimate(self, x, y, noise: dict[str, torch.Tensor]) -> list[torch.Tensor]:
        """∇̂θ for every trainable tensor, in ``model.parameters()`` order, from the perturbations
        ``noise`` (``[K, *shape]`` per tensor name; tensors not named are not perturbed and get 0)."""
        theta = self.trainable()

        def loss_at(xi: dict[str, torch.Tensor]) -> torch.Tensor:
            return self.batch_loss(functional_call(self.model, {n: theta[n] + xi[n] for n in xi}, (x,)), y)

        plus = vmap(loss_at)(noise)
        if self.hp.antithetic:
            change = (plus - vmap(loss_at)({n: -xi for n, xi in noise.items()})) / 2
        else:
            change = plus - self.batch_loss(self.model(x), y)
        scale = change / self.hp.sigma**2
        return [_along_samples(scale, noise[n]) if n in noise else torch.zeros_like(p)
                for n, p in self.model.named_parameters()]


@register_algorithm("node_perturbation")
class NodePerturbation(PerturbationRule):
    """Node perturbation: noise on every pre-activation, per-example loss change times noise times input."""

    name = "node_perturbation"
    Hyperparameters = NodePerturbationHyperparameters

    def draw(self, x):
        """``ψ_l`` for the K·B noisy rows (sample-major), antithetic pairs as ``[ψ; -ψ]``."""
        rows = len(x) * (self.hp.samples // 2 if self.hp.antithetic else self.hp.samples)
        noise = []
        for layer in self.layers:
            w = layer.linear.weight
            psi = self.hp.sigma * torch.randn(rows, w.shape[0], dtype=w.dtype, device=w.device)
            noise.append(torch.cat([psi, -psi]) if self.hp.antithetic else psi)
        return noise

    def noisy_forward(self, x: torch.Tensor, noise: list[torch.Tensor | None]):
        """The chain with ``noise[l]`` added to ``a_l`` (None: no noise); returns each layer's input and the output."""
        inputs, h = [], x
        for layer, psi in zip(self.layers, noise):
            h = layer.head(h)
            inputs.append(h)
            a = layer.linear(h)
            h = layer.tail(a if psi is None else a + psi)
        return inputs, h

    @torch.no_grad()
    def gradient_estimate(self, x, y, noise: list[torch.Tensor | None]) -> list[torch.Tensor]:
        """∇̂W_l and ∇̂b_l in ``model.parameters()`` order, from the noise ``ψ_l`` (``[K·B, d_l]``,
        K copies of the batch one after the other; None leaves layer l noiseless and gives 0)."""
        rows = next(n for n in noise if n is not None).shape[0]
        copies = rows // len(x)
        clean = per_example_loss(self.hp.loss, self.model(x), y)
        inputs, out = self.noisy_forward(x.repeat(copies, *[1] * (x.dim() - 1)), noise)
        change = per_example_loss(self.hp.loss, out, y.repeat(copies)) - clean.repeat(copies)
        grads = []
        for layer, psi, h in zip(self.layers, noise, inputs):
            # ∂L/∂a_l estimated per row; weight and bias gradients as BP would form them from it.
            g_a = torch.zeros(rows, layer.linear.out_features, dtype=x.dtype, device=x.device) if psi is None \
                else change[:, None] * psi / self.hp.sigma**2
            grads.append(g_a.T @ h.flatten(1) / rows)
            if layer.linear.bias is not None:
                grads.append(g_a.mean(0))
        return grads


@register_algorithm("forward_gradient")
class ForwardGradient(PerturbationRule):
    """Forward gradient: exact directional derivative along a random tangent (jvp), times the tangent."""

    name = "forward_gradient"
    Hyperparameters = ForwardGradientHyperparameters

    def draw(self, x):
        return {n: torch.randn(self.hp.samples, *p.shape, dtype=p.dtype, device=p.device)
                for n, p in self.trainable().items()}

    @torch.no_grad()
    def gradient_estimate(self, x, y, tangents: dict[str, torch.Tensor]) -> list[torch.Tensor]:
        """``mean_k (∇L·v_k) v_k`` in ``model.parameters()`` order, for tangents ``[K, *shape]`` per tensor."""
        theta = self.trainable()

        def loss_of(params: dict[str, torch.Tensor]) -> torch.Tensor:
            return self.batch_loss(functional_call(self.model, params, (x,)), y)

        def directional(v: dict[str, torch.Tensor]) -> torch.Tensor:
            return jvp(loss_of, (theta,), (v,))[1]  # forward mode: no graph, no backward pass

        slopes = vmap(directional)(tangents)
        return [_along_samples(slopes, tangents[n]) for n, _ in self.model.named_parameters()]
