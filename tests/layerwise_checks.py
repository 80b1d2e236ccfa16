"""Locality checks shared by the tests of layer-local rules (``algorithms/layerwise.py``)."""

from __future__ import annotations

import contextlib
import copy

import torch

from bioplausible.algorithms.layerwise import detached


def sgd0(groups):
    return torch.optim.SGD(groups, lr=0.0)  # the step leaves the weights, the grads stay readable


def unit_losses(rule, x, y, h=None, own_streams: bool = False) -> list[torch.Tensor]:
    """Every unit's loss on the detached output of the unit below, all graphs kept alive (the
    input of unit 0 is ``x`` unless the rule streams something else, e.g. FF's pairs, given as ``h``).
    Random draws come from the global RNG, or with ``own_streams`` from each unit's own stream
    as in :meth:`train_step`."""
    losses, h, carry = [], x if h is None else h, None
    for i in range(len(rule.units)):
        with rule.unit_rng(i) if own_streams else contextlib.nullcontext():
            h = rule.forward_unit(i, detached(h))
            loss, carry, _ = rule.unit_loss(i, h, carry, y)
        losses.append(loss)
    return losses


def owner(rule) -> dict[str, int]:
    """The unit whose optimizer trains each parameter of the rule (blocks and auxiliary modules)."""
    ids = {id(p): i for i in range(len(rule.units))
           for m in rule.units[i] + rule.unit_modules(i) for p in m.parameters()}
    return {n: ids[id(p)] for n, p in rule.named_parameters()}


def assert_each_loss_reaches_only_its_unit(rule, losses: list[torch.Tensor]) -> None:
    """The gradient of unit ``i``'s loss is zero on every parameter of other units and nonzero on
    each of unit ``i``'s own."""
    names, params = zip(*rule.named_parameters())
    own = owner(rule)
    for i, loss in enumerate(losses):
        for n, g in zip(names, torch.autograd.grad(loss, params, retain_graph=True, allow_unused=True)):
            if own[n] != i:
                assert g is None or not g.any(), f"loss of unit {i} reaches {n}"
            else:
                assert g is not None and g.any(), f"loss of unit {i} does not reach its own {n}"


def assert_steps_reduce_every_unit_loss(rule, x, y, steps: int = 20, lr: float = 1e-2) -> None:
    """A few Adam steps on one batch lower the loss of every unit (a learning check that does not
    depend on the rule's prediction, so it also holds for the units below the last)."""
    rule.configure_optimizers(lambda groups: torch.optim.Adam(groups, lr=lr))
    with torch.no_grad():
        before = torch.stack(unit_losses(rule, x, y))
    for _ in range(steps):
        rule.train_step(x, y)
    with torch.no_grad():
        after = torch.stack(unit_losses(rule, x, y))
    assert (after < before).all(), (before, after)


def assert_schedule_equals_summed_backward(rule, x, y, streams: bool = False):
    """The per-unit schedule (:meth:`train_step`) leaves on every trainable tensor exactly the
    gradients of one backward of the summed unit losses of the rule as it was before the step.
    The step moves the weights (SGD, lr 0.1), so a schedule that fed unit i+1 from unit i after
    unit i's step, or recomputed anything after it, fails. Both draw from the units' own random
    streams, from the same start: the same dropout masks and negative labels (with ``streams``,
    unit 0's input is ``rule.streams(x, y)`` built in unit 0's stream, as FF's train_unit does).
    Returns the step's result and a copy of the rule from before the step."""
    rule.configure_optimizers(lambda groups: torch.optim.SGD(groups, lr=0.1))
    before = copy.deepcopy(rule)
    result = rule.train_step(x, y)
    separate = {n: p.grad.clone() for n, p in rule.named_parameters() if p.grad is not None}
    assert not all(torch.equal(p, q) for p, q in zip(rule.parameters(), before.parameters())), "the step moved nothing"
    with before.unit_rng(0):
        h = before.streams(x, y) if streams else None
    sum(unit_losses(before, x, y, h, own_streams=True)).backward()
    together = {n: p.grad.clone() for n, p in before.named_parameters() if p.grad is not None}
    assert separate.keys() == together.keys() == {n for n, p in rule.named_parameters() if p.requires_grad}
    for n in separate:
        assert torch.equal(separate[n], together[n]), n
    return result, before


def assert_unit_passes_on_no_graph(rule, x, y) -> None:
    """What unit 0 hands to unit 1 (a tensor or a tuple of streams) carries no autograd graph."""
    rule.configure_optimizers(sgd0)
    h = rule.train_unit(0, x, None, y).h
    assert all(not t.requires_grad and t.grad_fn is None for t in (h if isinstance(h, tuple) else (h,)))


def assert_prediction_from_any_stage_equals_predict(rule, x) -> None:
    """A layer-parallel stage that starts at unit ``first`` predicts from that unit's input what
    the whole rule predicts from ``x`` (evaluation batches stream through the stages)."""
    h = x
    for first in range(len(rule.units)):
        torch.testing.assert_close(rule.predict_from(first, h), rule.predict(x))
        h = rule.forward_unit(first, h)
