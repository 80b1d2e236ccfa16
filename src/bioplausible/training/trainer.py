"""The epoch loop shared by every learning rule.

A run directory holds ``config.yaml`` (resolved configuration), ``metrics.jsonl`` (one JSON
object per epoch), ``summary.json`` (final and best-validation metrics with versions and
device), ``checkpoint.pt`` (rewritten atomically after every epoch) and, when asked,
TensorBoard events under ``tensorboard/``. ``resume(run_dir)`` continues from the checkpoint
and, in deterministic mode, ends with exactly the metrics of an uninterrupted run: data order
and augmentation are functions of (seed, epoch), and the global RNG (used by rules: mirror
noise, dropout) and the layer-local rules' per-unit streams are restored from the checkpoint.

Under ``torchrun`` the epoch's divergence checks agree across ranks (one rank's NaN stops every
rank with the same error instead of leaving the others waiting in a collective), and the test
and validation sets are scored in shards, one part per rank, with the figures of one process.
"""

from __future__ import annotations

import json
import os
import platform
import random
import resource
import sys
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import yaml
from tqdm.auto import tqdm

from .. import __version__
from ..algorithms import LearningRule, create_algorithm
from ..config import TrainConfig, load_yaml
from ..data import BatchAugment, BatchLoader, DataSplits, load_dataset
from ..errors import ConfigError, DivergenceError
from ..models import create_model
from .checkpoint import load_checkpoint, save_atomic
from .metrics import MetricTracker, best_val, headline
from .optim import OptimizerFactory, make_schedulers
from . import distributed

EpochCallback = Callable[["Trainer", dict], None]


@dataclass
class RunResult:
    out_dir: Path
    summary: dict
    history: list[dict] = field(default_factory=list)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def resolve_device(name: str) -> torch.device:
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"'device' is '{name}' but CUDA is not available on this machine")
    return device


