"""Layer-parallel training of layer-local rules (``--layer-parallel``; DISTRIBUTED.md, second part).

A :class:`~bioplausible.algorithms.layerwise.LayerwiseRule` trains unit ``i`` from
``(h, carry, y)`` alone -- the detached output of unit ``i-1``, what that unit passes on, and
the labels -- with no message from above. So rank ``k`` can own a contiguous range of units
(a *stage*): for every micro-batch it runs :meth:`LayerwiseRule.train_unit` for its units
(forward, local loss, backward, its optimizers' step), then sends the detached ``(h, carry, y)``
to rank ``k+1`` with ``isend`` and goes on with the next micro-batch while at most ``depth``
sends are in flight. Each stage handles the stream in order, so micro-batch ``t`` meets exactly
the weights it would meet in one process, and every unit draws its random numbers (dropout,
SLL's masks) from its own stream (:meth:`LayerwiseRule.unit_rng`), the same on whichever rank
it runs: the final weights are bitwise those of a single process (tested for SLL with masks and
dropout, DGL on a conv net, local losses and FF with dropout).

* Every rank builds the whole rule from the seed (identical initial weights) and trains only
  its stage; the rest of its copy is stale until a checkpoint gathers it.
* Stages are cut by measured cost: rank 0 times each unit's forward, loss and backward on a
  deep copy of the rule (no real update), and the units are split into contiguous stages that
  minimise the largest stage cost.
* The stream carries one message type per micro-batch (``TRAIN``, ``EVAL`` with the split, or
  ``END``): evaluation batches run through the same stages in eval mode and the last stage
  scores them; ``END`` drains the stream at the end of an epoch.
* Checkpoints are taken at micro-batch boundaries (end of an epoch, stream drained): rank 0
  gathers each stage's tensors, optimizer states and unit random streams and writes a
  checkpoint identical in form to a single-process one, so a run can resume with or without
  layer parallelism.
* A non-finite loss on the last stage stops its training but not the stream: it drains the
  epoch's messages, and the error travels with the epoch's metrics, so every rank stops with
  the same :class:`~bioplausible.errors.DivergenceError` instead of waiting on a dead peer.
* Rules with top-down signals (``layer_local = False``: DFA's output error, PC, EP, DTP) change
  meaning if pipelined and are refused.
"""

from __future__ import annotations

import copy
import io
import pickle
import time
import warnings
from collections import deque
from typing import Any

import torch
import torch.distributed as dist

from ..errors import ConfigError
from .distributed import DistributedContext
from .metrics import MetricTracker

TRAIN, EVAL, END = 0, 1, 2
HEADER = 4  # kind, split, bytes of a new layout (0: same as the previous message), spare


def check_layer_parallel(rule, world_size: int) -> None:
    """Refuse a rule that cannot be split into stages, with the reason."""
    from ..algorithms.layerwise import LayerwiseRule

    if not getattr(rule, "layer_local", False) or not isinstance(rule, LayerwiseRule):
        raise ConfigError(
            f"--layer-parallel needs a layer-local rule (a LayerwiseRule: sll, local losses, dgl, ...); "
            f"'{rule.name}' is not: its layers learn from signals sent down from above (or it has no "
            "unit structure), which a forward-only pipeline cannot carry. Use data parallelism instead "
            "(torchrun without --layer-parallel)")
    if len(rule.units) < world_size:
        raise ConfigError(f"--layer-parallel: '{rule.name}' has {len(rule.units)} units but {world_size} "
                          f"ranks; run at most {len(rule.units)} processes")


def balanced_partition(costs: list[float], parts: int) -> list[tuple[int, int]]:
    """Contiguous ``[start, end)`` ranges, one per part, minimising the largest sum (exact DP)."""
    n = len(costs)
    prefix = [0.0]
    for c in costs:
        prefix.append(prefix[-1] + c)
    inf = float("inf")
    best = [[inf] * (n + 1) for _ in range(parts + 1)]
    cut = [[0] * (n + 1) for _ in range(parts + 1)]
    best[0][0] = 0.0
    for k in range(1, parts + 1):
        for end in range(k, n - (parts - k) + 1):
            for start in range(k - 1, end):
                cost = max(best[k - 1][start], prefix[end] - prefix[start])
                if cost < best[k][end]:
                    best[k][end], cut[k][end] = cost, start
    bounds, end = [], n
    for k in range(parts, 0, -1):
        bounds.append((cut[k][end], end))
        end = cut[k][end]
    return bounds[::-1]


