"""Reward-modulated STDP, rate-based (Mozafari et al. 2018, "First-spike-based visual
categorization using reward-modulated STDP"; BASELINES.md section 6, "non-spiking
simplification").

**What this simplifies.** The original is a spiking network: latency-coded input spikes,
integrate-and-fire neurons, the earliest-spiking neuron decides, and STDP compares spike
*times*. Here no time is simulated:

* a unit "spikes" iff it is among the ``winners`` units of its layer with the largest drive
  ``a = s Wᵀ`` (the first ``k`` to reach threshold, k-WTA); its output is that binary spike
  pattern ``s``, not the model's activation;
* "pre before post" ≔ the presynaptic unit spiked: an input pixel spikes iff ``x_j > threshold``
  (intensity-to-latency coding cut to one spike or none), a hidden unit iff it won;
* the decision is the output unit with the largest drive (one output unit per class; the
  original has ``k`` feature maps per class);
* updates are the sum of the per-example updates of a batch (per example in the original);
  there are no adaptive rates and no dropout of decision maps, and the weights are clipped to
  [0, 1] after each step.

**Learning rule.** Only winners change. For winner ``i`` of example ``b`` with reward ``r``:

    ΔW_ij = w_ij (1 - w_ij) × { a⁺   if pre j spiked, a⁻   otherwise     (r = +1)
                              { a_p⁻ if pre j spiked, a_p⁺ otherwise     (r = -1)

Hidden layers learn unsupervised STDP (``r ≡ +1`` for each of their winners) at
``(stdp_plus, stdp_minus)``; the output layer's single winner gets ``r = +1`` if it is the true
class, else ``-1`` (anti-STDP). The soft bound ``w(1 - w)`` keeps weights that start in [0, 1]
inside it. Weights start at N(0.8, 0.05), and biases are zeroed and frozen (integrate-and-fire
units have none). Defaults are the MNIST network's (Mozafari et al. 2019): R-STDP at
(0.004, -0.003) and (-0.004, 0.0005); hidden STDP at (0.15, -0.1125), the ceiling of its
schedule (``a⁺`` doubling every 500 samples from 0.004 up to 0.15, ``a⁻ = -0.75 a⁺``), taken
from the start here (no schedule). On ``digits`` (one hidden layer of 128, 15 epochs, SGD at
lr 1) the hidden layer at the output's rates barely moves: 46% with it frozen, 51% at 10x those
rates, 63% at these (k = 5 or 10); the output rule alone on the pixels reaches 81%.

The update is written as ``W.grad = -ΔW``: with SGD at learning rate 1 and no momentum the
rates are the paper's; other optimizers rescale them.

Flags ✓✓✓. C1: nothing travels backwards. C2: a synapse changes from its own pre- and
post-synaptic spikes and one global reward. C3: the decision and the update come from the same
single pass.

Only ``mlp`` chains are covered: the rule is written for fully connected layers.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from . import register_algorithm
from ..errors import require_positive
from ._chain import ChainRule
from .base import Hyperparameters, Plausibility, StepResult


@dataclass
class RSTDPHyperparameters(Hyperparameters):
    stdp_plus: float = 0.15  # hidden layers' unsupervised STDP, pre spiked
    stdp_minus: float = -0.1125  # hidden layers' unsupervised STDP, pre silent
    a_plus: float = 0.004  # reward, pre spiked
    a_minus: float = -0.003  # reward, pre silent
    a_punish_minus: float = -0.004  # punishment, pre spiked
    a_punish_plus: float = 0.0005  # punishment, pre silent
    threshold: float = 0.0  # an input pixel spikes iff x_j > threshold
    winners: int = 10  # k of each hidden layer's k-winner-take-all

    def __post_init__(self) -> None:
        super().__post_init__()
        require_positive("rstdp", winners=self.winners)


def rstdp_update(weight: torch.Tensor, pre: torch.Tensor, winners: torch.Tensor, reward: torch.Tensor,
                 rates: tuple[float, float, float, float]) -> torch.Tensor:
    """``ΔW`` summed over the batch. ``pre`` ``[B, d_in]`` is 1 where the presynaptic unit
    spiked, ``winners`` ``[B, d_out]`` 1 for each example's winners, ``reward`` ``[B]`` ±1;
    ``rates`` = (a⁺, a⁻, a_p⁻, a_p⁺)."""
    a_plus, a_minus, a_punish_minus, a_punish_plus = rates
    rewarded = (reward > 0).to(weight.dtype)[:, None]
    win_rewarded, win_punished = winners * rewarded, winners * (1 - rewarded)
    # Σ_b over winners i of example b: the rate in the slot (pre spiked or not, reward sign).
    rate = (a_plus * win_rewarded.T @ pre + a_minus * win_rewarded.T @ (1 - pre)
            + a_punish_minus * win_punished.T @ pre + a_punish_plus * win_punished.T @ (1 - pre))
    return rate * weight * (1 - weight)


def top_k_mask(drive: torch.Tensor, k: int) -> torch.Tensor:
    """1 at each row's ``k`` largest entries (the first ``k`` units to fire), else 0."""
    k = min(k, drive.shape[1])
    return torch.zeros_like(drive).scatter_(1, drive.topk(k, dim=1).indices, 1.0)