def describe_device(device: str | torch.device) -> str:
    """The GPU's name, or the CPU model and the intra-op thread count: what results are labelled with."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{cpu}, {torch.get_num_threads()} threads"


def device_tag(device: str | torch.device) -> str:
    """``""`` for the CPU, else ``"-cuda"`` / ``"-cuda1"``: keeps result files of GPU runs apart
    from the CPU ones of the same benchmark and day."""
    device = str(device)
    return "" if device == "cpu" else "-" + device.replace(":", "")


def default_run_dir(config: TrainConfig) -> Path:
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    base = Path("runs") / f"{config.algo}-{config.model}-{config.dataset}-s{config.seed}-{stamp}"
    path, n = base, 1
    while path.exists():
        path, n = Path(f"{base}-{n}"), n + 1
    return path


class Trainer:
    """Builds data, model, rule and optimizers from a :class:`TrainConfig` and trains."""

    def __init__(self, config: TrainConfig, data: DataSplits | None = None,
                 callbacks: list[EpochCallback] | None = None):
        config.validate()
        self.config = config
        self.callbacks = list(callbacks or [])
        if config.num_threads:
            torch.set_num_threads(config.num_threads)
        if config.deterministic:
            os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
            torch.use_deterministic_algorithms(True)
            torch.backends.cudnn.benchmark = False
        self.device = resolve_device(config.device)
        # distributed: rank and world from torchrun's environment (a no-op in a single process)
        self.dist = distributed.setup(config.device, config.num_threads, config.check_replicas)
        self.device = self.dist.device
        seed_everything(config.seed)

        self.data = data or load_dataset(config.dataset, config.data_dir, config.val_split, config.seed)
        self.model = create_model(config.model, self.data.input_shape, self.data.num_classes, **config.model_args)
        self.rule: LearningRule = create_algorithm(config.algo, self.model, **config.algo_args)
        self.rule.to(self.device)
        augment = None
        if config.augment:
            augment = BatchAugment(crop_padding=config.crop_padding if "crop" in config.augment else 0,
                                   flip="flip" in config.augment)
        x, y = (t.to(self.device) for t in self.data.train)
        self.train_loader = BatchLoader(x, y, config.batch_size, shuffle=True, seed=config.seed, augment=augment,
                                        **self.dist.shard(config))  # distributed: this rank's shard
        self.steps_per_epoch = min(len(self.train_loader), config.limit_train_batches or len(self.train_loader))
        make_optimizer = OptimizerFactory(config)
        self.optimizers = self.rule.configure_optimizers(make_optimizer)
        make_optimizer.check_layer_lrs()
        self.schedulers = make_schedulers(config, self.optimizers, self.steps_per_epoch)
        # distributed: data parallelism, or a pipeline stage with --layer-parallel (else None)
        self.pipeline = self.dist.parallelize(self)

        self.out_dir = self.dist.broadcast_object(Path(config.out) if config.out else default_run_dir(config))
        self.config = config = config.replace(out=str(self.out_dir))
        self.history: list[dict] = []
        self.start_epoch = 0
        self.writer = None

    # ------------------------------------------------------------------ resume
    @classmethod
    def from_run_dir(cls, run_dir: str | Path, **kwargs) -> "Trainer":
        """Rebuild a run from its directory and restore its last checkpoint."""
        values = stored_config(run_dir)
        return cls(TrainConfig.from_dict({**values, "out": str(run_dir)}), **kwargs).restore()

    def restore(self) -> "Trainer":
        """Continue from the last checkpoint in the run directory."""
        self.load_state(load_checkpoint(self.out_dir / "checkpoint.pt", map_location=self.device))
        return self

    def state(self, epoch: int) -> dict:
        rng = {"torch": torch.get_rng_state(), "python": random.getstate()}
        if self.device.type == "cuda":
            rng["cuda"] = torch.cuda.get_rng_state(self.device)
        if streams := self.rule.random_streams():  # the layer-local rules' per-unit streams
            rng["units"] = streams
        return {
            "epoch": epoch,
            "rule": self.rule.state_dict(),
            "optimizers": [o.state_dict() for o in self.optimizers],
            "schedulers": [s.state_dict() for s in self.schedulers],
            "rng": rng,
            "history": self.history,
        }

    def load_state(self, state: dict) -> None:
        self.rule.load_state_dict(state["rule"])
        for opt, s in zip(self.optimizers, state["optimizers"], strict=True):
            opt.load_state_dict(s)
        for sched, s in zip(self.schedulers, state["schedulers"], strict=True):
            sched.load_state_dict(s)
        torch.set_rng_state(state["rng"]["torch"].cpu())
        random.setstate(state["rng"]["python"])
        if "cuda" in state["rng"] and self.device.type == "cuda":
            torch.cuda.set_rng_state(state["rng"]["cuda"].cpu(), self.device)
        if "units" in state["rng"]:
            self.rule.load_random_streams(state["rng"]["units"])
        self.history = list(state["history"])
        self.start_epoch = state["epoch"] + 1
        if self.pipeline is not None:  # distributed: every stage continues its own RNG stream
            self.pipeline.restore_rng(state)

    # ------------------------------------------------------------------ the loop
    def fit(self) -> RunResult:
        main = self.dist.is_main  # distributed: only rank 0 writes files
        if main:
            self.out_dir.mkdir(parents=True, exist_ok=True)
            (self.out_dir / "config.yaml").write_text(yaml.safe_dump(self.config.to_dict(), sort_keys=False))
            # Rewrite the metrics file from the restored history: epochs after the checkpoint are
            # dropped, so a resumed run's file equals an uninterrupted one.
            with open(self.out_dir / "metrics.jsonl", "w") as f:
                f.writelines(json.dumps(m) + "\n" for m in self.history)
        if self.config.tensorboard and main:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(log_dir=str(self.out_dir / "tensorboard"), purge_step=self.start_epoch)
        try:
            for epoch in range(self.start_epoch, self.config.epochs):
                metrics = self.run_epoch(epoch)
                self.history.append(metrics)
                state = self.state(epoch)
                if self.pipeline is not None:  # distributed: rank 0 gathers every stage's state
                    state = self.pipeline.gather_state(state)
                if not main:
                    continue
                self.log(metrics)
                save_atomic(state, self.out_dir / "checkpoint.pt")
                for callback in self.callbacks:
                    callback(self, metrics)
        finally:
            if self.writer is not None:
                self.writer.close()
        summary = self.summary()
        summary.update(self.dist.describe(self.pipeline))  # distributed: world size, mode, stages
        if main:
            (self.out_dir / "summary.json").write_text(json.dumps(summary, indent=2))
        return RunResult(self.out_dir, summary, list(self.history))

    def run_epoch(self, epoch: int) -> dict:
        if self.pipeline is not None:  # distributed: --layer-parallel streams through the stages
            return self.pipeline.run_epoch(self, epoch)
        cfg = self.config
        self.rule.train()
        self.train_loader.set_epoch(epoch)
        self.reset_peak_memory()
        loss_sum = torch.zeros((), device=self.device)
        tracker = MetricTracker(self.data.task, self.device)
        seen, data_seconds = 0, 0.0
        batches = iter(self.train_loader)
        bar = tqdm(total=self.steps_per_epoch, desc=f"epoch {epoch + 1}/{cfg.epochs}", leave=False,
                   disable=not (cfg.progress and sys.stderr.isatty()))
        start = time.perf_counter()
        for step in range(self.steps_per_epoch):
            fetch = time.perf_counter()
            x, y = next(batches)
            data_seconds += time.perf_counter() - fetch
            result = self.rule.train_step(x, y)
            for scheduler in self.schedulers:
                scheduler.step()
            if step % cfg.check_finite_every == 0:
                self.check_finite(epoch, step, result.loss)
            loss_sum += result.loss * len(y)
            tracker.update(result.output, y)
            seen += len(y)
            bar.update()
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        epoch_seconds = time.perf_counter() - start
        bar.close()
        seen = self.dist.sum_train_metrics(loss_sum, tracker, seen)  # distributed: over all shards
        bad = next((name for name, p in self.rule.state_dict().items()
                    if p.is_floating_point() and not torch.isfinite(p).all()), None)
        ranks = self.dist.ranks_where(bad is not None)  # distributed: every rank stops, or none
        if ranks:
            what = f"'{bad}' has non-finite values" if bad is not None else "the rule state has non-finite values"
            self.diverged(epoch, self.steps_per_epoch - 1, what + self.on_ranks(ranks))

        metrics = {
            "epoch": epoch + 1,
            "train_loss": loss_sum.item() / seen,
            **tracker.compute("train"),
            **self.evaluate(self.data.test, "test"),
        }
        if self.data.val is not None:
            metrics.update(self.evaluate(self.data.val, "val"))
        if not self.dist.enabled:  # one process: no collective runs inside the extra passes
            metrics.update(self.rule.epoch_diagnostics(x, y))
        metrics.update(
            lr=self.optimizers[0].param_groups[0]["lr"],
            epoch_seconds=epoch_seconds,
            samples_per_second=seen / epoch_seconds,
            data_fraction=data_seconds / epoch_seconds,
            peak_memory_mb=self.peak_memory_mb(),
        )
        return metrics

    def check_finite(self, epoch: int, step: int, loss: torch.Tensor) -> None:
        """Stop with :class:`DivergenceError` if the loss is not finite here (in one process) or on
        any rank (distributed: every rank takes the same decision)."""
        ranks = self.dist.ranks_where(not torch.isfinite(loss))
        if ranks:
            what = f"loss is {loss.item()}" if self.dist.rank in ranks else "loss is not finite"
            self.diverged(epoch, step, what + self.on_ranks(ranks))

    def on_ranks(self, ranks: list[int]) -> str:
        return f" on rank(s) {ranks}" if self.dist.enabled else ""

    @torch.no_grad()
    def evaluate(self, split: tuple[torch.Tensor, torch.Tensor], prefix: str, batch_size: int = 1000) -> dict:
        """Loss and metrics on ``split``, in batches of ``batch_size``. Distributed (a collective:
        every rank calls it): rank r scores batches r, r + world, ..., and every rank adds the
        batches' sums up in batch order, so every rank reports exactly what one process scoring
        every batch reports."""
        self.rule.eval()
        x_all, y_all = split
        starts = range(0, len(y_all), batch_size)
        rows = torch.zeros(len(starts), 4, dtype=torch.float64, device=self.device)  # loss·n, 2 sums, count
        for j in range(self.dist.rank, len(starts), self.dist.world_size):
            x = x_all[starts[j]:starts[j] + batch_size].to(self.device)
            y = y_all[starts[j]:starts[j] + batch_size].to(self.device)
            output = self.rule.predict(x)
            batch = MetricTracker(self.data.task, self.device)
            batch.update(output, y)
            rows[j, 0] = self.rule.loss(output, y).item() * len(y)
            rows[j, 1:3] = batch.sums
            rows[j, 3] = batch.count
        self.dist.sum_(rows)  # each row is nonzero on one rank only, so the sum is exact
        loss_sum, tracker = 0.0, MetricTracker(self.data.task, self.device)
        for row in rows:  # in batch order, as one process accumulates
            loss_sum += row[0].item()
            tracker.sums += row[1:3]
            tracker.count += int(row[3].item())
        self.rule.train()
        return {f"{prefix}_loss": loss_sum / len(y_all), **tracker.compute(prefix)}

    def reset_peak_memory(self) -> None:
        """Start the epoch's CUDA peak (the CPU's peak resident set is the process's, never reset)."""
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)

    def peak_memory_mb(self) -> float:
        """Peak allocated CUDA memory of this epoch, or the process's peak resident set on CPU."""
        if self.device.type == "cuda":
            return torch.cuda.max_memory_allocated(self.device) / 2**20
        kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return kib / 1024 if sys.platform != "darwin" else kib / 2**20

    def diverged(self, epoch: int, step: int, what: str) -> None:
        last = f"the last good checkpoint is {self.out_dir / 'checkpoint.pt'} (epoch {epoch})" if epoch > 0 \
            else "no checkpoint was written yet"
        raise DivergenceError(
            f"training diverged at epoch {epoch + 1}, step {step + 1}: {what}; {last}. "
            "Try a smaller learning rate."
        )

    def log(self, metrics: dict) -> None:
        with open(self.out_dir / "metrics.jsonl", "a") as f:
            f.write(json.dumps(metrics) + "\n")
        if self.writer is not None:
            for key, value in metrics.items():
                if isinstance(value, list):  # one value per pipeline stage
                    for stage, v in enumerate(value):
                        self.writer.add_scalar(f"{key}/{stage}", v, metrics["epoch"])
                elif key != "epoch":
                    self.writer.add_scalar(key, value, metrics["epoch"])
        if self.config.progress:
            val = f"  {headline(metrics, 'val')}" if self.data.val is not None else ""
            tqdm.write(
                f"[{self.config.algo}] epoch {metrics['epoch']:>3}/{self.config.epochs}  "
                f"loss {metrics['train_loss']:.4f}  {headline(metrics, 'train')}  "
                f"{headline(metrics, 'test')}{val}  {metrics['epoch_seconds']:.2f}s",
                file=sys.stderr,
            )

    def summary(self) -> dict:
        final = self.history[-1]
        summary = {
            "algo": self.config.algo,
            "flags": self.rule.flags.symbols(),
            "model": self.config.model,
            "dataset": self.config.dataset,
            "seed": self.config.seed,
            "epochs": self.config.epochs,
            "final": final,
            "mean_epoch_seconds": sum(m["epoch_seconds"] for m in self.history) / len(self.history),
            "parameters": sum(p.numel() for p in self.model.parameters() if p.requires_grad),
            "versions": {"bioplausible": __version__, "torch": torch.__version__, "python": platform.python_version()},
            "device": describe_device(self.device),
        }
        if self.data.val is not None:
            summary["best_val"] = best_val(self.history)
        return summary