def measure_unit_costs(rule, x: torch.Tensor, y: torch.Tensor, repeats: int = 3) -> list[float]:
    """Seconds of forward, loss and backward per unit on ``(x, y)``, on a deep copy of the rule
    (no optimizer step, global RNG restored), best of ``repeats``."""
    probe = copy.deepcopy(rule)
    probe.optimizers, probe.unit_optimizers = [], [None] * len(probe.units)
    rng = torch.get_rng_state()
    costs = [float("inf")] * len(probe.units)
    try:
        for _ in range(repeats):
            h, carry = x, None
            for i in range(len(probe.units)):
                start = time.perf_counter()
                result = probe.run_unit(i, h, carry, y)
                if x.device.type == "cuda":
                    torch.cuda.synchronize(x.device)
                costs[i] = min(costs[i], time.perf_counter() - start)
                h, carry = result.h, result.carry
    finally:
        torch.set_rng_state(rng)
    return costs


def _flatten(obj, tensors: list) -> Any:
    """A picklable layout of ``obj`` with its tensors moved to ``tensors`` (nested tuples/lists/None)."""
    if isinstance(obj, torch.Tensor):
        tensors.append(obj.contiguous())
        return ("t", obj.dtype, tuple(obj.shape))
    if isinstance(obj, (tuple, list)):
        return (type(obj).__name__, [_flatten(o, tensors) for o in obj])
    if obj is None or isinstance(obj, (int, float, bool, str)):
        return ("v", obj)
    raise TypeError(f"layer-parallel: cannot stream a {type(obj).__name__} between stages")


def _empties(layout, device) -> list[torch.Tensor]:
    kind = layout[0]
    if kind == "t":
        return [torch.empty(layout[2], dtype=layout[1], device=device)]
    if kind in ("tuple", "list"):
        return [t for item in layout[1] for t in _empties(item, device)]
    return []


def _rebuild(layout, tensors) -> Any:
    kind = layout[0]
    if kind == "t":
        return next(tensors)
    if kind in ("tuple", "list"):
        items = [_rebuild(item, tensors) for item in layout[1]]
        return tuple(items) if kind == "tuple" else items
    return layout[1]


class Stream:
    """Point-to-point messages ``(kind, split, payload)`` from rank k to rank k+1, sent with
    ``isend`` and at most ``depth`` messages in flight; the receiver reads them in order."""

    def __init__(self, ctx: DistributedContext, depth: int):
        self.ctx, self.depth = ctx, depth
        self.pending: deque = deque()
        self.sent_layout = self.received_layout = None

    def send(self, kind: int, split: int, payload) -> None:
        dst, device = self.ctx.rank + 1, self.ctx.device
        tensors: list[torch.Tensor] = []
        layout = _flatten(payload, tensors)
        blob = b"" if layout == self.sent_layout else pickle.dumps(layout)
        self.sent_layout = layout
        header = torch.tensor([kind, split, len(blob), 0], dtype=torch.int64, device=device)
        message = [header]
        if blob:
            message.append(torch.frombuffer(bytearray(blob), dtype=torch.uint8).to(device))
        message += tensors
        while len(self.pending) >= self.depth:  # bounded: wait for the oldest message
            for work in self.pending.popleft()[0]:
                work.wait()
        self.pending.append(([dist.isend(t, dst) for t in message], message))  # keep tensors alive

    def recv(self) -> tuple[int, int, Any]:
        src, device = self.ctx.rank - 1, self.ctx.device
        header = torch.empty(HEADER, dtype=torch.int64, device=device)
        dist.recv(header, src)
        kind, split, nbytes = (int(v) for v in header[:3].tolist())
        if nbytes:
            blob = torch.empty(nbytes, dtype=torch.uint8, device=device)
            dist.recv(blob, src)
            self.received_layout = pickle.loads(blob.cpu().numpy().tobytes())
        tensors = _empties(self.received_layout, device)
        for t in tensors:
            dist.recv(t, src)
        return kind, split, _rebuild(self.received_layout, iter(tensors))

    def drain(self) -> None:
        while self.pending:
            for work in self.pending.popleft()[0]:
                work.wait()


