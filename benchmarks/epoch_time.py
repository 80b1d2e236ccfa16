"""Time one training epoch of each rule against BP, in one run, on the same model and data.

    python benchmarks/epoch_time.py --data-dir ../shared/datasets            # the issue's setting
    python benchmarks/epoch_time.py --dataset digits --model mlp --repeats 1 # a quick look

Default: MNIST, the DLL MLP 784-1024-512-256-10 (tanh), batch 128, Adam, 2 intra-op threads.
Rules run interleaved (bp, fa, ..., bp, fa, ...) ``--repeats`` times and the median epoch time
of each is divided by BP's, so drift of the machine during the run hits every rule alike.
Writes ``benchmarks/results/epoch_time-<dataset>[-<model>]-<device>-<date>[-<rules>].{json,md}`` (the
model and the rule list are added unless they are the defaults; ``--out`` names it instead) with the machine,
date, torch version and thread count.
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
TARGETS = {"fa": 1.05, "dfa": 1.05, "kp": 1.4}  # issue #2: epoch time / BP's


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--algos", default="bp,fa,dfa,kp,wm")
    parser.add_argument("--model", default="mlp_dll_mnist")
    parser.add_argument("--dataset", default="mnist")
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--limit-batches", type=int, default=None, help="cap batches per epoch (smoke runs)")
    parser.add_argument("--out", default=None, help="result file name without suffix (default: from the options)")
    args = parser.parse_args(argv)

    torch.set_num_threads(args.threads)
    algos = [a for a in args.algos.split(",") if a]
    if "bp" not in algos:
        algos.insert(0, "bp")
    data = load_dataset(args.dataset, args.data_dir)
    base = TrainConfig(model=args.model, dataset=args.dataset, batch_size=args.batch_size, epochs=1,
                       device=args.device, num_threads=args.threads, progress=False,
                       limit_train_batches=args.limit_batches, out="/tmp/bioplausible-benchmark")
    times: dict[str, list[float]] = {a: [] for a in algos}
    data_fraction: dict[str, list[float]] = {a: [] for a in algos}
    accuracy: dict[str, float] = {}
    for repeat in range(args.repeats):
        for algo in algos:
            trainer = Trainer(base.replace(algo=algo), data=data)
            metrics = trainer.run_epoch(0)
            times[algo].append(metrics["epoch_seconds"])
            data_fraction[algo].append(metrics["data_fraction"])
            accuracy[algo] = metrics["test_acc"]
            print(f"repeat {repeat + 1}/{args.repeats} {algo:<4} {metrics['epoch_seconds']:.2f} s  "
                  f"data {100 * metrics['data_fraction']:.1f}%  test {100 * metrics['test_acc']:.2f}%", file=sys.stderr)

    bp_time = statistics.median(times["bp"])
    rows = []
    for algo in algos:
        median = statistics.median(times[algo])
        ratio = median / bp_time
        target = TARGETS.get(algo)
        rows.append({
            "algo": algo, "epoch_seconds_median": median, "epoch_seconds_all": times[algo],
            "ratio_to_bp": ratio, "target_ratio": target,
            "meets_target": None if target is None else ratio <= target,
            "data_fraction": statistics.median(data_fraction[algo]),
            "test_acc_after_one_epoch": accuracy[algo],
        })
    now = datetime.now()
    result = {
        "benchmark": "epoch_time", "date": now.isoformat(timespec="seconds"),
        "machine": describe_device(args.device), "device": args.device, "threads": args.threads,
        "torch": torch.__version__, "bioplausible": __version__, "python": platform.python_version(),
        "model": args.model, "dataset": args.dataset, "batch_size": args.batch_size, "repeats": args.repeats,
        "limit_batches": args.limit_batches, "command": " ".join(["python", "benchmarks/epoch_time.py", *(argv or sys.argv[1:])]),
        "rows": rows,
    }
    RESULTS.mkdir(exist_ok=True)
    rules = "" if args.algos == parser.get_default("algos") else "-" + "_".join(algos)
    model = "" if args.model == parser.get_default("model") else f"-{args.model}"
    stem = RESULTS / (args.out or f"epoch_time-{args.dataset}{model}-{args.device.replace(':', '')}-{now:%Y%m%d}{rules}")
    stem.with_suffix(".json").write_text(json.dumps(result, indent=2))
    lines = [
        f"# Epoch time per rule vs BP: {args.model} on {args.dataset}, batch {args.batch_size}",
        "",
        f"{result['date']} · {result['machine']} · torch {result['torch']} · median of {args.repeats} interleaved epochs"
        + (f" of {args.limit_batches} batches each (the seconds are for those; the accuracy is after them, with"
           " the rules' default settings: not a learning result)" if args.limit_batches else ""),
        f"· command: `{result['command']}`",
        "",
        "| rule | s / epoch (median) | time / BP | target | data loading | test acc after 1 epoch |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        target = "—" if r["target_ratio"] is None else f"≤ {r['target_ratio']:.2f}x {'✓' if r['meets_target'] else '✗'}"
        lines.append(f"| {r['algo']} | {r['epoch_seconds_median']:.2f} | {r['ratio_to_bp']:.2f}x | {target} | "
                     f"{100 * r['data_fraction']:.1f}% | {100 * r['test_acc_after_one_epoch']:.2f}% |")
    stem.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    print(f"\nwritten: {stem}.json, {stem}.md", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
