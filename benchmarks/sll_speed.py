"""SLL's epoch time ÷ BP's on the Nøkland & Eidnes MLP (3x1024, BN, LeakyReLU, dropout 0.1), MNIST.

    python benchmarks/sll_speed.py --data-dir ../shared/datasets

BP and SLL epochs run interleaved (bp, sll, bp, sll, ...) ``--repeats`` times in one process and
the median epoch times are divided, so drift of the machine hits both alike. Adam 5e-4, batch
128, 2 intra-op threads. Target (issue #6): ≤ 1.1x. Writes
``benchmarks/results/sll-speed-<device>-<date>.{json,md}``.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
from datetime import datetime
from pathlib import Path

import torch

from bioplausible import TrainConfig, __version__
from bioplausible.data import load_dataset
from bioplausible.training import Trainer
from bioplausible.training.trainer import describe_device

RESULTS = Path(__file__).resolve().parent / "results"
NOKLAND_MLP = {"hidden": [1024, 1024, 1024], "activation": "leaky_relu", "batch_norm": True, "dropout": 0.1}
TARGET = 1.1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--dataset", default="mnist")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--limit-batches", type=int, default=None, help="cap batches per epoch (smoke runs)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)

    data = load_dataset(args.dataset, args.data_dir)
    base = TrainConfig(model="mlp", model_args=NOKLAND_MLP, dataset=args.dataset, batch_size=128, lr=5e-4,
                       optimizer="adam", epochs=1, device=args.device, num_threads=args.threads, progress=False,
                       limit_train_batches=args.limit_batches, out="/tmp/bioplausible-sll-speed")
    times: dict[str, list[float]] = {"bp": [], "sll": []}
    for repeat in range(args.repeats):
        for algo in times:
            metrics = Trainer(base.replace(algo=algo), data=data).run_epoch(0)
            times[algo].append(metrics["epoch_seconds"])
            print(f"repeat {repeat + 1}/{args.repeats} {algo:<4} {metrics['epoch_seconds']:.2f} s  "
                  f"test {100 * metrics['test_acc']:.2f}%", file=sys.stderr)

    bp, sll = statistics.median(times["bp"]), statistics.median(times["sll"])
    now = datetime.now()
    command = " ".join(["python", "benchmarks/sll_speed.py", *(argv if argv is not None else sys.argv[1:])])
    result = {"benchmark": "sll_speed", "date": now.isoformat(timespec="seconds"), "machine": describe_device(args.device),
              "threads": args.threads, "torch": torch.__version__, "bioplausible": __version__,
              "python": platform.python_version(), "model_args": NOKLAND_MLP, "dataset": args.dataset,
              "command": command, "epoch_seconds": times, "ratio_sll_to_bp": sll / bp, "target": TARGET}
    RESULTS.mkdir(exist_ok=True)
    stem = RESULTS / f"sll-speed-{args.device.replace(':', '')}-{now:%Y%m%d}"
    stem.with_suffix(".json").write_text(json.dumps(result, indent=2))
    lines = [
        "# SLL epoch time vs BP: Nøkland & Eidnes MLP (3x1024, BN, LeakyReLU, dropout 0.1), "
        f"{args.dataset}, batch 128, Adam",
        "",
        f"{result['date']} · {result['machine']} · torch {result['torch']} · median of {args.repeats} interleaved epochs",
        f"· command: `{command}`",
        "",
        "| rule | s / epoch (median) | all epochs (s) | time / BP | target |",
        "|---|---|---|---|---|",
        f"| bp | {bp:.2f} | {', '.join(f'{t:.2f}' for t in times['bp'])} | 1.00x | — |",
        f"| sll | {sll:.2f} | {', '.join(f'{t:.2f}' for t in times['sll'])} | {sll / bp:.2f}x | "
        f"≤ {TARGET:.2f}x {'✓' if sll / bp <= TARGET else '✗'} |",
    ]
    stem.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