class LayerPipeline:
    """This rank's stage of a layer-parallel run and the epoch loop that streams through it."""

    def __init__(self, ctx: DistributedContext, rule, depth: int, sample: tuple[torch.Tensor, torch.Tensor]):
        check_layer_parallel(rule, ctx.world_size)
        if depth < 1:
            raise ConfigError(f"'pipeline_depth' must be >= 1, got {depth}")
        self.ctx, self.rule = ctx, rule
        costs = measure_unit_costs(rule, *sample) if ctx.is_main else None
        self.costs = ctx.broadcast_object(costs)
        self.bounds = balanced_partition(self.costs, ctx.world_size)
        self.first, self.end = self.bounds[ctx.rank]
        self.is_first, self.is_last = ctx.rank == 0, ctx.rank == ctx.world_size - 1
        self.stream = Stream(ctx, depth)
        # Which optimizer (index in rule.optimizers) belongs to which unit, hence to which rank.
        owner_of_unit = {i: r for r, (a, b) in enumerate(self.bounds) for i in range(a, b)}
        self.optimizer_owner = [owner_of_unit[i] for i, opt in enumerate(rule.unit_optimizers) if opt is not None]

    def balance(self) -> dict:
        """Measured unit costs and each stage's share of the total (for logs and benchmarks)."""
        total = sum(self.costs) or 1.0
        return {"unit_seconds": self.costs, "stages": self.bounds,
                "stage_share": [sum(self.costs[a:b]) / total for a, b in self.bounds]}

    # ------------------------------------------------------------------ one stage's work
    def train_stage(self, h, carry, y):
        result = None
        for i in range(self.first, self.end):
            result = self.rule.run_unit(i, h, carry, y)
            h, carry = result.h, result.carry
        self.rule.after_step()
        return result

    @torch.no_grad()
    def eval_stage(self, h):
        if self.is_last:
            return stage_predict(self.rule, self.first, h)
        for i in range(self.first, self.end):
            h = self.rule.forward_unit(i, h)
        return h

    # ------------------------------------------------------------------ the epoch
    def run_epoch(self, trainer, epoch: int) -> dict:
        """Train one epoch through the pipeline and evaluate; every rank returns the same metrics."""
        rule = self.rule
        rule.train()
        splits = [("test", trainer.data.test)] + ([("val", trainer.data.val)] if trainer.data.val is not None else [])
        task = trainer.data.task
        loss_sum, seen = torch.zeros((), device=self.ctx.device), 0  # summed as Trainer.run_epoch does
        tracker = MetricTracker(task, self.ctx.device)
        evals = {name: [0.0, MetricTracker(task, self.ctx.device), 0] for name, _ in splits}
        start, train_seconds = time.perf_counter(), None
        diverged = None  # (step, what): the last stage's first non-finite loss
        trainer.reset_peak_memory()
        if self.is_first:
            trainer.train_loader.set_epoch(epoch)
            batches = iter(trainer.train_loader)
            for step in range(trainer.steps_per_epoch):
                x, y = next(batches)
                rule.model.check_input(x)
                result = self.train_stage(x, None, y)
                step_schedulers(trainer.schedulers)
                self.stream.send(TRAIN, 0, (result.h, result.carry, y))
            rule.eval()
            for split, (name, (x_all, y_all)) in enumerate(splits):
                for i in range(0, len(y_all), 1000):
                    x = x_all[i:i + 1000].to(self.ctx.device)
                    y = y_all[i:i + 1000].to(self.ctx.device)
                    self.stream.send(EVAL, split, (self.eval_stage(x), y))
            self.stream.send(END, 0, None)
        else:
            step = 0
            while True:
                kind, split, payload = self.stream.recv()
                if kind == TRAIN:
                    h, carry, y = payload
                    if diverged is not None:
                        continue  # drain the epoch: the error is raised on every rank below
                    rule.train()
                    result = self.train_stage(h, carry, y)
                    step_schedulers(trainer.schedulers)
                    if self.is_last:
                        if not torch.isfinite(result.loss):
                            diverged = (step, f"loss is {result.loss.item()} on the last stage (rank {self.ctx.rank})")
                        loss_sum += result.loss * len(y)
                        tracker.update(result.output, y)
                        seen += len(y)
                    else:
                        self.stream.send(TRAIN, 0, (result.h, result.carry, y))
                    step += 1
                elif kind == EVAL:
                    train_seconds = time.perf_counter() - start if train_seconds is None else train_seconds
                    h, y = payload
                    rule.eval()
                    out = self.eval_stage(h)
                    if self.is_last:
                        entry = evals[splits[split][0]]
                        entry[0] += rule.loss(out, y).item() * len(y)
                        entry[1].update(out, y)
                        entry[2] += len(y)
                    else:
                        self.stream.send(EVAL, split, (out, y))
                else:
                    if not self.is_last:
                        self.stream.send(END, 0, None)
                    break
            train_seconds = time.perf_counter() - start if train_seconds is None else train_seconds
        self.stream.drain()
        rule.train()
        stage_peaks = self.ctx.gather_float(trainer.peak_memory_mb())  # every stage's, not the last one's
        metrics = None
        if self.is_last and diverged is not None:
            metrics = {"diverged": diverged}
        elif self.is_last:
            epoch_seconds = train_seconds  # training only, as Trainer.run_epoch measures it
            metrics = {"epoch": epoch + 1, "train_loss": loss_sum.item() / max(seen, 1), **tracker.compute("train")}
            for name, (total, tr, count) in evals.items():
                metrics.update({f"{name}_loss": total / max(count, 1), **tr.compute(name)})
            metrics.update(lr=trainer.optimizers[0].param_groups[0]["lr"], epoch_seconds=epoch_seconds,
                           samples_per_second=seen / epoch_seconds, data_fraction=0.0,
                           peak_memory_mb=max(stage_peaks), stage_peak_memory_mb=stage_peaks,
                           stage_share=self.balance()["stage_share"])
        metrics = self.ctx.broadcast_object(metrics, src=self.ctx.world_size - 1)
        if "diverged" in metrics:
            trainer.diverged(epoch, *metrics["diverged"])
        return metrics

    # ------------------------------------------------------------------ checkpoints
    def owned_state(self) -> dict:
        """The rule tensors of this rank's units (blocks and auxiliary modules), on the CPU."""
        prefixes = self.unit_prefixes(self.first, self.end)
        return {k: v.detach().cpu() for k, v in self.rule.state_dict().items() if k.startswith(prefixes)}

    def unit_prefixes(self, first: int, end: int) -> tuple[str, ...]:
        names = {id(m): n for n, m in self.rule.named_modules()}
        modules = [m for i in range(first, end) for m in list(self.rule.units[i]) + list(self.rule.unit_modules(i))]
        return tuple(names[id(m)] + "." for m in modules if id(m) in names)

    def gather_state(self, state: dict) -> dict | None:
        """On rank 0: ``state`` (a trainer checkpoint of rank 0's copy) with every stage's tensors,
        optimizer states, unit random streams and global RNG state filled in from its owner;
        ``None`` on other ranks."""
        mine = {"rule": self.owned_state(),
                "optimizers": {j: opt.state_dict() for j, opt in enumerate(self.rule.optimizers)
                               if self.optimizer_owner[j] == self.ctx.rank},
                "rng": torch.get_rng_state(),
                "unit_rng": {i: s for i, s in self.rule.unit_rng_states.items() if self.first <= i < self.end}}
        buffer = io.BytesIO()
        torch.save(mine, buffer)
        gathered = [None] * self.ctx.world_size if self.ctx.is_main else None
        dist.gather_object(buffer.getvalue(), gathered, dst=0)
        if not self.ctx.is_main:
            return None
        parts = [torch.load(io.BytesIO(b), weights_only=True) for b in gathered]
        for part in parts:
            state["rule"].update(part["rule"])
            for j, s in part["optimizers"].items():
                state["optimizers"][j] = s
            state["rng"].setdefault("units", {}).update(part["unit_rng"])
        state["rng_ranks"] = [part["rng"] for part in parts]
        return state

    def restore_rng(self, state: dict) -> None:
        """After a resume: each rank continues its own RNG stream."""
        if "rng_ranks" in state and len(state["rng_ranks"]) == self.ctx.world_size:
            torch.set_rng_state(state["rng_ranks"][self.ctx.rank].cpu())


