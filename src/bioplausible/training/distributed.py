"""Data-parallel training on ``torch.distributed`` (DISTRIBUTED.md), launched by ``torchrun``.

``bioplausible train ...`` runs unchanged under ``torchrun --standalone --nproc_per_node=N``:
:func:`setup` reads rank and world size from the environment torchrun sets, opens the process
group (NCCL on CUDA, gloo on CPU), picks ``cuda:<local rank>`` and sets the intra-op threads
(torchrun sets ``OMP_NUM_THREADS=1``; we use cores / local world size unless ``num_threads`` is
given). Without those variables it returns a single-process context and nothing changes.

How replicas are kept identical (:meth:`DistributedContext.wrap`), by what the rule declares:

* every rank seeds and builds the same model and rule; then the whole rule state (parameters
  *and* buffers: fixed feedback matrices, projections, masks) is broadcast once from rank 0, so
  a tensor drawn differently on some rank cannot survive start-up (or a resume);
* ``update_kind = "autograd"`` rules whose model is called as ``model(x)``: the model runs
  inside ``DistributedDataParallel(broadcast_buffers=False)``, whose bucketed hooks average the
  gradients during ``backward()``; the rule's code is unchanged (``model.forward`` is routed
  through the DDP wrapper). Plastic feedback that is an ``nn.Parameter`` fed by autograd (KP's
  B, DLL's Θ) is averaged like any weight;
* ``update_kind = "manual"`` rules (EP, DEP, SAL, WM, PC, Hebbian, ...): :attr:`grad_sync` is
  set to one coalesced all-reduce (mean) of every ``.grad`` the rule wrote, which
  ``LearningRule.train_step`` calls before the optimizers step;
* whatever is left -- layer-local rules (one optimizer per unit, each stepping before the next
  unit runs), a rule's own parameters outside the model, an autograd rule that never called
  ``model(x)`` in this step, a rule that overrides ``train_step`` without calling
  ``grad_sync`` -- is averaged by a step pre-hook on every optimizer, one coalesced all-reduce
  of that optimizer's not-yet-synchronised gradients just before it steps. So every tensor an
  optimizer steps holds the mean over ranks of the per-shard update, exactly once;
* buffers that change during training are reduced after every step by a declared reduction:
  BatchNorm's running statistics by mean, and a rule may declare more with a class attribute
  ``buffer_reductions = {"name suffix": "mean" | "sum"}``. Anything else that drifts is caught
  by the replica check.

The replica check (``check_replicas = K``) hashes every tensor of ``rule.state_dict()`` every
K steps, all-gathers the hashes, and stops with :class:`ReplicaMismatchError` naming the first
tensor that differs and the ranks that disagree.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field
from typing import Sequence

import torch
import torch.distributed as dist
from torch import nn

from ..errors import BioplausibleError, ConfigError

# State-dict name suffixes of buffers that change in training, and how ranks combine them.
DEFAULT_BUFFER_REDUCTIONS = {"running_mean": "mean", "running_var": "mean"}


class ReplicaMismatchError(BioplausibleError):
    """Raised when the replica check finds a tensor that differs across ranks."""


def env_world() -> tuple[int, int, int, int]:
    """``(rank, world_size, local_rank, local_world_size)`` from torchrun's variables."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", str(rank)))
    local_world = int(os.environ.get("LOCAL_WORLD_SIZE", str(world)))
    return rank, world, local_rank, local_world


