"""Reproduce the DEP paper's Table 2 (EP vs DEP vs DBPTT, train and test accuracy) from the
presets in ``configs/``, with as many epochs and seeds as the time allows.

    python benchmarks/ep_table2.py --data-dir ../shared/datasets --presets ep_mnist,dep_mnist,dbptt_mnist \\
        --epochs 3 --seeds 0 --threads 1
    python benchmarks/ep_table2.py --collect runs/ep-table2 --tag mnist-cuda   # runs trained elsewhere

Each preset runs unchanged except for ``epochs``, ``seed``, ``device`` and ``num_threads``, into
``<runs>/<preset>-s<seed>``. The table is built from those run directories' ``metrics.jsonl``, so
runs trained elsewhere (``bioplausible train --config configs/<preset>.yaml --set seed=S --out
<dir>/<preset>-s<S>``, e.g. many at once on a GPU) and runs cut off before their last epoch can be
tabulated too: each preset's row is read at the last epoch that all its seeds reached, and says which.
Writes ``benchmarks/results/ep-table2-<date>[-<tag>].{json,md}`` with the command(s), the per-epoch
test accuracy of every run and the paper's numbers beside ours (the paper trains about 20 epochs).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from datetime import datetime
from pathlib import Path

import torch

from bioplausible.config import load_config, load_yaml
from bioplausible.training import train

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


def read_runs(dirs: list[Path]) -> dict[str, list[dict]]:
    """``{preset: [{"seed", "history", "device", "planned_epochs"}, ...]}`` from ``<preset>-s<seed>`` run
    directories; a later directory's run of the same preset and seed replaces an earlier one's."""
    found: dict[tuple[str, int], dict] = {}
    for directory in dirs:
        for metrics in sorted(Path(directory).glob("*-s*/metrics.jsonl")):
            preset, _, seed = metrics.parent.name.rpartition("-s")
            history = [json.loads(line) for line in metrics.read_text().splitlines() if line.strip()]
            if not history:
                continue
            config = load_yaml((metrics.parent / "config.yaml").read_text())
            summary = metrics.parent / "summary.json"
            device = json.loads(summary.read_text())["device"] if summary.exists() else config["device"]
            found[(preset, int(seed))] = {"seed": int(seed), "history": history, "device": device,
                                          "planned_epochs": config["epochs"]}
    runs: dict[str, list[dict]] = {}
    for (preset, _), run in sorted(found.items()):
        runs.setdefault(preset, []).append(run)
    return runs


def table(runs: dict[str, list[dict]], heading: list[str]) -> list[str]:
    lines = heading + [
        "| preset | seeds | epochs (of planned) | train % | test % | test %, last 5 epochs | best test % | paper train | paper test | test % per epoch (first seed) |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for preset, seeds in runs.items():
        epochs = min(len(r["history"]) for r in seeds)  # the last epoch every seed reached
        at = [r["history"][epochs - 1] for r in seeds]
        algo, dataset = preset.split("_")[:2]
        paper = PAPER.get((algo, dataset.replace("lr04", "")), ("—", "—"))
        per_epoch = " ".join(f"{100 * m['test_acc']:.2f}" for m in seeds[0]["history"])
        last5 = [100 * statistics.mean(m["test_acc"] for m in r["history"][max(0, epochs - 5):epochs]) for r in seeds]
        best = [100 * max(m["test_acc"] for m in r["history"][:epochs]) for r in seeds]
        lines.append(
            f"| {preset} | {','.join(str(r['seed']) for r in seeds)} | {epochs} (of {seeds[0]['planned_epochs']}) | "
            f"{mean_std([100 * m['train_acc'] for m in at])} | {mean_std([100 * m['test_acc'] for m in at])} | "
            f"{mean_std(last5)} | {mean_std(best)} | {paper[0]} | {paper[1]} | {per_epoch} |")
    return lines + ["", "Train accuracy is measured during the epoch's training (free-phase output before each update). "
                    "Test accuracy is the final epoch's; \"last 5 epochs\" averages each run's test accuracy over "
                    "its last 5 epochs (less noisy than one epoch); \"best\" is each run's highest test accuracy "
                    "over its epochs, selected on the test set, so optimistic: shown only because the paper does "
                    "not say which of these it reports."]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--presets", help="comma-separated names in configs/ (without .yaml)")
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--epochs", type=int)
    parser.add_argument("--seeds", default="0")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--runs", default="runs/ep-table2", help="where the run directories go")
    parser.add_argument("--collect", nargs="+", metavar="DIR", help="only build the table from these run directories")
    parser.add_argument("--note", default="", help="a line for the heading (e.g. how the collected runs were made)")
    parser.add_argument("--tag", default="", help="suffix of the result files")
    args = parser.parse_args(argv)
    if not args.collect and not (args.presets and args.epochs):
        parser.error("give --presets and --epochs to train, or --collect DIR... to tabulate finished runs")

    argv = list(argv if argv is not None else sys.argv[1:])
    if "--note" in argv:  # the note is printed on its own
        del argv[argv.index("--note"):argv.index("--note") + 2]
    command = "python benchmarks/ep_table2.py " + " ".join(argv)
    if not args.collect:
        for preset in args.presets.split(","):
            for seed in (int(s) for s in args.seeds.split(",")):
                train(load_config(ROOT / "configs" / f"{preset}.yaml", epochs=args.epochs, seed=seed,
                                  num_threads=args.threads, data_dir=args.data_dir, device=args.device,
                                  progress=True, out=f"{args.runs}/{preset}-s{seed}"))
    runs = read_runs([Path(d) for d in (args.collect or [args.runs])])
    if not runs:
        raise SystemExit(f"no run directories with metrics in {', '.join(args.collect or [args.runs])}")
    devices = sorted({r["device"] for seeds in runs.values() for r in seeds})
    now = datetime.now()
    heading = [
        "# DEP paper Table 2 (paper: about 20 epochs, 3 seeds)", "",
        f"{now:%Y-%m-%d %H:%M} · {', '.join(devices)} · torch {torch.__version__} (of this tabulation) · "
        f"command: `{command}`" + (f" · {args.note}" if args.note else ""), "",
    ]
    lines = table(runs, heading)
    RESULTS.mkdir(parents=True, exist_ok=True)
    stem = RESULTS / f"ep-table2-{now:%Y%m%d-%H%M}{'-' + args.tag if args.tag else ''}"
    stem.with_suffix(".json").write_text(json.dumps({"date": now.isoformat(timespec="seconds"), "command": command,
                                                     "note": args.note, "machine": devices, "runs": runs}, indent=2))
    stem.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