def step_schedulers(schedulers) -> None:
    """Every optimizer's schedule advances on every rank, so rank 0's checkpoint holds the
    schedules of all stages; the optimizers of other stages never step here, which torch warns of."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Detected call of `lr_scheduler.step")
        for scheduler in schedulers:
            scheduler.step()


def stage_predict(rule, first: int, h) -> torch.Tensor:
    """Class scores from ``h``, the output of unit ``first - 1``.

    A rule may define ``predict_from(first, h)``; otherwise the rule's own :meth:`predict` runs
    with the units below ``first`` replaced by ``h`` (their ``forward_unit``, and for a rule
    that predicts with ``model(x)``, the model's forward). That is exact for rules whose
    prediction depends on the lower units only through their output (SLL, DGL, local losses);
    a rule that reads every layer (Forward-Forward's goodness) must define ``predict_from``."""
    if first == 0:
        return rule.predict(h)
    if hasattr(rule, "predict_from"):
        return rule.predict_from(first, h)
    model, original = rule.model, rule.forward_unit
    upper = [block for unit in rule.units[first:] for block in unit]

    def forward_unit(i, inp):
        return h if i < first else original(i, inp)

    def model_forward(_x):
        out = h
        for block in upper:
            out = block(out)
        return out

    rule.forward_unit, model.forward, model.check_input = forward_unit, model_forward, lambda x: None
    try:
        return rule.predict(h)
    finally:
        del rule.__dict__["forward_unit"]
        del model.__dict__["forward"], model.__dict__["check_input"]