@dataclass
class DistributedContext:
    """Rank, world size and device of this process; ``world_size == 1`` means no process group."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    check_replicas: int = 0
    steps: int = 0
    sync: "GradientSync | None" = None

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    # ------------------------------------------------------------------ collectives
    def broadcast_object(self, obj, src: int = 0):
        if not self.enabled:
            return obj
        box = [obj]
        dist.broadcast_object_list(box, src=src, device=self._object_device())
        return box[0]

    def barrier(self) -> None:
        if self.enabled:
            dist.barrier()

    def sum_(self, tensor: torch.Tensor) -> None:
        """Sum ``tensor`` over ranks in place (a no-op in one process)."""
        if self.enabled:
            dist.all_reduce(tensor)

    def ranks_where(self, flag: bool) -> list[int]:
        """The ranks on which ``flag`` holds, known to every rank (one all-reduce): lets every rank
        take the same decision, e.g. to stop, where only some ranks see the reason."""
        return [rank for rank, value in enumerate(self.gather_float(float(flag))) if value]

    def gather_float(self, value: float) -> list[float]:
        """Every rank's ``value``, in rank order, known to every rank (one all-reduce)."""
        values = torch.zeros(self.world_size, device=self.device, dtype=torch.float64)
        values[self.rank] = value
        self.sum_(values)
        return values.tolist()

    def _object_device(self) -> torch.device | None:
        return self.device if self.device.type == "cuda" else None

    @torch.no_grad()
    def broadcast_state(self, module: nn.Module, src: int = 0) -> None:
        """Every parameter and buffer of ``module`` (persistent or not) from rank ``src``."""
        if not self.enabled:
            return
        for tensor in list(module.parameters()) + list(module.buffers()):
            dist.broadcast(tensor.data, src=src)

    @torch.no_grad()
    def all_reduce_mean(self, tensors: Sequence[torch.Tensor]) -> None:
        """Average ``tensors`` over ranks in place with one coalesced all-reduce per dtype."""
        if not self.enabled or not tensors:
            return
        by_dtype: dict[torch.dtype, list[torch.Tensor]] = {}
        for t in tensors:
            by_dtype.setdefault(t.dtype, []).append(t)
        for group in by_dtype.values():
            flat = torch.cat([t.reshape(-1) for t in group])
            dist.all_reduce(flat)
            flat.div_(self.world_size)
            offset = 0
            for t in group:
                t.copy_(flat[offset:offset + t.numel()].view_as(t))
                offset += t.numel()

    # ------------------------------------------------------------------ data parallelism
    def wrap(self, rule, optimizers: list[torch.optim.Optimizer], use_ddp: bool = True) -> "GradientSync | None":
        """Make ``rule`` data-parallel across the ranks (see the module docstring)."""
        if not self.enabled:
            return None
        self.broadcast_state(rule)
        return GradientSync(self, rule, optimizers, use_ddp)

    # ------------------------------------------------------------------ the trainer's hooks
    def shard(self, config) -> dict:
        """``BatchLoader`` arguments: data parallelism shards the training set; a pipeline's
        first stage reads all of it."""
        if not self.enabled or config.layer_parallel:
            return {}
        return {"rank": self.rank, "world_size": self.world_size}

    def parallelize(self, trainer):
        """Install data parallelism on ``trainer.rule``, or return this rank's
        :class:`~bioplausible.training.pipeline.LayerPipeline` stage with ``layer_parallel``."""
        config, rule = trainer.config, trainer.rule
        if config.layer_parallel:
            from .pipeline import LayerPipeline, check_layer_parallel

            check_layer_parallel(rule, self.world_size)
            if not self.enabled:
                return None  # one stage: the ordinary loop runs exactly this schedule
            if config.check_replicas:
                raise ConfigError("--check-replicas compares data-parallel replicas; with --layer-parallel "
                                  "each rank trains different units, so there are no replicas to compare")
            self.broadcast_state(rule)
            x, y = trainer.data.train
            sample = (x[:config.batch_size].to(self.device), y[:config.batch_size].to(self.device))
            return LayerPipeline(self, rule, config.pipeline_depth, sample)
        self.sync = self.wrap(rule, trainer.optimizers, use_ddp=config.data_parallel == "ddp")
        return None

    def sum_train_metrics(self, loss_sum: torch.Tensor, tracker, seen: int) -> int:
        """Sum an epoch's training loss and metric counts over the shards (in place); returns
        the number of examples seen by all ranks."""
        if not self.enabled:
            return seen
        packed = torch.cat([loss_sum.detach().reshape(1).double(), tracker.sums.double(),
                            torch.tensor([tracker.count, seen], dtype=torch.float64, device=tracker.sums.device)])
        packed = packed.to(self.device)
        dist.all_reduce(packed)
        loss_sum.copy_(packed[0])
        tracker.sums.copy_(packed[1:1 + len(tracker.sums)])
        tracker.count = int(packed[-2].item())
        return int(packed[-1].item())

    def describe(self, pipeline=None) -> dict:
        """What a run's summary records about the process group."""
        if not self.enabled:
            return {}
        info = {"world_size": self.world_size, "backend": dist.get_backend(),
                "mode": "layer-parallel" if pipeline is not None else "data-parallel"}
        if pipeline is not None:
            info.update(pipeline.balance())
        elif self.sync is not None:
            info["ddp"] = self.sync.ddp is not None
        return {"distributed": info}

    # ------------------------------------------------------------------ replica check
    def state_hashes(self, module: nn.Module) -> tuple[list[str], torch.Tensor]:
        """Names and 63-bit hashes of the bytes of every tensor in ``module.state_dict()``."""
        names, hashes = [], []
        for name, t in module.state_dict().items():
            if not isinstance(t, torch.Tensor):
                continue
            data = t.detach().cpu().contiguous().reshape(-1)
            digest = hashlib.blake2b(data.view(torch.uint8).numpy().tobytes(), digest_size=8)
            digest.update(str((data.dtype, tuple(data.shape))).encode())
            names.append(name)
            hashes.append(int.from_bytes(digest.digest(), "little") >> 1)
        return names, torch.tensor(hashes, dtype=torch.int64)

    def assert_replicas_in_sync(self, module: nn.Module, step: int | None = None) -> None:
        """Raise :class:`ReplicaMismatchError` naming the first tensor whose bytes differ across ranks."""
        if not self.enabled:
            return
        names, hashes = self.state_hashes(module)
        counts = [None] * self.world_size
        dist.all_gather_object(counts, len(names))
        if len(set(counts)) > 1:
            raise ReplicaMismatchError(f"replica check: ranks hold different numbers of state tensors ({counts})")
        hashes = hashes.to(self.device)
        gathered = [torch.empty_like(hashes) for _ in range(self.world_size)]
        dist.all_gather(gathered, hashes)
        table = torch.stack(gathered).cpu()
        differs = (table != table[0]).any(dim=0).nonzero().flatten()
        if len(differs):
            i = int(differs[0])
            ranks = [r for r in range(self.world_size) if table[r, i] != table[0, i]]
            when = f" at step {step}" if step is not None else ""
            raise ReplicaMismatchError(
                f"replica check{when}: '{names[i]}' differs between rank 0 and rank(s) {ranks} "
                f"({len(differs)} of {len(names)} tensors differ); the ranks' rule states have diverged"
            )


