"""One rank of the 2-process checks in test_distributed.py (launched by the test, gloo on 127.0.0.1).

Every scenario writes its result to ``<out>/<name>.rank<r>.pt`` *before* the process exits (gloo
may abort at teardown), and the test reads those files:

* ``dp_<rule>``: a few data-parallel steps on a float64 tiny MLP; rank 0 also writes the
  single-process emulation (each shard's update computed separately, averaged, then stepped);
* ``replicas``: the replica check passes on synchronised FA replicas, then catches a feedback
  matrix perturbed on rank 1;
* ``lp_depth<D>`` / ``lp_dgl_depth<D>``: layer-parallel SLL (masks on R and dropout) / DGL on a
  small conv net through the trainer (checkpoint written by rank 0); ``lp_<rule>``: the other
  layer-local rules that draw random numbers (dropout; FF's negative labels), depth 2;
* ``resume`` / ``lp_resume``: a data-parallel / layer-parallel run resumed under two ranks
  equals an uninterrupted one;
* ``diverge_dp`` / ``diverge_lp``: one rank's training data are NaN; every rank records the
  DivergenceError it stopped with;
* ``eval_shard``: a data-parallel run whose test set spans three evaluation batches; each rank
  records the batches it scored.
"""

from __future__ import annotations

import dataclasses
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
from bioplausible.errors import DivergenceError  # noqa: E402
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


def tiny_data(shape: tuple[int, ...] = (1, 4, 4), n_test: int = 200) -> DataSplits:
    g = torch.Generator().manual_seed(3)
    centers = torch.randn(5, *shape, generator=g)

    def split(n):
        y = torch.randint(0, 5, (n,), generator=g)
        return centers[y] + 0.7 * torch.randn(n, *shape, generator=g), y

    return DataSplits("tiny", split(600), split(n_test), None, shape, 5)


DGL_SHAPE = (1, 8, 8)  # the smallest image the generic cnn pools twice


def lp_config(out: Path, depth: int, layer_parallel: bool) -> TrainConfig:
    """SLL on a 4-block MLP with dropout, masks on R kept with probability 0.5, 200 micro-batches:
    every unit draws random numbers, from its own stream."""
    return TrainConfig(algo="sll", model="mlp", dataset="digits", epochs=1, batch_size=3, lr=1e-2,
                       model_args={"hidden": [16, 16, 16], "activation": "relu", "dropout": 0.1},
                       algo_args={"keep_prob": 0.5}, num_threads=1, progress=False,
                       layer_parallel=layer_parallel, pipeline_depth=depth, out=str(out))


DRAWING_RULES = ("local_pred", "ff")  # besides SLL: dropout in every unit, and FF's negative labels


def drawing_config(algo: str, out: Path, layer_parallel: bool) -> TrainConfig:
    """``algo`` on lp_config's MLP with dropout, depth 2; layer-parallel with TensorBoard logs
    (per-stage metrics are lists)."""
    return lp_config(out, 2, layer_parallel).replace(algo=algo, algo_args={}, tensorboard=layer_parallel)


def dgl_config(out: Path, depth: int, layer_parallel: bool) -> TrainConfig:
    """DGL on a conv net of 3 modules (conv, conv, the two linear blocks), its auxiliary heads
    with BatchNorm, 200 micro-batches on 8x8 images."""
    return TrainConfig(algo="dgl", model="cnn", dataset="digits", epochs=1, batch_size=3, lr=1e-2,
                       model_args={"channels": [4, 4], "hidden": 8}, algo_args={"head_width": 8},
                       num_threads=1, progress=False, layer_parallel=layer_parallel, pipeline_depth=depth,
                       out=str(out))


def layer_parallel(config: TrainConfig, data: DataSplits) -> dict:
    result = Trainer(config, data=data).fit()
    return {"history": result.history, "summary": result.summary}


def diverge(ctx, out: Path, layer_parallel: bool) -> dict:
    """Training data that are NaN on one rank only (a pipeline's first stage, which alone reads
    them; rank 1 for data parallelism): the error every rank stopped with, or None."""
    data = tiny_data()
    if ctx.rank == (0 if layer_parallel else 1):
        x, y = data.train
        data = dataclasses.replace(data, train=(torch.full_like(x, float("nan")), y))
    if layer_parallel:
        config = lp_config(out / "diverge_lp", 2, True)
    else:
        config = TrainConfig(algo="bp", model="mlp", dataset="digits", epochs=1, batch_size=8, num_threads=1,
                             progress=False, model_args={"hidden": [16]}, out=str(out / "diverge_dp"))
    try:
        Trainer(config, data=data).fit()
        return {"error": None}
    except DivergenceError as exc:
        return {"error": str(exc)}


EVAL_TEST = 2500  # three evaluation batches of at most 1000: two for rank 0, one for rank 1


def eval_shard(ctx, out: Path) -> dict:
    trainer = Trainer(TrainConfig(algo="fa", model="mlp", dataset="digits", epochs=1, batch_size=16, num_threads=1,
                                  progress=False, model_args={"hidden": [16]}, out=str(out / "eval_shard")),
                      data=tiny_data(n_test=EVAL_TEST))
    scored, predict = [], trainer.rule.predict
    trainer.rule.predict = lambda x: (scored.append(len(x)), predict(x))[1]
    return {"history": trainer.fit().history, "scored": scored}


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
    scenarios["gather"] = lambda: {"values": ctx.gather_float(ctx.rank + 0.5), "ranks": ctx.ranks_where(ctx.rank == 1)}
    for d in (1, 2):
        scenarios[f"lp_depth{d}"] = lambda d=d: layer_parallel(lp_config(out / f"lp{d}", d, True), tiny_data())
        scenarios[f"lp_dgl_depth{d}"] = lambda d=d: layer_parallel(dgl_config(out / f"lp_dgl{d}", d, True),
                                                                   tiny_data(DGL_SHAPE))
    for algo in DRAWING_RULES:
        scenarios[f"lp_{algo}"] = lambda a=algo: layer_parallel(drawing_config(a, out / f"lp_{a}", True), tiny_data())
    scenarios["diverge_dp"] = lambda: diverge(ctx, out, False)
    scenarios["diverge_lp"] = lambda: diverge(ctx, out, True)
    scenarios["eval_shard"] = lambda: eval_shard(ctx, out)
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
