"""Training memory of BP vs DGL vs InfoPro vs MLAAN on ResNet-32 (K=16) and ResNet-110 (K=55),
batch 128, CIFAR-shaped synthetic data (MLAAN paper, Table 3: BP 3.37 GB vs MLAAN 2.62 GB and
9.26 vs 2.76 GB, CIFAR-10 on a GPU).

    python benchmarks/mlaan_memory.py                      # both networks, CPU, 1 thread
    python benchmarks/mlaan_memory.py --nets resnet32      # one network

Metric (as benchmarks/sll_memory.py): peak bytes of the storages autograd saves for backward
during one training step (``bioplausible.training.memory.SavedBytes``), after one warm-up step.
Parameters, gradients and optimizer state are not in it. On CUDA the script also reports
``torch.cuda.max_memory_allocated`` during the step minus what was allocated before it.
Writes ``benchmarks/results/mlaan-memory-<date>.{json,md}``.
"""

from __future__ import annotations

import argparse
import json
import sys
from datetime import datetime, timezone
from pathlib import Path

import torch

from bioplausible.algorithms import create_algorithm
from bioplausible.models import create_model
from bioplausible.training.memory import step_memory
from bioplausible.training.trainer import describe_device, device_tag

RESULTS = Path(__file__).resolve().parent / "results"
RULES = [("bp", {}), ("dgl", {}), ("infopro", {}), ("auglocal", {}), ("mlaan", {"base": "dgl"}),
         ("mlaan", {"base": "infopro"})]
MODULES = {"resnet32": 16, "resnet110": 55}


def measure(net: str, algo: str, options: dict, batch: int, device: torch.device) -> dict:
    torch.manual_seed(0)
    model = create_model(net, (3, 32, 32), 10).to(device)
    if algo != "bp":
        options = {"modules": MODULES[net], **options}
    rule = create_algorithm(algo, model, **options).to(device)
    rule.configure_optimizers(lambda groups: torch.optim.SGD(groups, lr=0.01, momentum=0.9, nesterov=True))
    x = torch.randn(batch, 3, 32, 32, device=device)
    y = torch.randint(0, 10, (batch,), device=device)
    return {"net": net, "algo": algo, "options": options, **step_memory(rule, x, y)}


def label(row: dict) -> str:
    base = row["options"].get("base")
    return f"{row['algo']}({base})" if base else row["algo"]


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nets", nargs="+", default=["resnet32", "resnet110"], choices=list(MODULES))
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    rows = []
    for net in args.nets:
        for algo, options in RULES:
            row = measure(net, algo, dict(options), args.batch, device)
            rows.append(row)
            print(f"{net:10s} {label(row):18s} saved {row['saved_mb']:8.1f} MiB", flush=True)
    meta = {"command": "python " + " ".join(sys.argv), "device": describe_device(device),
            "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"), "batch": args.batch}
    RESULTS.mkdir(exist_ok=True)
    stem = RESULTS / f"mlaan-memory-{'-'.join(args.nets)}-b{args.batch}{device_tag(device)}-{datetime.now(timezone.utc):%Y-%m-%d}"
    stem.with_suffix(".json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=1))
    paper = {("resnet32", "bp"): "3.37 GB", ("resnet32", "mlaan(dgl)"): "2.62 GB",
             ("resnet110", "bp"): "9.26 GB", ("resnet110", "mlaan(dgl)"): "2.76 GB"}
    lines = [f"# Training memory, batch {args.batch}, CIFAR-shaped input", "",
             f"Device: {meta['device']}. Date: {meta['date']}. Command: `{meta['command']}`.", "",
             "Peak autograd-saved bytes during one training step (activations kept for backward; not "
             "parameters, gradients or optimizer state), measured with `SavedBytes` on "
             f"{'CPU' if device.type == 'cpu' else device}. The paper's figures are whole-process GPU memory "
             "on CIFAR-10 (weights, optimizer, CUDA context included), so compare ratios, not values.", "",
             "| network | rule | saved MiB | ÷ BP | ÷ DGL | paper (GPU, total) |", "|---|---|---|---|---|---|"]
    for net in args.nets:
        bp = next(r["saved_mb"] for r in rows if r["net"] == net and r["algo"] == "bp")
        dgl = next(r["saved_mb"] for r in rows if r["net"] == net and r["algo"] == "dgl")
        for r in (r for r in rows if r["net"] == net):
            extra = f" (CUDA {r['cuda_peak_above_baseline_mb']:.0f} MiB)" if "cuda_peak_above_baseline_mb" in r else ""
            lines.append(f"| {net} K={MODULES[net]} | {label(r)} | {r['saved_mb']:.1f}{extra} | {r['saved_mb'] / bp:.2f} | "
                         f"{r['saved_mb'] / dgl:.2f} | {paper.get((net, label(r)), '')} |")
    stem.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
