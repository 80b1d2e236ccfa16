"""Reproduce the DEP paper's Table 2 (EP vs DEP vs DBPTT, train and test accuracy) from the
presets in ``configs/``, with as many epochs and seeds as the time allows.

    python benchmarks/ep_table2.py --data-dir ../shared/datasets --presets ep_mnist,dep_mnist,dbptt_mnist \\
        --epochs 3 --seeds 0 --threads 1

Each preset runs unchanged except for ``epochs``, ``seed`` and ``num_threads``. Writes
``benchmarks/results/ep-table2-<date>.{json,md}`` with the exact command, the per-epoch test
accuracy of every run and the paper's numbers beside ours (the paper trains about 20 epochs).
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

from bioplausible.config import load_config
from bioplausible.training import train
from bioplausible.training.trainer import describe_device

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
# Paper, Table 2: (train, test) mean over seeds, %.
PAPER = {
    ("ep", "mnist"): (98.63, 97.45), ("dep", "mnist"): (98.60, 97.43), ("dbptt", "mnist"): (98.76, 97.87),
    ("ep", "kmnist"): (96.94, 88.54), ("dep", "kmnist"): (99.30, 90.02), ("dbptt", "kmnist"): (99.49, 91.92),
    ("ep", "fmnist"): (86.95, 85.27), ("dep", "fmnist"): (91.97, 88.52), ("dbptt", "fmnist"): (94.31, 89.29),
}


def mean_std(values: list[float]) -> str:
    return f"{statistics.mean(values):.2f}" + (f" ± {statistics.stdev(values):.2f}" if len(values) > 1 else "")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--presets", required=True, help="comma-separated names in configs/ (without .yaml)")
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--epochs", type=int, required=True)
    parser.add_argument("--seeds", default="0")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--tag", default="", help="suffix of the result files")
    args = parser.parse_args(argv)

    seeds = [int(s) for s in args.seeds.split(",")]
    command = "python benchmarks/ep_table2.py " + " ".join(argv if argv is not None else sys.argv[1:])
    rows = []
    for preset in args.presets.split(","):
        runs = []
        for seed in seeds:
            config = load_config(ROOT / "configs" / f"{preset}.yaml", epochs=args.epochs, seed=seed,
                                 num_threads=args.threads, data_dir=args.data_dir, progress=True,
                                 out=f"/tmp/bioplausible-table2/{preset}-s{seed}")
            load = os.getloadavg()[0]
            result = train(config)
            runs.append({"seed": seed, "load_before": load, "history": result.history})
        algo, dataset = preset.split("_")[0], preset.split("_")[1]
        rows.append({"preset": preset, "algo": algo, "dataset": dataset, "runs": runs})

    now = datetime.now()
    record = {"date": now.isoformat(timespec="seconds"), "machine": describe_device("cpu"), "torch": torch.__version__,
              "command": command, "epochs": args.epochs, "seeds": seeds, "rows": rows}
    RESULTS.mkdir(parents=True, exist_ok=True)
    stem = RESULTS / f"ep-table2-{now:%Y%m%d-%H%M}{'-' + args.tag if args.tag else ''}"
    stem.with_suffix(".json").write_text(json.dumps(record, indent=2))
    lines = [
        f"# DEP paper Table 2, {args.epochs} epoch(s), seeds {args.seeds} (paper: about 20 epochs, 3 seeds)", "",
        f"{record['date']} · {record['machine']} · torch {record['torch']} · {args.threads} thread(s), machine shared",
        f"· command: `{command}`", "",
        "| preset | train % (final) | test % (final) | best test % | paper train | paper test | test per epoch | s / epoch |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        finals = [r["history"][-1] for r in row["runs"]]
        best = [max(m["test_acc"] for m in r["history"]) for r in row["runs"]]
        paper = PAPER.get((row["algo"], row["dataset"].replace("lr04", "")), ("—", "—"))
        per_epoch = " / ".join(f"{100 * m['test_acc']:.2f}" for m in row["runs"][0]["history"])
        seconds = statistics.mean(m["epoch_seconds"] for r in row["runs"] for m in r["history"])
        lines.append(
            f"| {row['preset']} | {mean_std([100 * f['train_acc'] for f in finals])} | "
            f"{mean_std([100 * f['test_acc'] for f in finals])} | {mean_std([100 * b for b in best])} | "
            f"{paper[0]} | {paper[1]} | {per_epoch} | {seconds:.0f} |"
        )
    lines += ["", "Train accuracy is measured during the epoch's training (free-phase output before each update)."]
    stem.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
