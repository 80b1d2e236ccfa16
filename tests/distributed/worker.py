"""One rank of the 2-process checks in test_distributed.py (launched by the test, gloo on 127.0.0.1).

Every scenario writes its result to ``<out>/<name>.rank<r>.pt`` *before* the process exits (gloo
may abort at teardown), and the test reads those files:

* ``dp_<rule>``: a few data-parallel steps on a float64 tiny MLP; rank 0 also writes the
  single-process emulation (each shard's update computed separately, averaged, then stepped);
* ``replicas``: the replica check passes on synchronised FA replicas, then catches a feedback
  matrix perturbed on rank 1;
* ``lp_depth<D>``: layer-parallel SLL through the trainer (checkpoint written by rank 0);
* ``resume`` / ``lp_resume``: a data-parallel / layer-parallel run resumed under two ranks
  equals an uninterrupted one.
"""

from __future__ import annotations

import sys
import threading
import time
import traceback
from pathlib import Path

import torch

torch.set_num_threads(1)

from bioplausible.algorithms import ALGORITHMS, create_algorithm  # noqa: E402
from bioplausible.config import TrainConfig  # noqa: E402
from bioplausible.data.datasets import DataSplits  # noqa: E402
from bioplausible.models import create_model  # noqa: E402
from bioplausible.training import Trainer  # noqa: E402
from bioplausible.training.distributed import DEFAULT_BUFFER_REDUCTIONS, ReplicaMismatchError, setup  # noqa: E402
from bioplausible.training.optim import OptimizerFactory  # noqa: E402

# The rules the issue names (the test requires them); every other registered rule that can
# train one of the tiny models below is checked too.
REQUIRED = ("bp", "fa", "kp", "dll", "sal", "ep", "sll", "dgl")
MODELS = (("mlp", {"hidden": [12, 10], "activation": "relu"}),
          ("dendritic_mlp", {"hidden": [12], "steps": 8}))  # DEP and DBPTT need dendritic neurons
STEPS, SHARD = 3, 6


def tiny_rule(name: str):
    """The rule on the first tiny model it supports (float64), with SGD and momentum."""
    for model_name, args in MODELS:
        torch.manual_seed(0)
        model = create_model(model_name, input_shape=(1, 4, 4), num_classes=5, **args).double()
        if ALGORITHMS.get(name).supports(model) is None:
            rule = create_algorithm(name, model)
            rule.configure_optimizers(OptimizerFactory(TrainConfig(algo=name, optimizer="sgd", lr=0.05, momentum=0.9)))
            return rule
    return None


def batches(world: int):
    g = torch.Generator().manual_seed(7)
    for _ in range(STEPS):
        x = torch.randn(world * SHARD, 1, 4, 4, generator=g, dtype=torch.float64)
        y = torch.randint(0, 5, (world * SHARD,), generator=g)
        yield x, y


def state_of(rule) -> dict:
    return {k: v.detach().clone() for k, v in rule.state_dict().items()}


class Lockstep:
    """Single-process emulation of ``world`` data-parallel replicas: each replica trains on its
    own shard in its own thread, but only one runs at a time, with its own copy of the global RNG
    (as each rank has). At every optimizer step all replicas wait, the gradients that optimizer
    will apply are averaged across replicas, and the replicas go on in turn."""

    def __init__(self, replicas: list):
        self.replicas = replicas
        self.turn, self.arrived = 0, 0
        self.rngs = [torch.get_rng_state() for _ in replicas]
        self.cond = threading.Condition()
        for r, rule in enumerate(replicas):
            for k, opt in enumerate(rule.optimizers):
                opt.register_step_pre_hook(lambda *_, r=r, k=k: self.arrive(r, k))

    def wait_turn(self, r: int) -> None:
        with self.cond:
            self.cond.wait_for(lambda: self.turn == r)
        torch.set_rng_state(self.rngs[r])

    def arrive(self, r: int, k: int | None) -> None:
        """Replica ``r`` reached optimizer ``k``'s step (``None``: the end of its train_step)."""
        self.rngs[r] = torch.get_rng_state()
        with self.cond:
            self.arrived += 1
            if self.arrived == len(self.replicas):
                if k is not None:
                    groups = [[p for g in rule.optimizers[k].param_groups for p in g["params"]] for rule in self.replicas]
                    for params in zip(*groups):
                        if params[0].grad is not None:
                            mean = sum(p.grad for p in params) / len(params)
                            for p in params:
                                p.grad = mean.clone()
                else:  # end of a step: the declared buffer reductions (BatchNorm statistics: mean)
                    self.reduce_buffers()
                self.arrived, self.turn = 0, 0
            else:
                self.turn = r + 1
            self.cond.notify_all()
        if k is not None:
            self.wait_turn(r)

    @torch.no_grad()
    def reduce_buffers(self) -> None:
        named = [dict(rule.named_buffers()) for rule in self.replicas]
        for name in named[0]:
            if any(name.endswith(suffix) for suffix in DEFAULT_BUFFER_REDUCTIONS):
                mean = sum(b[name] for b in named) / len(named)
                for b in named:
                    b[name].copy_(mean)

    def step(self, shards) -> None:
        def run(r):
            self.wait_turn(r)
            self.replicas[r].train_step(*shards[r])
            self.arrive(r, None)

        threads = [threading.Thread(target=run, args=(r,)) for r in range(len(shards))]
        for t in threads:
            t.start()
        for t in threads:
            t.join()


def emulate(name: str, world: int) -> dict:
    replicas = [tiny_rule(name) for _ in range(world)]
    lockstep = Lockstep(replicas)
    for x, y in batches(world):
        lockstep.step([(x[r * SHARD:(r + 1) * SHARD], y[r * SHARD:(r + 1) * SHARD]) for r in range(world)])
    return state_of(replicas[0])