@register_algorithm("rstdp")
class RewardModulatedSTDP(ChainRule):
    """Rate-based R-STDP: k-WTA STDP hidden layers, reward-modulated STDP at the output winner."""

    name = "rstdp"
    flags = Plausibility(no_weight_transport=True, local_errors=True, no_separate_phases=True)
    update_kind = "manual"
    Hyperparameters = RSTDPHyperparameters

    def __init__(self, model, **hyperparameters):
        super().__init__(model, **hyperparameters)
        with torch.no_grad():
            for layer in self.layers:
                layer.linear.weight.normal_(0.8, 0.05).clamp_(0, 1)
                if layer.linear.bias is not None:
                    layer.linear.bias.zero_().requires_grad_(False)

    @property
    def rates(self) -> tuple[float, float, float, float]:
        hp = self.hp
        return hp.a_plus, hp.a_minus, hp.a_punish_minus, hp.a_punish_plus

    @property
    def hidden_rates(self) -> tuple[float, float, float, float]:
        """Unsupervised STDP = R-STDP with r ≡ +1, so the punishment slots are never used."""
        return self.hp.stdp_plus, self.hp.stdp_minus, 0.0, 0.0

    @torch.no_grad()
    def spikes(self, x: torch.Tensor) -> tuple[list[torch.Tensor], list[torch.Tensor], torch.Tensor]:
        """Every layer's presynaptic spikes and winners, and the output drive (the class scores)."""
        s = (self.layers[0].head(x) > self.hp.threshold).to(x.dtype)
        pres, wins = [], []
        for layer in self.layers[:-1]:
            pres.append(s)
            s = top_k_mask(layer.linear(s), self.hp.winners)
            wins.append(s)
        pres.append(s)
        return pres, wins, self.layers[-1].linear(s)

    @torch.no_grad()
    def predict(self, x: torch.Tensor) -> torch.Tensor:
        return self.spikes(x)[2]

    @torch.no_grad()
    def compute_updates(self, x, y) -> StepResult:
        pres, wins, drive = self.spikes(x)
        decision = top_k_mask(drive, 1)
        reward = torch.where(drive.argmax(1) == y, 1.0, -1.0).to(x.dtype)
        wins.append(decision)
        hidden = len(self.layers) - 1
        rewards = [torch.ones_like(reward)] * hidden + [reward]  # hidden: r ≡ +1
        rates = [self.hidden_rates] * hidden + [self.rates]
        for layer, pre, win, r, a in zip(self.layers, pres, wins, rewards, rates):
            layer.linear.weight.grad = -rstdp_update(layer.linear.weight, pre, win, r, a)
        # Reported loss: the error rate of the decisions (R-STDP optimises no differentiable loss).
        return StepResult((reward < 0).to(x.dtype).mean(), drive)

    @torch.no_grad()
    def after_step(self) -> None:
        for layer in self.layers:
            layer.linear.weight.clamp_(0, 1)
