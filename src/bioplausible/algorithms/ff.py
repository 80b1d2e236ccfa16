"""Forward-Forward (Hinton 2022, "The Forward-Forward algorithm: some preliminary
investigations"), supervised version, as resolved in BASELINES.md section 7.

The label is written into the input: the first ``C`` entries of the flattened example are
replaced by a one-hot code of value ``label_value`` (a fixed value, not the batch maximum).
*Positive* data carry the true label ``y``, *negative* data a wrong one,

    y_neg = (y + U{1, ..., C-1}) mod C,

which is uniform over the ``C-1`` wrong labels and never equals ``y`` (the public
``y[randperm]`` draws the true label about 1 time in C).

Every model block is a layer trained on its own goodness. Between layers the activity is
normalised by its length, so only its direction reaches the next layer and goodness cannot leak
upward:

    x̂_{l-1} = h_{l-1} / (rms(h_{l-1}) + ε),   rms(h) = ‖h‖/√d   (l ≥ 2; layer 1 reads the labelled input)
    h_l = block_l(sg(x̂_{l-1})),   G_l = mean_j h_{l,j}²,   p(positive) = σ(d_l (G_l - θ))
    ℓ_l = mean_pos softplus(d_l (θ - G_l)) + mean_neg softplus(d_l (G_l - θ))

This is the spec's ``h/(‖h‖ + ε)`` up to the constant √d: each entry of ``x̂`` stays of order
1, as the blocks' initialisation expects (with unit length the entries are 1/√d and on digits
the layers above the first barely learned: 7.5% test accuracy).

The goodness is the *mean* square over a layer's ``d_l`` units (over channels and pixels for conv
maps) with a threshold per unit, θ = 0.5 by default, so one θ serves layers of every width, and
0.5 is reachable by bounded activations (tanh: G < 1), which the spec's θ = 2 would not be. The
logit is ``d_l (G_l - θ) = Σ_j h² - θ d_l``: the spec's (Hinton's) sum goodness against the
threshold θ·d_l. The logit ``G_l - θ`` alone would stay within ±θ for tanh units, so the loss
would be almost linear in G and never concentrate on the examples still on the wrong side: on the
DLL MNIST MLP (tanh, 1 epoch) the loss ended at 1.35 (chance: 2 ln 2 = 1.39), the third hidden
layer alone classified 64% (80% with the sum) and the whole net 85.2% (86.5%). The model's
output block is a layer like the others (goodness of its linear outputs); the rule never reads
its outputs as class scores.

Prediction: for every label ``c`` the input carrying ``c`` runs through the net and the
goodness of every layer *except the first* is summed; the class is the argmax. Here a layer's
goodness is Hinton's sum of squares ``Σ_j h_{l,j}² = d_l G_l``, so layers count in proportion
to their width (on digits, 2×256 hidden, this beat the sum of means by 2-5 points: the
10-unit output block separates positives from negatives worst and should weigh least).

During training the same candidate stream (the batch with each of the C labels, under
``no_grad``) runs beside the positive and negative streams so that a training step reports
class scores; it costs C extra forward passes per step and affects no update.

All layers train together on every minibatch (not greedily), each with its own optimizer
stepped right after its forward (:class:`LayerwiseRule`).

Flags (DLL Table 1, "Forward-Forward" ✓✓✓):

* C1 ✓: there is no backward pathway between layers; a layer's update reads its input and its
  own activity only (every layer's input is detached: tested).
* C2 ✓: the update of ``W_l`` is a function of the goodness of layer ``l`` and its input.
* C3 ✓: the positive and negative passes are two forward passes that Hinton argues can be
  separated in time (e.g. awake and asleep); no backward phase.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from . import register_algorithm
from ..errors import ConfigError
from .base import Hyperparameters, Plausibility
from .layerwise import LayerwiseRule


@dataclass
class FFHyperparameters(Hyperparameters):
    threshold: float = 0.5  # θ on the mean goodness of a layer (per unit)
    label_value: float = 1.0  # value of the one-hot label written into the input
    eps: float = 1e-8  # ε in the length normalisation between layers

    def __post_init__(self) -> None:
        super().__post_init__()
        for name in ("threshold", "label_value", "eps"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, numbers.Real) or not value > 0:
                raise ConfigError(f"ff: '{name}' must be a positive number, got {value!r}")


def goodness(h: torch.Tensor) -> torch.Tensor:
    """``G = mean_j h_j²`` per example, over every non-batch dimension (trained against θ)."""
    return h.flatten(1).pow(2).mean(dim=1)


def squared_activity(h: torch.Tensor) -> torch.Tensor:
    """``Σ_j h_j² = d·G``: Hinton's goodness, what the prediction sums over layers."""
    return h.flatten(1).pow(2).sum(dim=1)


