"""Test accuracy of BP, DGL, DGL+MLAAN, InfoPro, InfoPro+MLAAN and the MLM/LAM ablation on
ResNet-32 K=16, Fashion-MNIST (1-channel stem), from the CPU presets ``configs/mlaan/cpu_*.yaml``
(the paper's optimiser, schedule and augmentation at batch 128, lr 0.1).

    python benchmarks/mlaan_accuracy.py                                  # the presets as they are
    python benchmarks/mlaan_accuracy.py --width 4 --epochs 2 --limit 50  # a reduced run for 2 shared cores
    python benchmarks/mlaan_accuracy.py --device cuda --jobs 14 --epochs 5   # on a GPU, under MPS (README)

``--width``, ``--epochs`` and ``--limit`` (training batches per epoch) shrink the run; the table
states what was run. Each run has its directory in ``runs/mlaan-accuracy``; ``--resume`` continues
a table that was cut off (a CPU table takes hours) from the runs' checkpoints. ``--jobs N`` trains
N runs at once (``compare.train_all``); their seconds are then not speed figures, and the table
says so. The paper's CIFAR-10 numbers (test error, ResNet-32 K=16: BP 6.37, DGL 14.08,
DGL* 6.36, InfoPro 12.93, InfoPro* 6.37; ablation MLM 8.46, LAM 7.64) are printed beside ours for
orientation only: a different dataset and a far shorter schedule.
Writes ``benchmarks/results/mlaan-accuracy-<date>.{json,md}``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from datetime import datetime, timezone
from pathlib import Path

from bioplausible import load_config
from bioplausible.compare import train_all
from bioplausible.training.trainer import describe_device, device_tag

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
ROWS = [("BP", "cpu_bp_resnet32_fmnist", "6.37"), ("DGL", "cpu_dgl_resnet32_k16_fmnist", "14.08"),
        ("DGL* (MLAAN)", "cpu_mlaan_dgl_resnet32_k16_fmnist", "6.36"),
        ("InfoPro", "cpu_infopro_resnet32_k16_fmnist", "12.93"),
        ("InfoPro* (MLAAN)", "cpu_mlaan_infopro_resnet32_k16_fmnist", "6.37"),
        ("DGL + MLM only", "cpu_mlaan_mlm_only_resnet32_k16_fmnist", "8.46"),
        ("DGL + LAM only", "cpu_mlaan_lam_only_resnet32_k16_fmnist", "7.64")]


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--width", type=int, default=16)
    parser.add_argument("--epochs", type=int, default=None, help="default: the preset's")
    parser.add_argument("--limit", type=int, default=None, help="training batches per epoch (default: all)")
    parser.add_argument("--seeds", default="0,1")
    parser.add_argument("--rows", default=None, help="comma-separated preset names (default: all rows)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--jobs", type=int, default=1, help="runs at once (then seconds are not speed figures)")
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--resume", action="store_true",
                        help="continue the runs already in runs/mlaan-accuracy (finished ones are read back)")
    args = parser.parse_args(argv)
    seeds = [int(s) for s in args.seeds.split(",")]
    rows = [r for r in ROWS if args.rows is None or r[1] in args.rows.split(",")]
    configs = []
    for _, preset, _ in rows:
        for seed in seeds:
            config = load_config(ROOT / "configs" / "mlaan" / f"{preset}.yaml")
            changes = {"model_args": {**config.model_args, "width": args.width}, "seed": seed, "progress": False,
                       "num_threads": args.threads, "limit_train_batches": args.limit, "data_dir": args.data_dir,
                       "device": args.device,
                       "out": str(ROOT / "runs" / "mlaan-accuracy" / f"{preset}-w{args.width}{device_tag(args.device)}-s{seed}")}
            if args.epochs:
                changes["epochs"] = args.epochs
                changes["warmup_epochs"] = min(config.warmup_epochs, args.epochs - 1)
            configs.append(config.replace(**changes))
    results = iter(train_all(configs, args.jobs, args.resume))
    out = []
    for label, preset, paper in rows:
        runs = [next(results) for _ in seeds]
        out.append({"rule": label, "preset": preset, "test_acc": [r.summary["final"]["test_acc"] for r in runs],
                    "seconds": [r.summary["mean_epoch_seconds"] * len(r.history) for r in runs],
                    "paper_cifar10_error": paper})
    meta = {"command": "python " + " ".join(sys.argv), "device": describe_device(args.device),
            "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"), **vars(args)}
    RESULTS.mkdir(exist_ok=True)
    stem = RESULTS / f"mlaan-accuracy{device_tag(args.device)}-{datetime.now(timezone.utc):%Y-%m-%d}"
    stem.with_suffix(".json").write_text(json.dumps({"meta": meta, "rows": out}, indent=1))
    lines = ["# ResNet-32 K=16 on Fashion-MNIST, CPU presets", "",
             f"Device: {meta['device']}. Date: {meta['date']}. Command: `{meta['command']}`.",
             f"Width {args.width}, epochs {args.epochs or 'as preset'}, training batches per epoch "
             f"{args.limit or 'all'}, seeds {args.seeds}"
             + (f", {args.jobs} runs at once (training seconds are not speed figures)" if args.jobs > 1 else "")
             + ". The paper column is CIFAR-10 test error after 400 "
             "epochs (InfoPro 160) on a GPU: not comparable in value, only in ordering.", "",
             "| rule | test error % (mean over seeds) | per seed | training s per run | paper CIFAR-10 error % |",
             "|---|---|---|---|---|"]
    for r in out:
        err = [100 * (1 - a) for a in r["test_acc"]]
        lines.append(f"| {r['rule']} | {statistics.mean(err):.2f} | {' / '.join(f'{e:.2f}' for e in err)} | "
                     f"{statistics.mean(r['seconds']):.0f} | {r['paper_cifar10_error']} |")
    stem.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
