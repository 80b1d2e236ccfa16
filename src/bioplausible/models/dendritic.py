"""A layered network of dendritic neurons (ALGORITHMS.md, "EP and DEP"; DEP paper, eqs. 7-9).

Every hidden and output neuron ``j`` of layer ``l`` has a *basal* tree of ``K_b`` branches, each
seeing a fixed random fraction (50%) of the layer below; hidden neurons also have an *apical*
tree of ``K_a`` branches on the layer above (no bias, weights of their own, not the transpose
of the basal ones), scaled by ``α``:

    basal_{l,j}  = (1/K_b) Σ_k relu(w_{jk} · (m_{jk} ⊙ s_{l-1}) + c_{jk})        (8)
    apical_{l,j} = (1/K_a) Σ_k relu(u_{jk} · (n_{jk} ⊙ s_{l+1}))
    s_l ← σ(basal_l(s_{l-1}) + α apical_l(s_{l+1}))                             (9)
    s_N ← σ(basal_N(s_{N-1}) + β (y - s_N))                    (output; β = 0 when free)

The masks ``m, n`` are drawn once from the global (seeded) RNG and kept as buffers. Masked
weights start at zero and stay there: where autograd runs (BPTT, BP) the weight is multiplied by
the mask, and DEP's closed-form gradients are masked, so no update reaches them; the relaxation
without gradient therefore uses the weight as it is (:meth:`Branches.masked_weight`).

Structure: :class:`Connection` ``l`` holds the synapses *between* layers ``l-1`` and ``l``: the
basal branches of layer ``l`` on ``s_{l-1}`` and the apical branches of layer ``l-1`` on
``s_l``, so one learning rate per connection covers both directions, as the spec asks.
The dynamics couple all layers at every step, so the whole relaxation is the model's single
block (like the Elman RNN's): ``model(x)`` is the free phase, ``steps`` synchronous steps of
(9) from zero, returning ``s_N``; BP on this model is therefore BPTT through the free phase.

The rules ``dep`` and ``dbptt`` (``algorithms/dep.py``) drive :class:`DendriticDynamics`
through the same interface as EP's Linear chain (see ``algorithms/ep.py``), whose relaxation
computes on column vectors (``models/dynamics.py``). There a tree's contribution to its soma,
``scale · (1/K) Σ_k relu(·)``, is one product of a readout row with the K blocks of branch rows,
which also adds the soma's other inputs (:meth:`Branches.soma`).
"""

from __future__ import annotations

import math
import numbers
from typing import NamedTuple

import torch
from torch import nn

from ..errors import ConfigError
from . import register_model
from .base import Network
from .dynamics import ColumnDynamics, affine, fold_halves, phase_constants, state_activation, zero_rows
from .mlp import _widths, check_input_shape, check_num_classes, positive_int


class BranchSynapse(NamedTuple):
    weight: torch.Tensor  # [width·K, fan_in], masked where autograd runs (Branches.masked_weight)
    bias: torch.Tensor | None  # a column [width·K, 1]
    readout: torch.Tensor  # [1, K]: each branch's weight in the soma's input, scale/K


def branch_masks(width: int, branches: int, fan_in: int, fraction: float) -> torch.Tensor:
    """``[width·branches, fan_in]`` 0/1 masks, each row keeping exactly ``round(fraction·fan_in)``
    (at least one) inputs, chosen at random."""
    keep = max(1, round(fraction * fan_in))
    order = torch.rand(width * branches, fan_in).argsort(dim=1)
    mask = torch.zeros(width * branches, fan_in)
    mask.scatter_(1, order[:, :keep], 1.0)
    return mask