def data_parallel(ctx, name: str) -> dict:
    rule = tiny_rule(name)
    if rule is None:
        return {"skipped": "supports none of the tiny models"}
    initial = state_of(rule)
    sync = ctx.wrap(rule, rule.optimizers)
    r, w = ctx.rank, ctx.world_size
    for x, y in batches(w):
        rule.train_step(x[r * SHARD:(r + 1) * SHARD], y[r * SHARD:(r + 1) * SHARD])
    ctx.assert_replicas_in_sync(rule)
    return {"initial": initial, "state": state_of(rule), "emulation": emulate(name, w) if ctx.is_main else None,
            "path": ("ddp" if sync.ddp_forward_this_step else "manual all-reduce" if rule.update_kind == "manual"
                     else "per-optimizer all-reduce")}


def replicas(ctx) -> dict:
    rule = tiny_rule("fa")
    ctx.wrap(rule, rule.optimizers)
    r = ctx.rank
    for x, y in batches(ctx.world_size):
        rule.train_step(x[r * SHARD:(r + 1) * SHARD], y[r * SHARD:(r + 1) * SHARD])
    ctx.assert_replicas_in_sync(rule, step=STEPS)  # in sync: must not raise
    if ctx.rank == 1:
        with torch.no_grad():
            rule.layers[-1].feedback.add_(1e-3)  # a desynchronised fixed feedback matrix
    try:
        ctx.assert_replicas_in_sync(rule, step=STEPS)
        return {"error": None}
    except ReplicaMismatchError as exc:
        return {"error": str(exc)}


def tiny_data() -> DataSplits:
    g = torch.Generator().manual_seed(3)
    centers = torch.randn(5, 1, 4, 4, generator=g)

    def split(n):
        y = torch.randint(0, 5, (n,), generator=g)
        return centers[y] + 0.7 * torch.randn(n, 1, 4, 4, generator=g), y

    return DataSplits("tiny", split(600), split(200), None, (1, 4, 4), 5)


def lp_config(out: Path, depth: int, layer_parallel: bool) -> TrainConfig:
    """SLL on a 4-block MLP, 200 micro-batches. keep_prob = 1: SLL's masks come from the global
    RNG, which each stage draws from its own stream, so with masks the runs differ (in value,
    not in distribution) from a single process."""
    return TrainConfig(algo="sll", model="mlp", dataset="digits", epochs=1, batch_size=3, lr=1e-2,
                       model_args={"hidden": [16, 16, 16], "activation": "relu"},
                       algo_args={"keep_prob": 1.0}, num_threads=1, progress=False,
                       layer_parallel=layer_parallel, pipeline_depth=depth, out=str(out))


def layer_parallel(ctx, out: Path, depth: int) -> dict:
    result = Trainer(lp_config(out / f"lp{depth}", depth, True), data=tiny_data()).fit()
    return {"history": result.history, "summary": result.summary}


def dp_resume(ctx, out: Path) -> dict:
    base = dict(algo="kp", model="mlp", dataset="digits", batch_size=8, lr=1e-2, num_threads=1, progress=False,
                check_replicas=10, model_args={"hidden": [16]})
    full = Trainer(TrainConfig(**base, epochs=2, out=str(out / "full")), data=tiny_data()).fit()
    Trainer(TrainConfig(**base, epochs=1, out=str(out / "part")), data=tiny_data()).fit()
    ctx.barrier()
    if ctx.is_main:  # extend the interrupted run to two epochs, as a user would
        path = out / "part" / "config.yaml"
        path.write_text(path.read_text().replace("epochs: 1", "epochs: 2"))
    ctx.barrier()
    resumed = Trainer.from_run_dir(out / "part", data=tiny_data()).fit()
    return {"full": full.history, "resumed": resumed.history}


def lp_resume(ctx, out: Path) -> dict:
    """Layer-parallel SLL interrupted after one epoch and resumed, vs an uninterrupted run."""
    def config(name, epochs):
        return lp_config(out / name, 2, True).replace(epochs=epochs, batch_size=32)

    full = Trainer(config("lp_full", 2), data=tiny_data()).fit()
    Trainer(config("lp_part", 1), data=tiny_data()).fit()
    ctx.barrier()
    if ctx.is_main:
        path = out / "lp_part" / "config.yaml"
        path.write_text(path.read_text().replace("epochs: 1", "epochs: 2"))
    ctx.barrier()
    resumed = Trainer.from_run_dir(out / "lp_part", data=tiny_data()).fit()
    return {"full": full.history, "resumed": resumed.history}


def main() -> None:
    out = Path(sys.argv[1])
    ctx = setup("cpu", num_threads=1)
    scenarios = {f"dp_{name}": (lambda n=name: data_parallel(ctx, n)) for name in ALGORITHMS.names()}
    scenarios["replicas"] = lambda: replicas(ctx)
    scenarios["lp_depth1"] = lambda: layer_parallel(ctx, out, 1)
    scenarios["lp_depth2"] = lambda: layer_parallel(ctx, out, 2)
    scenarios["resume"] = lambda: dp_resume(ctx, out)
    scenarios["lp_resume"] = lambda: lp_resume(ctx, out)
    for name, run in scenarios.items():
        start = time.perf_counter()
        try:
            result = {"ok": True, **run()}
        except Exception:  # recorded for the test; the other rank may then time out
            result = {"ok": False, "error": traceback.format_exc()}
        result["seconds"] = time.perf_counter() - start
        torch.save(result, out / f"{name}.rank{ctx.rank}.pt")
        ctx.barrier()
    (out / f"done.rank{ctx.rank}").write_text("ok")


if __name__ == "__main__":
    main()
