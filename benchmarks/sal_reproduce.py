"""Reproduce the SAL paper's Table 1 and its speed claim on the 3×200 ReLU MLP, batch 256.

    python benchmarks/sal_reproduce.py table1 --data-dir ../shared/datasets --epochs 3 --seeds 0
    python benchmarks/sal_reproduce.py speed --data-dir ../shared/datasets --limit-batches 60

``table1``: bp (SGD), fa, wm, kp and sal with the same optimizer, learning rate and epochs on
MNIST and Fashion-MNIST; final-epoch test accuracy next to the paper's numbers. The SAL run of
the first seed also records :meth:`SelfAssemblingLearning.diagnostics` per epoch and plots
them. ``speed``: SAL epoch time ÷ BP's at downstream ratios 1, 2, 5, 8, interleaved in one run
(median over repeats). Both write ``benchmarks/results/sal-<what>-<date>.{json,md}`` with the
machine, date, torch version and the command.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from datetime import datetime
from pathlib import Path

import torch

from bioplausible import TrainConfig, __version__
from bioplausible.algorithms.sal import plot_diagnostics
from bioplausible.data import load_dataset
from bioplausible.errors import DivergenceError
from bioplausible.training import Trainer
from bioplausible.training.trainer import describe_device

RESULTS = Path(__file__).resolve().parent / "results"
PAPER = {  # Table 1, mean of 5 runs
    "mnist": {"bp": 98.44, "fa": 97.80, "wm": 98.40, "kp": 98.45, "sal": 98.85},
    "fashion_mnist": {"bp": 96.80, "fa": 95.75, "wm": 96.00, "kp": 96.13, "sal": 97.23},
}


def base_config(args, dataset: str) -> TrainConfig:
    return TrainConfig(model="mlp", model_args={"hidden": [200, 200, 200]}, dataset=dataset, data_dir=args.data_dir,
                       batch_size=256, epochs=args.epochs, optimizer="sgd", lr=args.lr, momentum=args.momentum,
                       num_threads=args.threads, progress=False, limit_train_batches=args.limit_batches,
                       out="/tmp/bioplausible-sal-benchmark")


def table1(args) -> dict:
    rows, diagnostics_plots = [], []
    for dataset in args.datasets.split(","):
        for seed in map(int, args.seeds.split(",")):
            data = load_dataset(dataset, args.data_dir, 0.0, seed)
            for algo in args.algos.split(","):
                history: list[dict] = []
                callbacks = []
                if algo == "sal" and seed == int(args.seeds.split(",")[0]):
                    callbacks = [lambda trainer, metrics: history.append(trainer.rule.diagnostics())]
                config = base_config(args, dataset).replace(algo=algo, seed=seed)
                trainer = Trainer(config, data=data, callbacks=callbacks)
                if callbacks:
                    history.append(trainer.rule.diagnostics())  # epoch 0: the random wiring
                try:
                    summary = trainer.fit().summary
                    row = {"test_acc": 100 * summary["final"]["test_acc"], "epoch_seconds": summary["mean_epoch_seconds"]}
                except DivergenceError as error:
                    row = {"test_acc": None, "diverged": str(error)}
                rows.append({"dataset": dataset, "algo": algo, "seed": seed, **row})
                print(rows[-1], file=sys.stderr)
                if len(history) > 1:
                    png = RESULTS / f"sal-diagnostics-{dataset}-{datetime.now():%Y%m%d}.png"
                    plot_diagnostics(history, png, title=f"SAL on {dataset}, 3×200 MLP, seed {seed}")
                    diagnostics_plots.append({"dataset": dataset, "png": png.name, "per_epoch": history})
    lines = [f"| dataset | rule | test acc (%) measured, seeds {args.seeds} | paper (5 runs) | s / epoch |", "|---|---|---|---|---|"]
    for dataset in args.datasets.split(","):
        for algo in args.algos.split(","):
            mine = [r for r in rows if r["dataset"] == dataset and r["algo"] == algo]
            accs = [r["test_acc"] for r in mine if r["test_acc"] is not None]
            acc = "diverged" if not accs else f"{statistics.mean(accs):.2f}" + (f" ± {statistics.stdev(accs):.2f}" if len(accs) > 1 else "")
            secs = [r["epoch_seconds"] for r in mine if "epoch_seconds" in r]
            lines.append(f"| {dataset} | {algo} | {acc} | {PAPER[dataset][algo]:.2f} | "
                         f"{statistics.mean(secs) if secs else float('nan'):.2f} |")
    return {"rows": rows, "diagnostics": diagnostics_plots, "table": lines}


def speed(args) -> dict:
    data = load_dataset("mnist", args.data_dir)
    # A small learning rate: timing does not depend on it, and no variant may diverge mid-epoch.
    base = base_config(args, "mnist").replace(epochs=1, lr=1e-4)
    variants = [("bp", {})] + [("sal", {"downstream_ratio": r}) for r in (1, 2, 5, 8)]
    times: dict[str, list[float]] = {}
    for repeat in range(args.repeats):
        for algo, algo_args in variants:
            key = algo if not algo_args else f"sal r={algo_args['downstream_ratio']}"
            trainer = Trainer(base.replace(algo=algo, algo_args=algo_args), data=data)
            times.setdefault(key, []).append(trainer.run_epoch(0)["epoch_seconds"])
            print(f"repeat {repeat + 1} {key}: {times[key][-1]:.2f} s", file=sys.stderr)
    bp = statistics.median(times["bp"])
    lines = ["| rule | s / epoch (median) | time / BP |", "|---|---|---|"]
    lines += [f"| {k} | {statistics.median(v):.3f} | {statistics.median(v) / bp:.2f}x |" for k, v in times.items()]
    return {"times": times, "table": lines}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("what", choices=["table1", "speed"])
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--datasets", default="mnist,fashion_mnist")
    parser.add_argument("--algos", default="bp,fa,wm,kp,sal")
    parser.add_argument("--seeds", default="0")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--lr", type=float, default=0.002)
    parser.add_argument("--momentum", type=float, default=0.9)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--limit-batches", type=int, default=None, help="cap batches per epoch")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)

    result = table1(args) if args.what == "table1" else speed(args)
    now = datetime.now()
    command = " ".join(["python", "benchmarks/sal_reproduce.py", *(argv or sys.argv[1:])])
    meta = {"date": now.isoformat(timespec="seconds"), "machine": describe_device("cpu"), "torch": torch.__version__,
            "bioplausible": __version__, "command": command}
    RESULTS.mkdir(exist_ok=True)
    stem = RESULTS / f"sal-{args.what}-{now:%Y%m%d}"
    stem.with_suffix(".json").write_text(json.dumps({**meta, **result}, indent=2))
    header = [f"# SAL {args.what}: 3×200 ReLU MLP, batch 256, SGD lr {args.lr} momentum {args.momentum}, "
              f"{args.epochs} epoch(s)", "", f"{meta['date']} · {meta['machine']} · torch {meta['torch']}",
              f"· command: `{command}`", ""]
    stem.with_suffix(".md").write_text("\n".join(header + result["table"]) + "\n")
    print("\n".join(header + result["table"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
