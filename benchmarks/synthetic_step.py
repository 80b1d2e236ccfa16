"""Seconds and memory of one training step of several rules on any model, fed random data of a
dataset's shape: the code path of a dataset that is not on this machine (CIFAR-10, SVHN) run at
its real size, e.g. the DLL CNNs of Appendix D.2.2:

    python benchmarks/synthetic_step.py --model dll_cnn_cifar10 --algos bp,dll,dll_fa --batch 128 --device cuda
    python benchmarks/synthetic_step.py --model dll_cnn_svhn --algos bp,dll,dll_fa --batch 128 --device cuda

Rules are timed round-robin (one step of each in turn, ``--steps`` rounds after a warm-up round),
so load from other processes falls on all alike; the median is reported with its ratio to BP's.
Memory is ``training.memory.step_memory`` (peak autograd-saved MiB, and on CUDA the peak
allocation above the baseline). Writes ``benchmarks/results/synthetic-step-<model>-<device>-<date>.{json,md}``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from datetime import datetime
from pathlib import Path

import torch

from bioplausible.algorithms import create_algorithm
from bioplausible.models import create_model
from bioplausible.training.memory import step_memory
from bioplausible.training.timing import round_robin_step_seconds
from bioplausible.training.trainer import describe_device

RESULTS = Path(__file__).resolve().parent / "results"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="dll_cnn_cifar10")
    parser.add_argument("--shape", default="3,32,32", help="one example's shape (default CIFAR's 3,32,32)")
    parser.add_argument("--classes", type=int, default=10)
    parser.add_argument("--algos", default="bp,dll,dll_fa")
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    shape = tuple(int(d) for d in args.shape.split(","))
    g = torch.Generator().manual_seed(0)
    x = torch.randn(args.batch, *shape, generator=g).to(device)
    y = torch.randint(0, args.classes, (args.batch,), generator=g).to(device)

    rules = {}
    for algo in [a for a in args.algos.split(",") if a]:
        torch.manual_seed(0)
        rules[algo] = create_algorithm(algo, create_model(args.model, shape, args.classes)).to(device)
        rules[algo].configure_optimizers(lambda groups: torch.optim.Adam(groups, lr=1e-4))
    memory = {algo: step_memory(rule, x, y) for algo, rule in rules.items()}
    times = round_robin_step_seconds(rules, x, y, args.steps)
    median = {algo: statistics.median(t) for algo, t in times.items()}
    bp = median.get("bp")

    now = datetime.now()
    command = "python benchmarks/synthetic_step.py " + " ".join(argv if argv is not None else sys.argv[1:])
    lines = [f"# One training step on random {args.shape} data: {args.model}, batch {args.batch}", "",
             f"{describe_device(device)} · torch {torch.__version__} · {now:%Y-%m-%d %H:%M} · median of "
             f"{args.steps} round-robin steps · command: `{command}`", "",
             "| rule | ms / step | ÷ BP | saved MiB | CUDA peak above baseline (MiB) |", "|---|---|---|---|---|"]
    for algo in rules:
        cuda = memory[algo].get("cuda_peak_above_baseline_mb")
        lines.append(f"| {algo} | {1e3 * median[algo]:.2f} | {'—' if bp is None else f'{median[algo] / bp:.2f}x'} | "
                     f"{memory[algo]['saved_mb']:.1f} | {'—' if cuda is None else f'{cuda:.1f}'} |")
    RESULTS.mkdir(exist_ok=True)
    stem = RESULTS / f"synthetic-step-{args.model}-{args.device.replace(':', '')}-{now:%Y%m%d}"
    stem.with_suffix(".json").write_text(json.dumps({
        "command": command, "machine": describe_device(device), "torch": torch.__version__, "date": now.isoformat(),
        "model": args.model, "shape": shape, "batch": args.batch, "seconds_median": median,
        "ratio_to_bp": {a: m / bp for a, m in median.items()} if bp else None, "memory": memory}, indent=2))
    stem.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
