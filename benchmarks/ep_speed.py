"""Seconds per MNIST training epoch of EP and DEP (issue #5) against BP on the same MLP, one run.

    python benchmarks/ep_speed.py --data-dir ../shared/datasets                 # the issue's setting
    python benchmarks/ep_speed.py --data-dir ../shared/datasets --limit-batches 100 --repeats 1

Rules come from the MNIST presets (configs/ep_mnist.yaml: 784-256-10, T1 60, T2 12, batch 64,
SGD momentum 0.9; configs/dep_mnist.yaml, configs/dbptt_mnist.yaml); BP trains the ``mlp``
784-256-10 with the same batch and optimizer. Rules run interleaved ``--repeats`` times; the
median is reported (extrapolated to the full 938 batches when ``--limit-batches`` is given), with
the 1-minute load average before and after each epoch, since the machine is shared.
Writes ``benchmarks/results/ep-speed-<date>.{json,md}``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
from datetime import datetime
from pathlib import Path

import torch

from bioplausible import __version__
from bioplausible.config import load_config
from bioplausible.data import load_dataset
from bioplausible.training import Trainer
from bioplausible.training.trainer import describe_device

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
TARGETS = {"ep": 6.0, "dep": 30.0}  # issue #5, s / epoch on this machine unloaded
AUTOGRAD_REFERENCE = {"ep": 53.0, "dep": 290.0}  # the issue: the authors' autograd-on-Φ code here


def configs(threads: int, limit: int | None) -> dict:
    common = dict(epochs=1, num_threads=threads, progress=False, limit_train_batches=limit,
                  out="/tmp/bioplausible-benchmark", dataset="mnist_raw")
    runs = {name: load_config(ROOT / "configs" / f"{name}_mnist.yaml", **common) for name in ("ep", "dep", "dbptt")}
    runs["bp"] = runs["ep"].replace(algo="bp", model_args={"hidden": [256]}, algo_args={})
    return runs


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--algos", default="bp,ep,dep")
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--limit-batches", type=int, default=None)
    args = parser.parse_args(argv)

    torch.set_num_threads(args.threads)
    algos = [a for a in args.algos.split(",") if a]
    data = load_dataset("mnist_raw", args.data_dir)
    runs = configs(args.threads, args.limit_batches)
    full_batches = -(-len(data.train[1]) // 64)
    times: dict[str, list[float]] = {a: [] for a in algos}
    loads: list[float] = []
    for repeat in range(args.repeats):
        for algo in algos:
            trainer = Trainer(runs[algo], data=data)
            loads.append(os.getloadavg()[0])
            metrics = trainer.run_epoch(0)
            loads.append(os.getloadavg()[0])
            seconds = metrics["epoch_seconds"] * full_batches / trainer.steps_per_epoch
            times[algo].append(seconds)
            print(f"repeat {repeat + 1}/{args.repeats} {algo:<5} {seconds:.2f} s/epoch  "
                  f"({trainer.steps_per_epoch} batches)  load {loads[-2]:.2f}->{loads[-1]:.2f}", file=sys.stderr)

    median = {a: statistics.median(t) for a, t in times.items()}
    now = datetime.now()
    command = "python benchmarks/ep_speed.py " + " ".join(argv if argv is not None else sys.argv[1:])
    record = {
        "date": now.isoformat(timespec="seconds"), "machine": describe_device("cpu"), "torch": torch.__version__,
        "bioplausible": __version__, "threads": args.threads, "command": command,
        "batches_timed": args.limit_batches or full_batches, "full_batches": full_batches,
        "load_average_1min": {"min": min(loads), "max": max(loads)},
        "seconds_per_epoch": times, "median": median,
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    stem = RESULTS / f"ep-speed-{now:%Y%m%d-%H%M%S}-{args.threads}t"
    stem.with_suffix(".json").write_text(json.dumps(record, indent=2))
    lines = [
        "# EP / DEP seconds per MNIST epoch (784-256-10, batch 64, T1 60, T2 12) vs BP on the same MLP", "",
        f"{record['date']} · {record['machine']} · torch {record['torch']} · median of {args.repeats} interleaved epochs"
        f" · {record['batches_timed']} of {full_batches} batches timed, scaled to a full epoch"
        f" · 1-min load average {min(loads):.2f}-{max(loads):.2f} (2 cores, shared)",
        f"· command: `{command}`", "",
        "| rule | s / epoch (median) | time / BP | target (unloaded) | authors' autograd code (issue) | speed-up |",
        "|---|---|---|---|---|---|",
    ]
    for algo in algos:
        target = f"≤ {TARGETS[algo]:.0f} s {'✓' if median[algo] <= TARGETS[algo] else '✗'}" if algo in TARGETS else "—"
        ref = AUTOGRAD_REFERENCE.get(algo)
        lines.append(f"| {algo} | {median[algo]:.2f} | {median[algo] / median['bp']:.1f}x | {target} | "
                     f"{f'{ref:.0f} s' if ref else '—'} | {f'{ref / median[algo]:.1f}x' if ref else '—'} |"
                     if "bp" in median else f"| {algo} | {median[algo]:.2f} | — | {target} | — | — |")
    stem.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
