"""Equilibrium propagation (Scellier & Bengio 2017) with symmetric nudging (Laborieux et al.
2021), as specified in ALGORITHMS.md, section "EP and DEP".

States ``s_1..s_N`` (``s_0 = x`` clamped) of a layered Hopfield-like network whose weights are
the ``mlp`` model's Linear layers ``W_l, b_l``. Primitive function and dynamics:

    Φ(s) = Σ_l s_l · (W_l s_{l-1} + b_l)                                    (1)
    s_l ← σ(∂Φ/∂s_l) = σ(W_l s_{l-1} + b_l + W_{l+1}ᵀ s_{l+1})             (2)
    Φ^β = Φ - β ℓ,  ℓ = ½‖s_N - y‖²   so the output gets  + β (y - s_N)     (3)

synchronous updates from ``s = 0``; ``σ`` is the rule's (hard sigmoid ``clamp(·, 0, 1)`` or
tanh), not the model's activation modules, which EP does not use. Per batch: ``T1`` free steps
→ ``s*``; from ``s*``, ``T2`` steps at ``+β`` → ``s⁺`` and at ``-β`` → ``s⁻``. Update, the
centred estimator (Laborieux et al. eq. 6):

    ΔW_l = (1/2β) mean_batch[s_l⁺ s_{l-1}⁺ᵀ - s_l⁻ s_{l-1}⁻ᵀ]                (4)
    Δb_l = (1/2β) mean_batch[s_l⁺ - s_l⁻]

i.e. ``(1/2β)[∂Φ/∂θ(s⁺) - ∂Φ/∂θ(s⁻)]``; the one-sided variant uses ``(1/εβ)[∂Φ/∂θ(s^{εβ}) -
∂Φ/∂θ(s*)]`` with a random sign ``ε = ±1`` per batch. Prediction: argmax of ``s_N`` after ``T1``
free steps.

Speed (the issue's point): (2) is evaluated in closed form under ``torch.no_grad`` (no autograd
through Φ), ``W_1 x + b_1`` is computed once per batch, and the ``±β`` phases run together as
one batch of ``2B`` rows. A relaxation step costs a few tiny kernels, so their number and
layout are what counts: :meth:`EquilibriumRule.relax` runs on column vectors ``sᵀ [width, B]``
(``models/dynamics.py``: MKL's products into the 10 output units are 2-3x faster so), adds the
terms that are constant through a phase (``W_1 x + b_1``, the biases, ``β y``) from one column
per layer computed once, and writes each step into preallocated buffers: per layer and step,
one product per neighbouring layer, the nudge ``-β s_N`` on the output, and σ, no allocation.
The free phase runs as two interleaved chains that share their kernels (:meth:`EquilibriumRule.relax_free`),
which halves its number of kernels.

:class:`EquilibriumRule` holds this machinery for any *dynamics* object (the Linear chain here,
the dendritic network of ``models/dendritic.py`` for DEP) that offers ``synapses()``,
``input_drive(x, syn)``, ``zero_states(batch, like)``, the steps of
:class:`~bioplausible.models.dynamics.ColumnDynamics` (``constant_columns``, ``step_columns``,
``step``), ``local_gradients(x, drive, states, weights, syn)`` and ``parameters_in_order()``
(the order of the local gradients).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from . import register_algorithm
from ..errors import ConfigError, require_non_negative, require_positive
from ..models.dynamics import (ColumnDynamics, affine, fold_halves, phase_constants, stack_twice, state_activation,
                               zero_rows)
from .base import Hyperparameters, LearningRule, Plausibility, StepResult

ESTIMATORS = ("centred", "one_sided")


# ---------------------------------------------------------------------- hyperparameters
@dataclass
class RelaxationHyperparameters(Hyperparameters):
    """What every rule that relaxes states shares: the free phase and its early stop."""

    owner: ClassVar[str] = "ep"
    loss: str = "mse"
    free_steps: int = 60  # T1, also the prediction's relaxation
    tol: float = 0.0  # stop a phase early once max|Δs| < tol (0: always run the full phase)

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.loss != "mse":
            # The nudge β(y - s_N) of eq. (3) is the gradient of the squared error.
            raise ConfigError(f"{self.owner}: the output is nudged by the squared error, so 'loss' must be 'mse', got '{self.loss}'")
        _require_steps(self.owner, free_steps=self.free_steps)
        require_non_negative(self.owner, tol=self.tol)


@dataclass
class EquilibriumHyperparameters(RelaxationHyperparameters):
    # 0.5, not the DEP paper's MNIST 0.1 (its presets set that): at 0.1, output units whose input
    # falls below -β receive no nudge and never recover (EP on digits stalls at 69%).
    beta: float = 0.5
    nudged_steps: int = 12  # T2, per nudged phase
    estimator: str = "centred"  # or "one_sided": one phase at a random ±β

    def __post_init__(self) -> None:
        super().__post_init__()
        require_positive(self.owner, beta=self.beta)
        _require_steps(self.owner, nudged_steps=self.nudged_steps)
        if self.estimator not in ESTIMATORS:
            raise ConfigError(f"{self.owner}: 'estimator' must be one of {', '.join(ESTIMATORS)}, got '{self.estimator}'")


@dataclass
class EPHyperparameters(EquilibriumHyperparameters):
    activation: str = "hardsigmoid"  # σ of the states: hardsigmoid (clamp to [0, 1]) or tanh

    def __post_init__(self) -> None:
        super().__post_init__()
        state_activation(self.activation, self.owner)


def _require_steps(owner: str, **values) -> None:
    for key, value in values.items():
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ConfigError(f"{owner}: '{key}' must be a positive integer, got {value!r}")


# ---------------------------------------------------------------------- EP's dynamics
class Synapse(NamedTuple):
    weight: torch.Tensor  # W_l
    bias: torch.Tensor | None  # b_l as a column [width, 1]
    transposed: torch.Tensor  # W_lᵀ, for the term W_lᵀ s_l of the layer below


class LinearChain(ColumnDynamics):
    """Eqs. (1)-(3) on the Linear layers of an ``mlp``: the dynamics object EP relaxes."""

    def __init__(self, layers: list[nn.Linear], sigma):
        self.layers = layers
        self.sigma = sigma

    def parameters_in_order(self) -> list[nn.Parameter]:
        return [p for layer in self.layers for p in (layer.weight, layer.bias) if p is not None]

    def synapses(self) -> list[Synapse]:
        """Per layer, with the views the steps use made once per batch."""
        return [Synapse(layer.weight, None if layer.bias is None else layer.bias[:, None], layer.weight.t())
                for layer in self.layers]

    def input_drive(self, x: torch.Tensor, syn) -> tuple[torch.Tensor]:
        return (affine(syn[0].weight, x.flatten(1).t(), syn[0].bias).t(),)  # W_1 x + b_1: constant while x is clamped

    def zero_states(self, batch: int, like: torch.Tensor) -> list[torch.Tensor]:
        return [zero_rows(batch, layer.out_features, like) for layer in self.layers]

    def constant_columns(self, drive, syn, target=None, beta=None) -> list[torch.Tensor]:
        """``W_1 x + b_1``, then ``b_l`` (expanded over the batch, so that no step broadcasts), and
        + β y on the output when nudged: the constant terms of eqs. (2)-(3)."""
        rows = len(drive[0])
        biases = [p.bias.expand(-1, rows) if p.bias is not None else drive[0].new_zeros(len(p.weight), rows)
                  for p in syn[1:]]
        return phase_constants([drive[0].t()] + biases, target, beta)

    def step_columns(self, states, constants, syn, beta=None, out=None, layers=None) -> list[torch.Tensor]:
        """One synchronous step of eq. (2) on columns, nudged as in eq. (3) when β is given (see
        :meth:`ColumnDynamics.step_columns`)."""
        out = out or [None] * len(states)
        last = len(states) - 1
        new = list(states)
        for l in range(len(states)) if layers is None else layers:
            pre = constants[l]  # W_1 x + b_1 for layer 1, b_l above it, + β y on the nudged output
            if l > 0:
                pre = torch.addmm(pre, syn[l].weight, states[l - 1], out=out[l])  # + W_l s_{l-1}
            if l < last:
                pre = torch.addmm(pre, syn[l + 1].transposed, states[l + 1], out=out[l])  # + W_{l+1}ᵀ s_{l+1}
            elif beta is not None:
                pre = torch.addcmul(pre, beta, states[l], value=-1, out=out[l])  # - β s_N
            new[l] = self.sigma(pre, out=out[l])
        return new

    def local_gradients(self, x, drive, states, weights, syn) -> list[torch.Tensor]:
        """Σ_rows weights_r ∂Φ/∂θ(s_r), in :meth:`parameters_in_order` order: ``s_l s_{l-1}ᵀ`` and
        ``s_l``. ``states`` have 2B rows whose halves share the B rows of ``x``."""
        below = [x.flatten(1)] + states[:-1]
        grads = []
        for l, (layer, s, s_below) in enumerate(zip(self.layers, states, below)):
            ws = s * weights
            grads.append((fold_halves(ws) if l == 0 else ws).t() @ s_below)
            if layer.bias is not None:
                grads.append(ws.sum(0))
        return grads


def mlp_linear_layers(model: nn.Module) -> list[nn.Linear] | str:
    """The Linear layers of an ``mlp``-shaped network (one per block, nothing but Flatten and
    activations besides), or the reason the model is not one."""
    blocks = getattr(model, "blocks", None)
    if blocks is None:
        return "it has no 'blocks'"
    layers = []
    for i, block in enumerate(blocks):
        linears = [m for m in block.modules() if isinstance(m, nn.Linear)]
        weighted = [m for m in block.modules() if m is not block and any(True for _ in m.parameters(recurse=False))]
        if len(linears) != 1 or len(weighted) != 1:
            return f"block {i} is not a single Linear layer (EP needs a fully connected chain, e.g. model 'mlp')"
        layers.append(linears[0])
    for lower, upper in zip(layers, layers[1:]):
        if lower.out_features != upper.in_features:
            return "its Linear layers do not form a chain"
    return layers


# ---------------------------------------------------------------------- the rules
class EquilibriumRule(LearningRule):
    """Relax, nudge, contrast: the machinery shared by EP and DEP (and DBPTT's prediction)."""

    update_kind = "manual"
    Hyperparameters = EquilibriumHyperparameters

    def __init__(self, model, **hyperparameters):
        super().__init__(model, **hyperparameters)
        self.last_steps = 0  # steps the last phase ran (below T when tol stopped it early)

    @property
    def dynamics(self):
        raise NotImplementedError

    # ------------------------------------------------------------------ relaxation
    @torch.no_grad()
    def relax(self, states, drive, syn, steps: int, target=None, beta=None) -> list[torch.Tensor]:
        """``steps`` synchronous steps of the dynamics, or fewer once ``max|Δs| < tol``. The loop
        runs on columns (``models/dynamics.py``); a step reads all the old states while it writes
        the new ones, so the steps write into two preallocated sets of columns in turn."""
        tol = self.hp.tol
        if beta is None and not tol:
            return self.relax_free(states, drive, syn, steps)
        if beta is not None:
            beta = torch.as_tensor(beta, dtype=states[0].dtype, device=states[0].device)
        constants = self.dynamics.constant_columns(drive, syn, target, beta)
        beta = None if beta is None else beta.t()
        states = [s.t() for s in states]
        buffers = [[s.new_empty(s.shape) for s in states] for _ in range(2)]
        self.last_steps = steps
        for t in range(steps):
            new = self.dynamics.step_columns(states, constants, syn, beta, out=buffers[t % 2])
            settled = tol > 0 and max((a - b).abs().max() for a, b in zip(new, states)) < tol
            states = new
            if settled:
                self.last_steps = t + 1
                break
        return [s.t() for s in states]

    @torch.no_grad()
    def relax_free(self, states, drive, syn, steps: int) -> list[torch.Tensor]:
        """``steps`` free steps from ``states`` (no nudge, no early stop) in two interleaved chains,
        with the arithmetic of :meth:`relax` in half its kernels.

        Without the nudge, layer l's next state reads only layers l ± 1, so the synchronous
        dynamics split into two chains that never meet: the states s_l(t) with l + t even, and those
        with l + t odd. Run the odd chain one step ahead, and both chains update the same layers at
        every step (those with l + k even at step k): one kernel per term for both chains on 2B
        columns, in place (the layers written read only the others), instead of one per layer on B
        columns, and a relaxation step costs mostly the launch of its small kernels. At the end,
        layer l at time T is in the even chain if l + T is even, else in the odd chain, which
        reached time T one step earlier."""
        rows, layers = len(states[0]), len(states)
        start = [s.t() for s in states]
        constants = self.dynamics.constant_columns(drive, syn)
        ahead = self.dynamics.step_columns(start, constants, syn)  # time 1
        chains = [torch.cat(pair, dim=1) for pair in zip(start, ahead)]  # [width, 2B]: even chain | odd chain
        constants = [torch.cat([c, c], dim=1) for c in constants]  # the same terms for both chains
        for k in range(1, steps + 1):  # layer l = index + 1 moves when l + k is even
            self.dynamics.step_columns(chains, constants, syn, out=chains, layers=range((k + 1) % 2, layers, 2))
        self.last_steps = steps
        return [(c[:, :rows] if (l + 1 + steps) % 2 == 0 else c[:, rows:]).t() for l, c in enumerate(chains)]

    def free_phase(self, x: torch.Tensor, steps: int | None = None):
        """States after the free phase from zero, with the batch's drive and synapses."""
        syn = self.dynamics.synapses()
        drive = self.dynamics.input_drive(x, syn)
        states = self.dynamics.zero_states(len(x), drive[0])
        return self.relax(states, drive, syn, steps or self.hp.free_steps), drive, syn

    @torch.no_grad()
    def predict(self, x: torch.Tensor) -> torch.Tensor:
        return self.free_phase(x)[0][-1]  # s_N after T1 free steps

    def target(self, y: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        return F.one_hot(y, like.shape[-1]).to(like.dtype)

    # ------------------------------------------------------------------ the update
    @torch.no_grad()
    def compute_updates(self, x, y) -> StepResult:
        free, drive, syn = self.free_phase(x)
        target = self.target(y, free[-1])
        rows, weights = self.nudged_phases(x, free, drive, syn, target)
        # θ.grad = -Δθ: the rows' weights are negated rather than every gradient afterwards.
        grads = self.dynamics.local_gradients(x, drive, rows, -weights, syn)
        for p, g in zip(self.dynamics.parameters_in_order(), grads, strict=True):
            p.grad = g
        loss = 0.5 * (free[-1] - target).pow(2).sum(-1).mean()
        return StepResult(loss, free[-1])

    def nudged_phases(self, x, free, drive, syn, target):
        """The 2B rows to contrast and their weights: Δθ = Σ_rows w_r ∂φ/∂θ(s_r) (eq. 4). Both
        halves share the batch's x (and drive), which the dynamics fold back to B rows."""
        batch, beta, steps = len(x), self.hp.beta, self.hp.nudged_steps
        col = free[-1].new_ones(batch, 1)
        if self.hp.estimator == "centred":
            # +β and -β from the same s*, as one batch of 2B rows.
            twice = lambda ts: [stack_twice(t) for t in ts]  # noqa: E731
            betas = torch.cat([beta * col, -beta * col])
            rows = self.relax(twice(free), twice(drive), syn, steps, torch.cat([target, target]), betas)
            return rows, torch.cat([col, -col]) / (2 * beta * batch)
        sign = 1.0 if torch.randint(0, 2, ()).item() else -1.0  # ε, from the global (seeded) RNG
        nudged = self.relax(free, drive, syn, steps, target, sign * beta * col)
        rows = [torch.cat([a, b]) for a, b in zip(nudged, free)]
        return rows, torch.cat([col, -col]) / (sign * beta * batch)

    # ------------------------------------------------------------------ diagnostics
    def bptt_loss(self, x, y, steps: int, truncate: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The squared error of ``s_N`` after ``steps`` free steps, with an autograd graph through
        the last ``truncate`` of them (the earlier ones run without gradient); and ``s_N``."""
        with torch.no_grad():
            syn = self.dynamics.synapses()
            drive = self.dynamics.input_drive(x, syn)
            states = self.dynamics.zero_states(len(x), drive[0])
            if steps > truncate:
                states = self.relax_free(states, drive, syn, steps - truncate)
        with torch.enable_grad():
            syn = self.dynamics.synapses()
            drive = self.dynamics.input_drive(x, syn)
            for _ in range(truncate):
                states = self.dynamics.step(states, drive, syn)
            loss = 0.5 * (states[-1] - self.target(y, states[-1])).pow(2).sum(-1).mean()
        return loss, states[-1]

    def bptt_gradients(self, x: torch.Tensor, y: torch.Tensor, steps: int | None = None,
                       truncate: int | None = None) -> list[torch.Tensor]:
        """∂L/∂θ of the squared error after ``steps`` (T1) free steps, by autograd through the
        last ``truncate`` of them (all by default): the gradient EP's update approximates."""
        steps = steps or self.hp.free_steps
        loss, _ = self.bptt_loss(x, y, steps, min(truncate or steps, steps))
        return list(torch.autograd.grad(loss, self.dynamics.parameters_in_order()))

    def gradient_cosines(self, x: torch.Tensor, y: torch.Tensor) -> dict[str, float]:
        """Cosine between the rule's update Δθ and -∂L/∂θ from BPTT, per parameter tensor."""
        params = self.dynamics.parameters_in_order()
        saved = [p.grad for p in params]
        try:
            for p in params:
                p.grad = None  # autograd rules (DBPTT) accumulate into .grad
            self.compute_updates(x, y)
            updates = [-p.grad for p in params]
        finally:
            for p, g in zip(params, saved):
                p.grad = g
        names = {id(p): n for n, p in self.model.named_parameters()}
        return {
            names[id(p)]: F.cosine_similarity(u.flatten(), -g.flatten(), dim=0).item()
            for p, u, g in zip(params, updates, self.bptt_gradients(x, y))
        }

    @torch.no_grad()
    def free_trajectory(self, x: torch.Tensor, steps: int | None = None) -> list[list[torch.Tensor]]:
        """States after each free step (the paper's Figure 2), ``[step][layer] -> [B, width]``."""
        syn = self.dynamics.synapses()
        drive = self.dynamics.input_drive(x, syn)
        states = self.dynamics.zero_states(len(x), drive[0])
        trajectory = []
        for _ in range(steps or self.hp.free_steps):
            states = self.dynamics.step(states, drive, syn)
            trajectory.append(states)
        return trajectory

    @torch.no_grad()
    def free_phase_statistics(self, x: torch.Tensor, active_above: float = 1e-3) -> list[dict]:
        """Per hidden layer, over the free phase: mean |s| and the fraction of units with
        |s| > ``active_above`` (the paper's section 3.4), also at the free equilibrium."""
        trajectory = self.free_trajectory(x)
        stats = []
        for l in range(len(trajectory[0]) - 1):
            path = torch.stack([states[l] for states in trajectory]).abs()  # [T, B, width]
            stats.append({
                "layer": l + 1,
                "mean_abs": path.mean().item(),
                "active_fraction": (path > active_above).double().mean().item(),
                "mean_abs_at_equilibrium": path[-1].mean().item(),
                "active_fraction_at_equilibrium": (path[-1] > active_above).double().mean().item(),
            })
        return stats

    def steps_to_converge(self, x: torch.Tensor, tol: float = 1e-4, max_steps: int = 1000) -> int:
        """Free steps until max|Δs| < tol (``max_steps`` if never)."""
        saved = self.hp.tol
        self.hp.tol = tol
        try:
            with torch.no_grad():
                self.free_phase(x, max_steps)
            return self.last_steps
        finally:
            self.hp.tol = saved


@register_algorithm("ep")
class EquilibriumPropagation(EquilibriumRule):
    """Equilibrium propagation: free and ±β-nudged relaxation, centred contrast of local products."""

    name = "ep"
    flags = Plausibility(no_weight_transport=True, local_errors=True, no_separate_phases=True)
    Hyperparameters = EPHyperparameters

    @classmethod
    def supports(cls, model):
        layers = mlp_linear_layers(model)
        return layers if isinstance(layers, str) else None

    def __init__(self, model, **hyperparameters):
        super().__init__(model, **hyperparameters)
        self._dynamics = LinearChain(mlp_linear_layers(model), state_activation(self.hp.activation, self.name))

    @property
    def dynamics(self) -> LinearChain:
        return self._dynamics