class Branches(nn.Module):
    """``K`` sparse ReLU branches per neuron, averaged at the soma (eq. 8)."""

    def __init__(self, fan_in: int, width: int, branches: int, fraction: float, bias: bool):
        super().__init__()
        self.width, self.branches = width, branches
        # One row per branch, branch-major (row k·width + j): on column vectors a neuron's K
        # branches lie in K contiguous blocks of rows, which the soma's readout weighs with one
        # product (soma). nn.Linear's initialisation, except that the bias bound is
        # 1/√(inputs a branch sees), as in the authors' code.
        self.linear = nn.Linear(fan_in, width * branches, bias=bias)
        mask = branch_masks(width, branches, fan_in, fraction)
        self.register_buffer("mask", mask)
        with torch.no_grad():
            self.linear.weight.mul_(mask)  # masked weights are zero and stay zero
            if bias:
                bound = mask[0].sum().item() ** -0.5
                self.linear.bias.uniform_(-bound, bound)

    def masked_weight(self) -> torch.Tensor:
        """The weight as the dynamics use it. Masked entries are zero and every update is masked,
        so the product is needed only where autograd must not reach them (BPTT, BP); without
        gradient the weight itself is used, saving a pass over the largest tensor per batch."""
        return self.linear.weight * self.mask if torch.is_grad_enabled() else self.linear.weight

    def synapse(self, scale: float = 1.0) -> BranchSynapse:
        """The synapse as :meth:`pre` and :meth:`soma` take it, once per batch, for a soma input of
        ``scale`` times the branches' mean."""
        bias = self.linear.bias
        weight = self.masked_weight()
        readout = weight.new_full((1, self.branches), scale / self.branches)
        return BranchSynapse(weight, None if bias is None else bias[:, None], readout)

    def pre(self, s: torch.Tensor, synapse: BranchSynapse) -> torch.Tensor:
        """Branch pre-activations on column vectors: ``[fan_in, B] -> [width·K, B]``."""
        return affine(synapse.weight, s, synapse.bias)

    def soma(self, pre: torch.Tensor, synapse: BranchSynapse, add_to: torch.Tensor | None = None,
             out: torch.Tensor | None = None) -> torch.Tensor:
        """``add_to + scale · (1/K) Σ_k relu(pre_k)`` per neuron, ``[width·K, B] -> [width, B]`` (eq.
        8), into ``out`` when given. One product of the readout row ``(scale/K, …)`` with the K
        blocks of rows, which also adds ``add_to``: faster than a reduction over the blocks and an
        addition (a DEP step ran about 1.3x faster). Takes the ReLU in place on ``pre``."""
        branches = pre.relu_().view(self.branches, -1)  # row k: branch k of every neuron and example
        out = None if out is None else out.view(1, -1)
        if add_to is None:
            total = torch.mm(synapse.readout, branches, out=out)
        else:
            total = torch.addmm(add_to.view(1, -1), synapse.readout, branches, out=out)
        return total.view(self.width, -1)

    def gradients(self, pre: torch.Tensor, s_in: torch.Tensor, coeff: torch.Tensor) -> list[torch.Tensor]:
        """Σ_rows ∂(coeff · soma)/∂(weight, bias) in closed form: the branch's ReLU derivative
        times the input, masked. ``pre`` is ``[width·K, rows]`` (columns, as :meth:`pre` gives
        it), ``s_in`` ``[rows, fan_in]``, ``coeff`` ``[rows, width]``."""
        g = coeff.t().repeat(self.branches, 1).mul_(pre > 0).mul_(1 / self.branches)
        grads = [(g @ s_in).mul_(self.mask)]
        if self.linear.bias is not None:
            grads.append(g.sum(1))
        return grads

    def parameters_in_order(self) -> list[nn.Parameter]:
        return [p for p in (self.linear.weight, self.linear.bias) if p is not None]


class Connection(nn.Module):
    """Synapses between layers ``l-1`` and ``l``: layer ``l``'s basal trees on ``s_{l-1}`` and,
    when ``l-1`` is a hidden layer (the input has no dendrites), its apical trees on ``s_l``."""

    def __init__(self, fan_in: int, width: int, basal: int, apical: int, fraction: float, has_apical: bool):
        super().__init__()
        self.basal = Branches(fan_in, width, basal, fraction, bias=True)
        self.apical = Branches(width, fan_in, apical, fraction, bias=False) if has_apical else None


