"""Seconds per training batch of BP, DGL, InfoPro, AugLocal and MLAAN on ResNet-32 (K=16), and
each rule's ratio to BP measured in the same run (issue #7: target MLAAN ≤ 4× BP; the authors'
code costs about 10-13× BP on a 2-core CPU).

    python benchmarks/mlaan_speed.py                       # batch 128, CIFAR-shaped, 1 thread
    python benchmarks/mlaan_speed.py --batch 64 --repeats 5
    python benchmarks/mlaan_speed.py --rules bp dgl "mlaan(dgl)" "mlaan(dgl) recompute"   # a subset

``recompute`` rows rebuild each cascade window's modules from their held inputs (MLAAN's
memory-saving option) instead of keeping their graphs: what the option costs, against BP in the
same run.

Rules are timed round-robin (one step of each in turn, ``repeats`` rounds after a warm-up round)
so that load from other processes falls on all of them alike; the median per rule is reported.
Writes ``benchmarks/results/mlaan-speed-<date>.{json,md}``.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import statistics
import sys
from datetime import datetime, timezone
from pathlib import Path

import torch

from bioplausible.algorithms import create_algorithm
from bioplausible.models import create_model
from bioplausible.training.timing import round_robin_step_seconds
from bioplausible.training.trainer import describe_device, device_tag

RESULTS = Path(__file__).resolve().parent / "results"
RULES = dict([("bp", {}), ("dgl", {}), ("infopro", {}), ("auglocal", {}),
              ("mlaan(dgl)", {"base": "dgl", "recompute": False}),
              ("mlaan(dgl) recompute", {"base": "dgl", "recompute": True}),
              ("mlaan(infopro)", {"base": "infopro", "recompute": False}),
              ("mlaan(infopro) recompute", {"base": "infopro", "recompute": True}),
              ("mlaan(dgl) MLM only", {"base": "dgl", "lam": False, "recompute": False}),
              ("mlaan(dgl) LAM only", {"base": "dgl", "mlm": False})])


def build(label: str, options: dict, net: str, modules: int, device):
    torch.manual_seed(0)
    model = create_model(net, (3, 32, 32), 10).to(device)
    algo = label.split("(")[0]
    rule = create_algorithm(algo, model, **({} if algo == "bp" else {"modules": modules, **options})).to(device)
    rule.configure_optimizers(lambda groups: torch.optim.SGD(groups, lr=0.01, momentum=0.9, nesterov=True))
    return rule


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--net", default="resnet32")
    parser.add_argument("--modules", type=int, default=16)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--rules", nargs="+", default=list(RULES), choices=list(RULES), metavar="RULE",
                        help="rules to time, of: " + ", ".join(RULES) + " (bp, the ratios' reference, is always timed)")
    parser.add_argument("--out", help="name of the result files in benchmarks/results "
                                      "(default mlaan-speed[-cuda]-<date>)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    labels = ["bp", *(label for label in args.rules if label != "bp")]
    rules = {label: build(label, RULES[label], args.net, args.modules, device) for label in labels}
    x = torch.randn(args.batch, 3, 32, 32, device=device)
    y = torch.randint(0, 10, (args.batch,), device=device)
    times = round_robin_step_seconds(rules, x, y, args.repeats, report=lambda round_, times: print(
        f"round {round_}: " + ", ".join(f"{k} {v[-1]:.2f}s" for k, v in times.items() if v), flush=True))
    median = {label: statistics.median(t) for label, t in times.items()}
    # glibc's allocator settings change the timings of rules sharing one process (with its defaults,
    # BP's step took 2.45 s among the ten rules and 1.5 s alone on a 2-core EPYC): record them.
    malloc = " ".join(f"{k}={v}" for k, v in sorted(os.environ.items()) if k.startswith("MALLOC_"))
    meta = {"command": " ".join(filter(None, [malloc, "python", shlex.join(sys.argv)])), "device": describe_device(device),
            "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"), "batch": args.batch,
            "net": args.net, "modules": args.modules, "repeats": args.repeats}
    RESULTS.mkdir(exist_ok=True)
    stem = RESULTS / (args.out or f"mlaan-speed{device_tag(device)}-{datetime.now(timezone.utc):%Y-%m-%d}")
    stem.with_suffix(".json").write_text(json.dumps({"meta": meta, "seconds": times, "median": median}, indent=1))
    lines = [f"# Seconds per training batch, {args.net} K={args.modules}, batch {args.batch}", "",
             f"Device: {meta['device']}. Date: {meta['date']}. Command: `{meta['command']}`.",
             f"Median of {args.repeats} round-robin steps after a warm-up round. Absolute seconds depend on "
             "the machine's load; the ratios (same run, interleaved steps) are the figure to read.", "",
             "| rule | s / batch | ÷ BP |", "|---|---|---|"]
    lines += [f"| {label} | {median[label]:.3f} | {median[label] / median['bp']:.2f} |" for label in rules]
    stem.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