class _RoutedForward:
    """Stands in for ``model.forward`` so that the rule's ``self.model(x)`` runs through DDP.

    DDP calls ``module(x)`` again from inside its own forward: that inner call runs the model's
    real forward."""

    def __init__(self, model: nn.Module, ddp: nn.parallel.DistributedDataParallel, sync: "GradientSync"):
        self.model, self.ddp, self.sync = model, ddp, sync
        self.inside = False

    def __call__(self, *args, **kwargs):
        if self.inside:
            return type(self.model).forward(self.model, *args, **kwargs)
        if not (torch.is_grad_enabled() and self.model.training):
            return type(self.model).forward(self.model, *args, **kwargs)  # evaluation: no reducer
        if self.sync.ddp_forward_this_step:
            raise ConfigError(
                "data-parallel DDP: the rule called model(x) twice with gradients in one step; "
                "run it with --set data_parallel=allreduce")
        self.inside = True
        try:
            out = self.ddp(*args, **kwargs)
        finally:
            self.inside = False
        self.sync.ddp_forward_this_step = True
        return out


class GradientSync:
    """The synchronisation installed on one rule (DDP, ``grad_sync``, step pre-hooks, buffers)."""

    def __init__(self, ctx: DistributedContext, rule, optimizers: list[torch.optim.Optimizer], use_ddp: bool):
        self.ctx, self.rule = ctx, rule
        self.synced: set[int] = set()  # ids of parameters whose .grad is already averaged this step
        self.ddp_params: set[int] = set()
        self.ddp_forward_this_step = False
        self.ddp = None
        model = rule.model
        if (use_ddp and rule.update_kind == "autograd" and not getattr(rule, "layer_local", False)
                and any(p.requires_grad for p in model.parameters())):
            device_ids = [ctx.device.index] if ctx.device.type == "cuda" else None
            self.ddp = nn.parallel.DistributedDataParallel(model, device_ids=device_ids, forward_sync_buffers=False)
            model.forward = _RoutedForward(model, self.ddp, self)
            self.ddp_params = {id(p) for p in model.parameters() if p.requires_grad}
        if rule.update_kind == "manual":
            rule.grad_sync = self.grad_sync
        for opt in optimizers:
            opt.register_step_pre_hook(self._before_step)
        reductions = {**DEFAULT_BUFFER_REDUCTIONS, **getattr(rule, "buffer_reductions", {})}
        persistent = dict(rule.state_dict(keep_vars=True))
        self.reduced_buffers = [(t, op) for name, t in rule.named_buffers()
                                for suffix, op in reductions.items()
                                if name.endswith(suffix) and name in persistent and t.is_floating_point()]
        for _, op in self.reduced_buffers:
            if op not in ("mean", "sum"):
                raise ConfigError(f"buffer_reductions: unknown reduction '{op}' (mean or sum)")
        self.inner_train_step = rule.train_step
        rule.train_step = self.train_step

    def grad_sync(self, grads: Sequence[torch.Tensor]) -> None:
        """``LearningRule.grad_sync`` for manual rules: one coalesced mean over ranks."""
        grads = list(grads)
        self.ctx.all_reduce_mean(grads)
        ids = {id(g) for g in grads}
        self.synced.update(id(p) for p in self.rule.parameters() if p.grad is not None and id(p.grad) in ids)

    def _before_step(self, opt, args, kwargs) -> None:
        """Average the gradients ``opt`` is about to apply that nothing has averaged yet."""
        skip = self.synced | (self.ddp_params if self.ddp_forward_this_step else set())
        params = [p for g in opt.param_groups for p in g["params"] if p.grad is not None and id(p) not in skip]
        self.ctx.all_reduce_mean([p.grad for p in params])
        self.synced.update(id(p) for p in params)

    @torch.no_grad()
    def reduce_buffers(self) -> None:
        for op in ("mean", "sum"):
            tensors = [t for t, o in self.reduced_buffers if o == op]
            if not tensors:
                continue
            if op == "mean":
                self.ctx.all_reduce_mean(tensors)
            else:
                flat = torch.cat([t.reshape(-1) for t in tensors])
                dist.all_reduce(flat)
                offset = 0
                for t in tensors:
                    t.copy_(flat[offset:offset + t.numel()].view_as(t))
                    offset += t.numel()

    def train_step(self, x: torch.Tensor, y: torch.Tensor):
        self.synced.clear()
        self.ddp_forward_this_step = False
        result = self.inner_train_step(x, y)
        self.reduce_buffers()
        self.ctx.steps += 1
        if self.ctx.check_replicas and self.ctx.steps % self.ctx.check_replicas == 0:
            self.ctx.assert_replicas_in_sync(self.rule, self.ctx.steps)
        return result


def setup(device: str = "cpu", num_threads: int | None = None, check_replicas: int = 0) -> DistributedContext:
    """Join the process group torchrun describes (if any) and set device and threads."""
    rank, world, local_rank, local_world = env_world()
    dev = torch.device(device)
    if world > 1 and dev.type == "cuda" and dev.index is None:
        dev = torch.device("cuda", local_rank)
    if dev.type == "cuda" and dev.index is not None:
        torch.cuda.set_device(dev)
    if num_threads:
        torch.set_num_threads(num_threads)
    elif world > 1:  # torchrun sets OMP_NUM_THREADS=1: share this node's cores among its ranks
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // local_world))
    ctx = DistributedContext(rank, world, local_rank, dev, check_replicas)
    if world > 1 and not dist.is_initialized():
        backend = "nccl" if dev.type == "cuda" else "gloo"
        kwargs = {"device_id": dev} if dev.type == "cuda" else {}
        dist.init_process_group(backend, **kwargs)
    return ctx


def teardown() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