class DendriticDynamics(nn.Module, ColumnDynamics):
    """The relaxation of eq. (9) over all layers: the single block of :class:`DendriticNetwork`."""

    def __init__(self, sizes: list[int], basal: int, apical: int, fraction: float,
                 apical_scale: float, activation: str, steps: int):
        super().__init__()
        self.sigma = state_activation(activation, "dendritic_mlp")  # the same σ as EP's states
        self.alpha = apical_scale
        self.steps = steps
        # Connection l+1 carries the apical trees of hidden layer l (the input has none).
        self.connections = nn.ModuleList(
            Connection(sizes[i], sizes[i + 1], basal, apical, fraction, has_apical=i > 0)
            for i in range(len(sizes) - 1)
        )

    # ------------------------------------------------------------------ the dynamics interface
    def parameters_in_order(self) -> list[nn.Parameter]:
        params = []
        for c in self.connections:
            params += c.basal.parameters_in_order()
            if c.apical is not None:
                params += c.apical.parameters_in_order()
        return params

    def synapses(self) -> list[tuple[BranchSynapse, BranchSynapse | None]]:
        """(basal, apical) synapses of each connection, once per batch; the apical trees' soma
        input is scaled by α."""
        return [(c.basal.synapse(), c.apical.synapse(self.alpha) if c.apical is not None else None)
                for c in self.connections]

    def input_drive(self, x: torch.Tensor, syn) -> tuple[torch.Tensor, torch.Tensor]:
        """Layer 1's basal branch outputs ``relu(pre)`` (their sign pattern is the one of ``pre``,
        all the gradients need) and its soma input ``basal_1(x)``: constant while x is clamped.
        ``[B, ·]``, feature-major like the states (``models/dynamics.py``)."""
        basal = self.connections[0].basal
        pre = basal.pre(x.flatten(1).t(), syn[0][0])
        soma = basal.soma(pre, syn[0][0])  # takes the ReLU in place on pre
        return pre.t(), soma.t()

    def zero_states(self, batch: int, like: torch.Tensor) -> list[torch.Tensor]:
        return [zero_rows(batch, c.basal.width, like) for c in self.connections]

    def constant_columns(self, drive, syn, target=None, beta=None) -> list[torch.Tensor]:
        """Layer 1's basal input ``basal_1(x)``, zero above it (the biases are inside the branches'
        ReLUs), + β y on the output when nudged: the constant terms of eq. (9)."""
        rows = len(drive[1])
        zeros = [drive[1].new_zeros(c.basal.width, rows) for c in self.connections[1:]]
        return phase_constants([drive[1].t()] + zeros, target, beta)

    def step_columns(self, states, constants, syn, beta=None, out=None, layers=None) -> list[torch.Tensor]:
        """One synchronous step of eq. (9) on columns, the output nudged when β is given (see
        :meth:`ColumnDynamics.step_columns`)."""
        out = out or [None] * len(states)
        last = len(states) - 1
        new = list(states)
        for l in range(len(states)) if layers is None else layers:
            c = self.connections[l]
            pre = constants[l]  # basal_1(x) for layer 1, + β y on the nudged output
            if l > 0:  # + basal_l(s_{l-1})
                pre = c.basal.soma(c.basal.pre(states[l - 1], syn[l][0]), syn[l][0], pre, out[l])
            if l < last:  # + α apical_l(s_{l+1}): the apical trees of connection l+1
                trees, synapse = self.connections[l + 1].apical, syn[l + 1][1]
                pre = trees.soma(trees.pre(states[l + 1], synapse), synapse, pre, out[l])
            elif beta is not None:
                pre = torch.addcmul(pre, beta, states[l], value=-1, out=out[l])  # - β s_N
            new[l] = self.sigma(pre, out=out[l])
        return new

    def local_gradients(self, x, drive, states, weights, syn) -> list[torch.Tensor]:
        """Σ_rows weights_r ∂φ_l/∂θ(s_r) with φ_l = s_l · (basal_l(s_{l-1}) + α apical_l(s_{l+1})),
        in :meth:`parameters_in_order` order (closed form through the ReLU branches). ``states``
        have 2B rows whose halves share the B rows of ``x`` and ``drive``."""
        grads = []
        for l, c in enumerate(self.connections):
            if l == 0:  # the input branches' pre-activations are the same in both halves
                grads += c.basal.gradients(drive[0].t(), x.flatten(1), fold_halves(states[0] * weights))
            else:  # ∂φ_l/∂(w, c)
                pre_basal = c.basal.pre(states[l - 1].t(), syn[l][0])
                grads += c.basal.gradients(pre_basal, states[l - 1], states[l] * weights)
            if c.apical is not None:  # apical trees of layer l-1, on s_l: ∂φ_{l-1}/∂u
                pre_apical = c.apical.pre(states[l].t(), syn[l][1])
                grads += c.apical.gradients(pre_apical, states[l], self.alpha * states[l - 1] * weights)
        return grads

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        syn = self.synapses()
        drive = self.input_drive(x, syn)
        states = self.zero_states(len(x), drive[0])
        for _ in range(self.steps):
            states = self.step(states, drive, syn)
        return states[-1]


class DendriticNetwork(Network):
    @property
    def dynamics(self) -> DendriticDynamics:
        return self.blocks[0]  # type: ignore[return-value]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.check_input(x)
        return self.dynamics(x)


@register_model("dendritic_mlp")
def dendritic_mlp(input_shape, num_classes, hidden=(256,), basal_branches=8, apical_branches=2,
                  branch_fraction=0.5, apical_scale=0.2, activation="hardsigmoid", steps=60) -> DendriticNetwork:
    """Fully connected layers of dendritic neurons (DEP paper, section 2.2): ``K_b`` basal
    branches, ``K_a`` apical branches (hidden layers), each branch on a random ``branch_fraction``
    of its inputs, apical input scaled by ``apical_scale`` (α). ``model(x)`` relaxes ``steps`` free
    steps from zero and returns the output states."""
    shape = check_input_shape(input_shape, "dendritic_mlp")
    num_classes = check_num_classes(num_classes)
    widths = _widths(hidden)
    basal = positive_int(basal_branches, "dendritic_mlp: basal_branches")
    apical = positive_int(apical_branches, "dendritic_mlp: apical_branches")
    steps = positive_int(steps, "dendritic_mlp: steps")
    for key, value in (("branch_fraction", branch_fraction), ("apical_scale", apical_scale)):
        if isinstance(value, bool) or not isinstance(value, numbers.Real):
            raise ConfigError(f"dendritic_mlp: '{key}' must be a number, got {value!r}")
    if not 0 < branch_fraction <= 1:
        raise ConfigError(f"dendritic_mlp: 'branch_fraction' must be in (0, 1], got {branch_fraction}")
    if apical_scale < 0:
        raise ConfigError(f"dendritic_mlp: 'apical_scale' must be non-negative, got {apical_scale}")
    sizes = [math.prod(shape), *widths, num_classes]
    dynamics = DendriticDynamics(sizes, basal, apical, float(branch_fraction), float(apical_scale), activation, steps)
    return DendriticNetwork([dynamics], shape, num_classes)
