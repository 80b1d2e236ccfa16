"""BP vs DLL vs DLL-FA on the Elman RNN for the two sequence stand-ins of the DLL paper's Table 2/3
(the paper's Harry Potter, Electricity, METR-LA and PEMS-BAY sets are not available here):
next-character prediction on tinyshakespeare and next-day forecasting of exchange_rate.

    python benchmarks/dll_sequences.py --data-dir ../shared/datasets --tasks exchange_rate --seeds 0,1,2

Each run uses the preset ``configs/dll/<task>_<bp|dll>.yaml`` (DLL-FA: the dll preset with
``algo: dll_fa``); ``--epochs`` overrides the preset's epochs. Writes
``benchmarks/results/dll-sequences-<task>-<date>.{md,json}`` with the final-epoch test metrics
(and the best-validation epoch where a validation split exists), the trivial baselines, the
paper's Table 2/3 figures for the tasks it ran, the machine and the command.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from datetime import datetime
from pathlib import Path

import torch

from bioplausible import __version__
from bioplausible.config import load_config
from bioplausible.data import load_dataset
from bioplausible.training import train
from bioplausible.training.trainer import describe_device

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
PAPER = """The paper's Table 2/3 (3 seeds) on its own data, for orientation only (other data, other scales):
Harry Potter next-character accuracy BP 51.9%, DLL 33.7%, DLL-FA 0.71% (fails to converge);
Electricity MSE/MAE BP 0.175/0.324, DLL 0.172/0.321, DLL-FA 0.193/0.345."""


def baselines(task: str, data_dir: str) -> dict:
    splits = load_dataset(task, data_dir)
    if splits.task == "classification":
        most_frequent = torch.bincount(splits.train[1].flatten()).argmax()
        return {"most frequent character, test acc": (splits.test[1] == most_frequent).double().mean().item()}
    x, y = splits.test
    mean = splits.train[1].mean(0)
    return {
        "persistence (tomorrow = today), test mse": (x[:, -1] - y).pow(2).mean().item(),
        "persistence, test mae": (x[:, -1] - y).abs().mean().item(),
        "training mean, test mse": (mean - y).pow(2).mean().item(),
        "training mean, test mae": (mean - y).abs().mean().item(),
    }


def run(task: str, algo: str, seed: int, args) -> dict:
    preset = ROOT / "configs" / "dll" / f"{task}_{'bp' if algo == 'bp' else 'dll'}.yaml"
    overrides = {"algo": algo, "seed": seed, "data_dir": args.data_dir, "num_threads": args.threads,
                 "progress": False, "out": str(Path(args.runs) / f"{task}-{algo}-s{seed}")}
    if args.epochs:
        overrides["epochs"] = args.epochs
    config = load_config(preset, **overrides)
    start = time.perf_counter()
    result = train(config)
    return {"algo": algo, "seed": seed, "preset": str(preset.relative_to(ROOT)), "epochs": config.epochs,
            "lr": config.lr, "final": result.summary["final"], "best_val": result.summary.get("best_val"),
            "mean_epoch_seconds": result.summary["mean_epoch_seconds"], "wall_seconds": time.perf_counter() - start,
            "history": result.history}


def mean_std(values: list[float], scale: float = 1.0, digits: int = 4) -> str:
    values = [scale * v for v in values]
    if len(values) == 1:
        return f"{values[0]:.{digits}f}"
    return f"{statistics.mean(values):.{digits}f} ± {statistics.stdev(values):.{digits}f}"


def table(runs: list[dict], regression: bool) -> str:
    keys = ["test_mse", "test_mae"] if regression else ["test_acc"]
    header = ["rule", "seeds", "epochs", "lr"] + [f"final {k}" for k in keys]
    if regression:
        header += ["best-val epoch", "test_mse at best val"]
    header += ["s/epoch"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for algo in dict.fromkeys(r["algo"] for r in runs):
        rows = [r for r in runs if r["algo"] == algo]
        cells = [algo, ",".join(str(r["seed"]) for r in rows), str(rows[0]["epochs"]), f"{rows[0]['lr']:g}"]
        cells += [mean_std([r["final"][k] for r in rows], 100 if k == "test_acc" else 1, 2 if k == "test_acc" else 5)
                  for k in keys]
        if regression:
            cells += [",".join(str(r["best_val"]["epoch"]) for r in rows),
                      mean_std([r["best_val"]["test_mse"] for r in rows], digits=5)]
        cells.append(f"{statistics.mean(r['mean_epoch_seconds'] for r in rows):.1f}")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", required=True)
    parser.add_argument("--tasks", default="tinyshakespeare,exchange_rate")
    parser.add_argument("--algos", default="bp,dll,dll_fa")
    parser.add_argument("--seeds", default="0")
    parser.add_argument("--epochs", type=int, default=None, help="override the presets' epochs")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--runs", default="runs/dll-sequences")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    stamp = datetime.now().strftime("%Y%m%d")
    RESULTS.mkdir(parents=True, exist_ok=True)
    for task in args.tasks.split(","):
        runs = []
        for algo in args.algos.split(","):
            for seed in (int(s) for s in args.seeds.split(",")):
                runs.append(run(task, algo, seed, args))
                print(f"{task} {algo} seed {seed}: {runs[-1]['final']}", flush=True)
        regression = "test_mse" in runs[0]["final"]
        base = baselines(task, args.data_dir)
        command = "python " + " ".join(sys.argv)
        md = [
            f"# DLL on the Elman RNN: {task} ({datetime.now():%Y-%m-%d})",
            "",
            "Stand-in data: the paper's Harry Potter, Electricity, METR-LA and PEMS-BAY sets are not available "
            "on these machines; tinyshakespeare (text) and exchange_rate (LSTNet series) stand in for them.",
            "",
            f"- machine: {describe_device('cpu')} (CPU shared with other jobs: times are indicative only)",
            f"- versions: bioplausible {__version__}, torch {torch.__version__}",
            f"- command: `{command}`",
            "- metric: final-epoch test figures (never best-on-test); mean ± std over seeds",
            "",
            table(runs, regression),
            "",
            "Trivial baselines: " + "; ".join(f"{k} {v:.3g}" for k, v in base.items()),
            "",
            PAPER,
        ]
        path = RESULTS / f"dll-sequences-{task}-{stamp}"
        path.with_suffix(".md").write_text("\n".join(md) + "\n")
        path.with_suffix(".json").write_text(json.dumps(
            {"task": task, "command": command, "machine": describe_device("cpu"), "baselines": base, "runs": runs},
            indent=1))
        print("\n".join(md))


if __name__ == "__main__":
    main()
