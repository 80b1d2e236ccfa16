"""Training memory of BP vs DGL vs InfoPro vs MLAAN on ResNet-32 (K=16) and ResNet-110 (K=55),
batch 128, CIFAR-shaped synthetic data (MLAAN paper, Table 3: BP 3.37 GB vs MLAAN 2.62 GB and
9.26 vs 2.76 GB, CIFAR-10 on a GPU).

    python benchmarks/mlaan_memory.py                      # both networks, CPU, 1 thread
    python benchmarks/mlaan_memory.py --nets resnet32      # one network

MLAAN runs with its windows' graphs kept (``recompute=false``) and rebuilt from the modules'
held inputs (``recompute=true``, the authors' form), on DGL's and on InfoPro's heads.

Metrics (``bioplausible.training.memory.step_memory``, after one warm-up step): peak bytes of the
storages autograd saves for backward during one training step (``SavedBytes``, as
benchmarks/sll_memory.py), and the step's peak tensor memory: what the rule holds before the step
(parameters, buffers, gradients, optimizer state) plus the peak allocated above that during the
step (CUDA: ``torch.cuda.max_memory_allocated``; CPU: the profiler's allocation events). The first
leaves out tensors held outside a graph (the inputs MLAAN's recomputation keeps), gradients and
temporaries; the second counts every tensor. Writes
``benchmarks/results/mlaan-memory-<nets>-b<batch>[-cuda]-<date>.{json,md}``.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from datetime import datetime, timezone
from pathlib import Path

import torch

from bioplausible.algorithms import create_algorithm
from bioplausible.models import create_model
from bioplausible.training.memory import step_memory
from bioplausible.training.trainer import describe_device, device_tag

RESULTS = Path(__file__).resolve().parent / "results"
RULES = [("bp", {}), ("dgl", {}), ("infopro", {}), ("auglocal", {}),
         *(("mlaan", {"base": base, "recompute": recompute})
           for base in ("dgl", "infopro") for recompute in (False, True))]
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
    name = f"{row['algo']}({base})" if base else row["algo"]
    return name + (" recompute" if row["options"].get("recompute") else "")


def peak(row: dict) -> float:
    """The step's peak tensor memory, MiB: resident before the step plus the peak allocated above
    it (CUDA or CPU, whichever was measured)."""
    return row["resident_mb"] + row.get("cuda_peak_above_baseline_mb", row.get("cpu_peak_above_baseline_mb"))


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nets", nargs="+", default=["resnet32", "resnet110"], choices=list(MODULES))
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", help="name of the result files in benchmarks/results "
                                      "(default mlaan-memory-<nets>-b<batch>[-cuda]-<date>)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    rows = []
    for net in args.nets:
        for algo, options in RULES:
            row = measure(net, algo, dict(options), args.batch, device)
            rows.append(row)
            print(f"{net:10s} {label(row):26s} saved {row['saved_mb']:8.1f} MiB, peak {peak(row):8.1f} MiB",
                  flush=True)
    meta = {"command": "python " + shlex.join(sys.argv), "device": describe_device(device),
            "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"), "batch": args.batch}
    RESULTS.mkdir(exist_ok=True)
    stem = RESULTS / (args.out or f"mlaan-memory-{'-'.join(args.nets)}-b{args.batch}{device_tag(device)}-"
                               f"{datetime.now(timezone.utc):%Y-%m-%d}")
    stem.with_suffix(".json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=1))
    # The authors' MLAAN recomputes its windows.
    paper = {("resnet32", "bp"): "3.37 GB", ("resnet32", "mlaan(dgl) recompute"): "2.62 GB",
             ("resnet110", "bp"): "9.26 GB", ("resnet110", "mlaan(dgl) recompute"): "2.76 GB"}
    lines = [f"# Training memory, batch {args.batch}, CIFAR-shaped input", "",
             f"Device: {meta['device']}. Date: {meta['date']}. Command: `{meta['command']}`.", "",
             "Saved: peak autograd-saved bytes during one training step (activations kept for backward; not "
             "parameters, gradients, optimizer state or tensors held outside a graph), measured with `SavedBytes`. "
             "Peak: the step's peak tensor memory, the resident parameters, buffers, gradients and optimizer state "
             "before the step plus the peak allocated above them during it "
             f"({'the profiler' if device.type == 'cpu' else 'torch.cuda.max_memory_allocated'} on "
             f"{'CPU' if device.type == 'cpu' else device}). The paper's figures are whole-process GPU memory "
             "on CIFAR-10 (CUDA context and allocator cache included), so compare ratios, not values.", "",
             "| network | rule | saved MiB | ÷ BP | ÷ DGL | resident MiB | peak MiB | ÷ BP | ÷ DGL "
             "| paper (GPU, total) |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for net in args.nets:
        bp, dgl = (next(r for r in rows if r["net"] == net and r["algo"] == algo) for algo in ("bp", "dgl"))
        for r in (r for r in rows if r["net"] == net):
            saved = r["saved_mb"]
            lines.append(f"| {net} K={MODULES[net]} | {label(r)} | {saved:.1f} | {saved / bp['saved_mb']:.2f} | "
                         f"{saved / dgl['saved_mb']:.2f} | {r['resident_mb']:.1f} | {peak(r):.1f} | "
                         f"{peak(r) / peak(bp):.2f} | {peak(r) / peak(dgl):.2f} | {paper.get((net, label(r)), '')} |")
    stem.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