@register_algorithm("ff")
class ForwardForward(LayerwiseRule):
    """Forward-Forward: label in the input, per-layer goodness of positive vs negative data."""

    name = "ff"
    flags = Plausibility(no_weight_transport=True, local_errors=True, no_separate_phases=True)
    Hyperparameters = FFHyperparameters

    @classmethod
    def supports(cls, model: nn.Module) -> str | None:
        reason = super().supports(model)
        if reason is None and math.prod(model.input_shape) < model.num_classes:
            return f"the label is written into the first {model.num_classes} input entries, but an example has only {math.prod(model.input_shape)}"
        return reason

    def __init__(self, model, **hyperparameters):
        super().__init__(model, **hyperparameters)
        self.units = [[block] for block in model.blocks]

    # ------------------------------------------------------------------ data
    def embed(self, x: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """``x`` with its first C entries replaced by the one-hot code of ``labels``."""
        flat = x.flatten(1).clone()
        flat[:, :self.model.num_classes] = 0
        flat[torch.arange(len(x), device=x.device), labels] = self.hp.label_value
        return flat.view_as(x)

    def negative_labels(self, y: torch.Tensor) -> torch.Tensor:
        """A wrong label for every example, uniform over the C-1 wrong ones (global RNG)."""
        C = self.model.num_classes
        return (y + torch.randint(1, C, y.shape, device=y.device)) % C

    def streams(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The training streams entering layer 0: positive, negative and candidate data."""
        return self.embed(x, y), self.embed(x, self.negative_labels(y)), self.candidates(x)

    def candidates(self, x: torch.Tensor) -> torch.Tensor:
        """Every example with each of the C labels: row ``b·C + c`` carries label ``c``."""
        C = self.model.num_classes
        labels = torch.arange(C, device=x.device).repeat(len(x))
        return self.embed(x.repeat_interleave(C, dim=0), labels)

    # ------------------------------------------------------------------ layers
    def layer(self, i: int, h: torch.Tensor) -> torch.Tensor:
        """Layer ``i`` on one stream: length normalisation (from the second layer on), then the block."""
        if i > 0:
            rms = h.flatten(1).pow(2).mean(dim=1).sqrt().view(-1, *[1] * (h.dim() - 1))
            h = h / (rms + self.hp.eps)
        for block in self.units[i]:
            h = block(h)
        return h

    def forward_unit(self, i: int, h):
        """Layer ``i`` on every stream: ``(positive, negative, candidates)`` in training;
        ``(candidates, scores)`` in evaluation, which starts from the raw input at layer 0
        (so a pipeline stage can evaluate from the stream alone)."""
        if isinstance(h, torch.Tensor):
            h = (self.candidates(h), torch.zeros(len(h), self.model.num_classes, device=h.device, dtype=h.dtype))
        if len(h) == 2:
            candidates, scores = h
            candidates = self.layer(i, candidates)
            if i > 0:  # the first layer's goodness is left out of the prediction
                scores = scores + squared_activity(candidates).view(len(scores), -1)
            return candidates, scores
        positive, negative, candidates = h
        with torch.no_grad():  # only reports class scores; never part of an update
            candidates = self.layer(i, candidates)
        return self.layer(i, positive), self.layer(i, negative), candidates

    def train_unit(self, i: int, h, carry, y: torch.Tensor):
        if i == 0:  # the first stage builds the three labelled streams from the raw input
            h = self.streams(h, y)
        return super().train_unit(i, h, carry, y)

    def unit_loss(self, i: int, h, scores, y: torch.Tensor):
        """``ℓ_l``; the carry is the candidate stream's goodness summed over layers ≥ 2 (the class scores)."""
        positive, negative, candidates = h
        theta, d = self.hp.threshold, positive[0].numel()  # the logit is d (G - θ): see the module doc
        loss = F.softplus(d * (theta - goodness(positive))).mean() + F.softplus(d * (goodness(negative) - theta)).mean()
        if scores is None:
            scores = torch.zeros(len(y), self.model.num_classes, device=y.device, dtype=positive.dtype)
        if i > 0:  # the first layer's goodness is left out of the prediction
            scores = scores + squared_activity(candidates).view(len(y), -1)
        return loss, scores, scores

    @torch.no_grad()
    def predict(self, x: torch.Tensor) -> torch.Tensor:
        """Goodness summed over every layer but the first, for each candidate label: [B, C]."""
        self.model.check_input(x)
        return self.predict_from(0, x)

    @torch.no_grad()
    def predict_from(self, first: int, h) -> torch.Tensor:
        """The class scores from the evaluation stream entering layer ``first`` (layer-parallel
        evaluation: the goodness of the layers below travels in the stream)."""
        for i in range(first, len(self.units)):
            h = self.forward_unit(i, h)
        return h[1]
