"""The shared schedule of layer-local rules (SLL, local losses, Forward-Forward, SigProp, DGL,
InfoPro, MLAAN): the network is cut at block boundaries into *units*; unit ``i`` takes the
detached output of unit ``i-1``, computes its own loss, runs its backward and steps its own
optimizer before unit ``i+1`` runs its forward.

Two things follow, and both are why the schedule lives in one place:

* training memory is that of one unit, not of the whole network: each unit's autograd graph
  is freed by its ``backward()`` before the next unit builds its own;
* a unit needs nothing from above it, only ``(h, carry, y)`` from below, so the units can run
  on different processes with ``h``, ``carry`` and ``y`` streamed forward (layer-parallel
  training, DISTRIBUTED.md). :meth:`LayerwiseRule.train_unit` is exactly one stage's work.

A subclass sets :attr:`units` (lists of consecutive model blocks), optionally gives each unit
auxiliary modules (:meth:`unit_modules`: heads, decoders; trained by the unit's optimizer), and
defines :meth:`unit_loss`. ``carry`` is whatever a unit passes to the next besides its
activations (SLL: its projection ``v_i``, the next unit's Bhattacharyya target); it must be
detached.

Every unit draws its random numbers (dropout, SLL's masks on R, Forward-Forward's negative
labels) from its own stream, seeded from the run's seed and the unit's index
(:meth:`LayerwiseRule.unit_rng`). With one global stream, what unit ``i`` draws would depend on
how many numbers the units before it drew first, which differs between one process and a
pipeline whose stages keep their own generators; with one stream per unit a pipeline stage
draws exactly what its units draw in one process.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Iterator, Sequence

import numpy as np
import torch
from torch import nn

from .base import LearningRule, StepResult


def detached(h):
    """``sg(h)`` for a tensor or a tuple of tensors (Forward-Forward carries positive and
    negative activity side by side)."""
    return tuple(t.detach() for t in h) if isinstance(h, tuple) else h.detach()


def split_blocks(blocks: Sequence[nn.Module], block_size: int) -> list[list[nn.Module]]:
    """Consecutive groups of ``block_size`` blocks (the last one may be shorter). Leading blocks
    marked ``joins_next_unit`` (ViT's patch embedding, which has no representation of its own for
    a local loss to read) join the first group without being counted, so that SLL^{i+}'s units
    hold i transformer blocks each."""
    blocks = list(blocks)
    lead = 0
    while lead < len(blocks) - 1 and getattr(blocks[lead], "joins_next_unit", False):
        lead += 1
    groups = [blocks[i:i + block_size] for i in range(lead, len(blocks), block_size)]
    groups[0] = blocks[:lead] + groups[0]
    return groups


@dataclass
class UnitResult:
    h: Any  # the unit's output, detached: the next unit's input
    carry: Any  # what the next unit's loss needs from this one, detached
    loss: torch.Tensor | None  # the unit's loss, detached (None for a unit without a loss)
    output: torch.Tensor | None  # class scores the unit predicts, detached (None if it does not)


class LayerwiseRule(LearningRule):
    """Base of layer-local rules: one optimizer per unit, each unit trained on its detached input."""

    layer_local = True
    update_kind = "autograd"
    units: list[list[nn.Module]]

    def __init__(self, model: nn.Module, **hyperparameters):
        super().__init__(model, **hyperparameters)
        # The run's seed: torch's seed when the rule first draws (the trainer seeds torch with
        # config.seed; a test's torch.manual_seed before the first step still sets the draws).
        self.rng_seed: int | None = None
        # Unit -> generator device type ("cpu", "cuda") -> that generator's state in the unit's stream;
        # created on first use, saved in checkpoints by the trainer.
        self.unit_rng_states: dict[int, dict[str, torch.Tensor]] = {}

    @classmethod
    def supports(cls, model: nn.Module) -> str | None:
        from ..models.base import Network

        if not isinstance(model, Network):
            return "it splits a network at its blocks; the model is not a bioplausible Network"
        if type(model).forward is not Network.forward:
            return "its forward is not the plain composition of its blocks, so it cannot be split into units"
        if len(model.blocks) < 2:
            return "a layer-local rule needs at least two blocks"
        return None

    # ------------------------------------------------------------------ what a subclass defines
    def unit_modules(self, i: int) -> list[nn.Module]:
        """Auxiliary modules trained together with unit ``i`` (heads, decoders); none by default."""
        return []

    def unit_loss(self, i: int, h, carry, y: torch.Tensor) -> tuple[torch.Tensor | None, Any, torch.Tensor | None]:
        """``(loss, carry for unit i+1, class scores or None)`` from unit ``i``'s output ``h``
        (attached to the unit's graph) and the ``carry`` of unit ``i-1``."""
        raise NotImplementedError

    def forward_unit(self, i: int, h):
        """Unit ``i``'s blocks applied to its (detached) input."""
        for block in self.units[i]:
            h = block(h)
        return h

    # ------------------------------------------------------------------ random streams
    def unit_seed(self, i: int) -> int:
        """The seed of unit ``i``'s stream, mixed from the run's seed and ``i`` (so the streams of
        different units, and the global stream seeded with the run's seed, are unrelated)."""
        return int(np.random.SeedSequence([self.rng_seed, i]).generate_state(1, np.uint64)[0])

    @contextmanager
    def unit_rng(self, i: int) -> Iterator[None]:
        """Run the body with the global CPU generator (and that of the rule's GPU) continuing unit
        ``i``'s own stream; the global state is restored afterwards. Code that draws from the
        global RNG (``nn.Dropout``, ``torch.bernoulli``) needs no generator argument this way."""
        if self.rng_seed is None:
            self.rng_seed = torch.initial_seed()
        device = next(self.model.parameters()).device
        generators = [torch.default_generator]
        if device.type == "cuda":
            generators.append(torch.cuda.default_generators[device.index])
        states = self.unit_rng_states.setdefault(i, {})
        saved = [g.get_state() for g in generators]
        for g in generators:
            if g.device.type not in states:
                states[g.device.type] = torch.Generator(g.device).manual_seed(self.unit_seed(i)).get_state()
            g.set_state(states[g.device.type])
        try:
            yield
        finally:
            for g, state in zip(generators, saved):
                states[g.device.type] = g.get_state()
                g.set_state(state)

    def random_streams(self) -> dict:
        # A copy: a pipeline fills in the units other ranks own.
        return {i: dict(states) for i, states in self.unit_rng_states.items()}

    def load_random_streams(self, streams: dict) -> None:
        # Keyed by device type, so a stream saved on cuda:1 (a pipeline stage, a data-parallel
        # rank) continues on cuda:0; torch.device(key).type also reads the "cuda:k" keys of
        # checkpoints written before streams were keyed this way.
        self.unit_rng_states = {i: {torch.device(key).type: t.cpu() for key, t in states.items()}
                                for i, states in streams.items()}

    # ------------------------------------------------------------------ the schedule
    def unit_parameter_groups(self, i: int) -> list[dict]:
        """Unit ``i``'s optimizer groups: one per model block (named ``blocks.k``, so per-block
        learning rates apply), then its auxiliary modules (``aux.i``)."""
        index = {id(b): k for k, b in enumerate(self.model.blocks)}
        groups = [{"name": f"blocks.{index[id(b)]}", "params": [p for p in b.parameters() if p.requires_grad]}
                  for b in self.units[i]]
        aux = [p for m in self.unit_modules(i) for p in m.parameters() if p.requires_grad]
        groups.append({"name": f"aux.{i}", "params": aux})
        return [g for g in groups if g["params"]]

    def configure_optimizers(self, make_optimizer):
        """One optimizer per unit (``None`` for a parameter-free unit, a lone pooling block)."""
        self.unit_optimizers = []
        for i in range(len(self.units)):
            groups = self.unit_parameter_groups(i)
            self.unit_optimizers.append(make_optimizer(groups) if groups else None)
        self.optimizers = [opt for opt in self.unit_optimizers if opt is not None]
        return self.optimizers

    def train_unit(self, i: int, h, carry, y: torch.Tensor) -> UnitResult:
        """Forward, local loss, backward and optimizer step of unit ``i`` on ``sg(h)``."""
        opt = self.unit_optimizers[i]
        if opt is not None:
            opt.zero_grad(set_to_none=True)
        h = self.forward_unit(i, detached(h))  # no gradient leaves the unit
        loss, carry, output = self.unit_loss(i, h, carry, y)
        if loss is not None and loss.requires_grad:
            loss.backward()  # frees this unit's graph before the next unit runs
        if opt is not None:
            opt.step()
        return UnitResult(detached(h), carry,
                          None if loss is None else loss.detach(),
                          None if output is None else output.detach())

    def run_unit(self, i: int, h, carry, y: torch.Tensor) -> UnitResult:
        """:meth:`train_unit` drawing from unit ``i``'s own stream: what the schedule runs, in one
        process (:meth:`train_step`) or as a pipeline stage."""
        with self.unit_rng(i):
            return self.train_unit(i, h, carry, y)

    def train_step(self, x: torch.Tensor, y: torch.Tensor) -> StepResult:
        if not self.optimizers:
            raise RuntimeError("call configure_optimizers() before train_step()")
        self.model.check_input(x)
        h, carry = x, None
        for i in range(len(self.units)):
            result = self.run_unit(i, h, carry, y)
            h, carry = result.h, result.carry
        self.after_step()
        return StepResult(result.loss, result.output)