def train(config: TrainConfig | dict | None = None, *, data: DataSplits | None = None,
          callbacks: list[EpochCallback] | None = None, **values) -> RunResult:
    """Train one rule on one model and dataset: ``train(algo="fa", model="mlp", epochs=5)``."""
    if isinstance(config, TrainConfig):
        config = config.replace(**values) if values else config
    else:
        config = TrainConfig.from_dict({**(config or {}), **values})
    return Trainer(config, data=data, callbacks=callbacks).fit()


def resume(run_dir: str | Path, callbacks: list[EpochCallback] | None = None) -> RunResult:
    """Continue an interrupted run from the last checkpoint in ``run_dir``."""
    return Trainer.from_run_dir(run_dir, callbacks=callbacks).fit()


# Where and how a run executes, not what it computes: a run may continue with these changed.
EXECUTION_KEYS = frozenset({"out", "device", "num_threads", "data_dir", "progress", "tensorboard"})


def stored_config(run_dir: str | Path) -> dict:
    """The configuration a run directory was trained with, as its ``config.yaml`` holds it."""
    config_path = Path(run_dir) / "config.yaml"
    if not config_path.is_file():
        raise ConfigError(f"cannot resume: '{config_path}' does not exist")
    return load_yaml(config_path.read_text())


def train_or_resume(config: TrainConfig, *, data: DataSplits | None = None) -> RunResult:
    """Train ``config`` into ``config.out``, or continue the run already there from its checkpoint;
    a finished run is read back without training. Long tables of runs survive an interruption
    this way. A run directory that holds another configuration is an error, never overwritten:
    only where and how the run executes (:data:`EXECUTION_KEYS`) may differ."""
    run_dir = Path(config.out) if config.out else None
    if run_dir is None or not (run_dir / "checkpoint.pt").is_file():
        return train(config, data=data)
    stored = stored_config(run_dir)
    ours = load_yaml(yaml.safe_dump(config.to_dict()))  # the stored file's YAML round trip
    changed = sorted(k for k in (stored.keys() | ours.keys()) - EXECUTION_KEYS if stored.get(k) != ours.get(k))
    if changed:
        raise ConfigError(f"'{run_dir}' holds a run with other {', '.join(repr(k) for k in changed)} "
                          f"({', '.join(f'{k}={stored.get(k)!r}' for k in changed)}); continue it with "
                          f"'bioplausible train --resume {run_dir}' or choose another directory")
    return Trainer(config, data=data).restore().fit()
