"""Dendritic equilibrium propagation (DEP) and its BPTT baseline (DBPTT), on the dendritic
network of ``models/dendritic.py`` (ALGORITHMS.md, "EP and DEP"; DEP paper, sections 2.2-2.3).

DEP runs EP's phases (``algorithms/ep.py``) on the dendritic dynamics

    s_l ← σ(basal_l(s_{l-1}) + α apical_l(s_{l+1})),   s_N ← σ(basal_N(s_{N-1}) + β (y - s_N))

and updates every parameter by the centred contrast of its layer's *local term*

    φ_l = s_l · (basal_l(s_{l-1}) + α apical_l(s_{l+1}))
    Δθ = (1/2β) mean_batch[∂φ_l/∂θ(s⁺) - ∂φ_l/∂θ(s⁻)]                      (EP's eq. 6 on φ_l)

in closed form through the ReLU branches (a branch's weights move by its ReLU derivative times
the pre- and postsynaptic states). Masked weights never change.

DEP has no scalar energy: the apical weights are not the transpose of the basal ones, so the
dynamics are not the gradient of any Φ and EP's theorem (EP update = BPTT gradient as β → 0)
does not cover it. Measured at initialisation (spec): the output layer's update is close to the
BPTT gradient (cosine ≈ 0.98-1.0), the hidden layers' are not (≈ 0.0-0.1).

DBPTT trains the same dynamics by truncated BPTT: ``T1 - T2`` free steps without gradient, then
``T2`` steps with autograd, the squared error of the final output state backpropagated through
those steps.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from . import register_algorithm
from ..models.dendritic import DendriticDynamics, DendriticNetwork
from .base import Plausibility, StepResult
from ..errors import ConfigError
from .ep import EquilibriumHyperparameters, EquilibriumRule, RelaxationHyperparameters, _require_steps


class DendriticRule(EquilibriumRule):
    """Common ground of DEP and DBPTT: the dendritic model, its per-connection learning rates."""

    @classmethod
    def supports(cls, model):
        if not isinstance(model, DendriticNetwork):
            return "it is not a dendritic network (use model 'dendritic_mlp')"
        return None

    @property
    def dynamics(self) -> DendriticDynamics:
        return self.model.dynamics

    def param_groups(self) -> list[dict]:
        """One group per connection (basal weights into layer l and apical weights from it), named
        ``blocks.0.connections.l`` so that ``layer_lrs`` gives one learning rate per connection."""
        return [
            {"name": f"blocks.0.connections.{i}", "params": [p for p in c.parameters() if p.requires_grad]}
            for i, c in enumerate(self.model.dynamics.connections)
        ]


@dataclass
class DEPHyperparameters(EquilibriumHyperparameters):
    owner: ClassVar[str] = "dep"


@register_algorithm("dep")
class DendriticEquilibriumPropagation(DendriticRule):
    """Dendritic EP: EP's ±β phases on dendritic neurons, centred contrast of each layer's local term."""

    name = "dep"
    flags = Plausibility(no_weight_transport=True, local_errors=True, no_separate_phases=True)
    update_kind = "manual"
    Hyperparameters = DEPHyperparameters


@dataclass
class DBPTTHyperparameters(RelaxationHyperparameters):
    owner: ClassVar[str] = "dbptt"
    bptt_steps: int = 12  # T2: the last steps of the free phase that the gradient flows through

    def __post_init__(self) -> None:
        super().__post_init__()
        _require_steps(self.owner, bptt_steps=self.bptt_steps)
        if self.bptt_steps > self.free_steps:
            raise ConfigError(f"dbptt: 'bptt_steps' ({self.bptt_steps}) must not exceed 'free_steps' ({self.free_steps})")


@register_algorithm("dbptt")
class DendriticBPTT(DendriticRule):
    """Dendritic BPTT: the dendritic dynamics trained by backpropagation through the last T2 steps."""

    name = "dbptt"
    flags = Plausibility(no_weight_transport=False, local_errors=False, no_separate_phases=False)
    update_kind = "autograd"
    Hyperparameters = DBPTTHyperparameters

    def compute_updates(self, x, y) -> StepResult:
        loss, output = self.bptt_loss(x, y, self.hp.free_steps, self.hp.bptt_steps)
        loss.backward()
        return StepResult(loss.detach(), output.detach())
