"""Reproduce the SAL paper's Table 1, Figures 2 and 4 and its speed claim on the 3×200 ReLU MLP,
batch 256.

    python benchmarks/sal_reproduce.py table1 --data-dir ../shared/datasets --epochs 3 --seeds 0
    python benchmarks/sal_reproduce.py figure2 --data-dir ../shared/datasets --datasets fashion_mnist
    python benchmarks/sal_reproduce.py figure4 --data-dir ../shared/datasets --datasets fashion_mnist
    python benchmarks/sal_reproduce.py speed --data-dir ../shared/datasets --limit-batches 60

``table1``: bp (SGD), fa, wm, kp and sal with the same optimizer, learning rate and epochs on
MNIST and Fashion-MNIST; final-epoch test accuracy next to the paper's numbers. The SAL run of
the first seed also records :meth:`SelfAssemblingLearning.diagnostics` per epoch and plots
them. ``speed``: SAL epoch time ÷ BP's at downstream ratios 1, 2, 5, 8, interleaved in one run
(median over repeats). ``figure2``: downstream width ratio × D_d; ``figure4``: which of W̄, V, V̄
are plastic, against a linear model (both on the first of ``--datasets``; the paper used CIFAR-10,
SVHN and STL-10, which are not on these machines). All write
``benchmarks/results/sal-<what>-<date>.{json,md}`` (and a PNG) with the machine, date, torch
version and the command.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from datetime import datetime
from pathlib import Path

import torch

from bioplausible import TrainConfig, __version__
from bioplausible.algorithms.sal import plot_diagnostics
from bioplausible.data import load_dataset
from bioplausible.errors import DivergenceError
from bioplausible.training import Trainer
from bioplausible.training.trainer import describe_device

RESULTS = Path(__file__).resolve().parent / "results"
PAPER = {  # Table 1, mean of 5 runs
    "mnist": {"bp": 98.44, "fa": 97.80, "wm": 98.40, "kp": 98.45, "sal": 98.85},
    "fashion_mnist": {"bp": 96.80, "fa": 95.75, "wm": 96.00, "kp": 96.13, "sal": 97.23},
}


def base_config(args, dataset: str) -> TrainConfig:
    return TrainConfig(model="mlp", model_args={"hidden": [200, 200, 200]}, dataset=dataset, data_dir=args.data_dir,
                       batch_size=256, epochs=args.epochs, optimizer="sgd", lr=args.lr, momentum=args.momentum,
                       num_threads=args.threads, progress=False, limit_train_batches=args.limit_batches,
                       out="/tmp/bioplausible-sal-benchmark")


def table1(args) -> dict:
    rows, diagnostics_plots = [], []
    for dataset in args.datasets.split(","):
        for seed in map(int, args.seeds.split(",")):
            data = load_dataset(dataset, args.data_dir, 0.0, seed)
            for algo in args.algos.split(","):
                history: list[dict] = []
                callbacks = []
                if algo == "sal" and seed == int(args.seeds.split(",")[0]):
                    callbacks = [lambda trainer, metrics: history.append(trainer.rule.diagnostics())]
                config = base_config(args, dataset).replace(algo=algo, seed=seed)
                trainer = Trainer(config, data=data, callbacks=callbacks)
                if callbacks:
                    history.append(trainer.rule.diagnostics())  # epoch 0: the random wiring
                try:
                    summary = trainer.fit().summary
                    row = {"test_acc": 100 * summary["final"]["test_acc"], "epoch_seconds": summary["mean_epoch_seconds"]}
                except DivergenceError as error:
                    row = {"test_acc": None, "diverged": str(error)}
                rows.append({"dataset": dataset, "algo": algo, "seed": seed, **row})
                print(rows[-1], file=sys.stderr)
                if len(history) > 1:
                    png = RESULTS / f"sal-diagnostics-{dataset}-{datetime.now():%Y%m%d}.png"
                    plot_diagnostics(history, png, title=f"SAL on {dataset}, 3×200 MLP, seed {seed}")
                    diagnostics_plots.append({"dataset": dataset, "png": png.name, "per_epoch": history})
    lines = [f"| dataset | rule | test acc (%) measured, seeds {args.seeds} | paper (5 runs) | s / epoch |", "|---|---|---|---|---|"]
    for dataset in args.datasets.split(","):
        for algo in args.algos.split(","):
            mine = [r for r in rows if r["dataset"] == dataset and r["algo"] == algo]
            accs = [r["test_acc"] for r in mine if r["test_acc"] is not None]
            acc = "diverged" if not accs else f"{statistics.mean(accs):.2f}" + (f" ± {statistics.stdev(accs):.2f}" if len(accs) > 1 else "")
            secs = [r["epoch_seconds"] for r in mine if "epoch_seconds" in r]
            lines.append(f"| {dataset} | {algo} | {acc} | {PAPER[dataset][algo]:.2f} | "
                         f"{statistics.mean(secs) if secs else float('nan'):.2f} |")
    return {"rows": rows, "diagnostics": diagnostics_plots, "table": lines}


def speed(args) -> dict:
    data = load_dataset("mnist", args.data_dir)
    # A small learning rate: timing does not depend on it, and no variant may diverge mid-epoch.
    base = base_config(args, "mnist").replace(epochs=1, lr=1e-4)
    variants = [("bp", {})] + [("sal", {"downstream_ratio": r}) for r in (1, 2, 5, 8)]
    times: dict[str, list[float]] = {}
    for repeat in range(args.repeats):
        for algo, algo_args in variants:
            key = algo if not algo_args else f"sal r={algo_args['downstream_ratio']}"
            trainer = Trainer(base.replace(algo=algo, algo_args=algo_args), data=data)
            times.setdefault(key, []).append(trainer.run_epoch(0)["epoch_seconds"])
            print(f"repeat {repeat + 1} {key}: {times[key][-1]:.2f} s", file=sys.stderr)
    bp = statistics.median(times["bp"])
    lines = ["| rule | s / epoch (median) | time / BP |", "|---|---|---|"]
    lines += [f"| {k} | {statistics.median(v):.3f} | {statistics.median(v) / bp:.2f}x |" for k, v in times.items()]
    return {"times": times, "table": lines}


def _sal_run(args, dataset: str, data, seed: int, algo: str = "sal", model_args: dict | None = None,
             **algo_args) -> dict:
    """Final test accuracy, the per-epoch curve and the epoch time of one run (or its divergence)."""
    config = base_config(args, dataset).replace(algo=algo, seed=seed, algo_args=algo_args)
    if model_args is not None:
        config = config.replace(model_args=model_args)
    try:
        result = Trainer(config, data=data).fit()
        return {"test_acc": 100 * result.summary["final"]["test_acc"],
                "curve": [100 * m["test_acc"] for m in result.history],
                "epoch_seconds": result.summary["mean_epoch_seconds"]}
    except DivergenceError as error:
        return {"test_acc": None, "diverged": str(error)}


def _save(fig, stem: str) -> Path:
    """Write ``fig`` as ``benchmarks/results/<stem>-<date>.png`` and close it."""
    import matplotlib.pyplot as plt

    fig.tight_layout()
    png = RESULTS / f"{stem}-{datetime.now():%Y%m%d}.png"
    fig.savefig(png, dpi=120)
    plt.close(fig)
    return png


def _cell(accs: list[float | None]) -> str:
    accs = [a for a in accs if a is not None]
    if not accs:
        return "diverged"
    return f"{statistics.mean(accs):.2f}" + (f" ± {statistics.stdev(accs):.2f}" if len(accs) > 1 else "")


def figure2(args) -> dict:
    """Downstream width ratio × downstream activation D_d (paper Figure 2: CIFAR-10, SVHN, STL-10;
    here the first of ``--datasets``), with SGD on the same MLP as the reference line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    dataset, ratios = args.datasets.split(",")[0], [float(r) for r in args.ratios.split(",")]
    seeds = list(map(int, args.seeds.split(",")))
    data = {seed: load_dataset(dataset, args.data_dir, 0.0, seed) for seed in seeds}
    rows = [{"activation": "sgd", "ratio": None, "seed": seed, **_sal_run(args, dataset, data[seed], seed, "bp")}
            for seed in seeds]
    for activation in ("identity", "relu", "tanh"):
        for ratio in ratios:
            for seed in seeds:
                row = _sal_run(args, dataset, data[seed], seed, downstream_ratio=ratio, downstream_activation=activation,
                               width_scaled_rates=args.width_scaled)
                rows.append({"activation": activation, "ratio": ratio, "seed": seed, **row})
                print({k: v for k, v in rows[-1].items() if k != "curve"}, file=sys.stderr)
    sgd = _cell([r["test_acc"] for r in rows if r["activation"] == "sgd"])
    lines = [f"Dataset {dataset}; SGD (bp) on the same MLP: {sgd}%.", "",
             "| D_d | " + " | ".join(f"ratio {r:g}" for r in ratios) + " |", "|---|" + "---|" * len(ratios)]
    fig, ax = plt.subplots(figsize=(5, 3.5))
    for activation in ("identity", "relu", "tanh"):
        cells, means = [], []
        for ratio in ratios:
            accs = [r["test_acc"] for r in rows if r["activation"] == activation and r["ratio"] == ratio]
            cells.append(_cell(accs))
            ok = [a for a in accs if a is not None]
            means.append(statistics.mean(ok) if ok else float("nan"))
        lines.append(f"| {activation} | " + " | ".join(cells) + " |")
        ax.plot(ratios, means, marker="o", label=f"SAL, D_d = {activation}")
    sgd_accs = [r["test_acc"] for r in rows if r["activation"] == "sgd" and r["test_acc"] is not None]
    if sgd_accs:
        ax.axhline(statistics.mean(sgd_accs), color="gray", linestyle="--", label="SGD")
    ax.set(xscale="log", xlabel="downstream width / upstream width", ylabel="test accuracy (%)",
           title=f"SAL downstream width, {dataset}")
    ax.legend(fontsize=8)
    png = _save(fig, f"sal-figure2{'-width-scaled' if args.width_scaled else ''}-{dataset}")
    return {"rows": rows, "table": lines + ["", f"Plot: {png.name}"]}


ABLATIONS = {  # paper Figure 4: which connections besides W are plastic
    "W": {"freeze_wbar": True, "freeze_v": True, "freeze_vbar": True},
    "W, V̄": {"freeze_wbar": True, "freeze_v": True},
    "W, W̄": {"freeze_v": True, "freeze_vbar": True},
    "W, V": {"freeze_wbar": True, "freeze_vbar": True},
    "W, W̄, V̄": {"freeze_v": True},
    "W, W̄, V, V̄ (all)": {},
}


def figure4(args) -> dict:
    """Plasticity ablation (paper Figure 4, CIFAR-10; here the first of ``--datasets``): test
    accuracy per epoch with only some of W̄, V, V̄ plastic, and a linear model trained with SGD."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    dataset = args.datasets.split(",")[0]
    seeds = list(map(int, args.seeds.split(",")))
    data = {seed: load_dataset(dataset, args.data_dir, 0.0, seed) for seed in seeds}
    rows = []
    for label, switches in ABLATIONS.items():
        for seed in seeds:
            rows.append({"variant": label, "seed": seed, **_sal_run(args, dataset, data[seed], seed, **switches)})
            print({k: v for k, v in rows[-1].items() if k != "curve"}, file=sys.stderr)
    for seed in seeds:
        rows.append({"variant": "linear (SGD)", "seed": seed,
                     **_sal_run(args, dataset, data[seed], seed, "bp", model_args={"hidden": []})})
    lines = [f"Dataset {dataset}.", "", "| plastic | test acc (%) |", "|---|---|"]
    fig, ax = plt.subplots(figsize=(5, 3.5))
    for label in [*ABLATIONS, "linear (SGD)"]:
        mine = [r for r in rows if r["variant"] == label]
        lines.append(f"| {label} | {_cell([r['test_acc'] for r in mine])} |")
        curves = [r["curve"] for r in mine if "curve" in r]
        if curves:
            ax.plot(range(1, len(curves[0]) + 1), [statistics.mean(v) for v in zip(*curves)], marker="o", label=label)
    ax.set(xlabel="epoch", ylabel="test accuracy (%)", title=f"SAL plasticity ablation, {dataset}")
    ax.legend(fontsize=7)
    png = _save(fig, f"sal-figure4-{dataset}")
    return {"rows": rows, "table": lines + ["", f"Plot: {png.name}"]}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("what", choices=["table1", "speed", "figure2", "figure4"])
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--datasets", default="mnist,fashion_mnist")
    parser.add_argument("--algos", default="bp,fa,wm,kp,sal")
    parser.add_argument("--seeds", default="0")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--lr", type=float, default=0.002)
    parser.add_argument("--momentum", type=float, default=0.9)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--limit-batches", type=int, default=None, help="cap batches per epoch")
    parser.add_argument("--ratios", default="0.5,1,2,5,8", help="figure2: downstream width ratios")
    parser.add_argument("--width-scaled", action="store_true",
                        help="figure2: divide the cross-stream rates by the width ratio (algo.width_scaled_rates)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)

    result = {"table1": table1, "speed": speed, "figure2": figure2, "figure4": figure4}[args.what](args)
    now = datetime.now()
    command = " ".join(["python", "benchmarks/sal_reproduce.py", *(argv or sys.argv[1:])])
    meta = {"date": now.isoformat(timespec="seconds"), "machine": describe_device("cpu"), "torch": torch.__version__,
            "bioplausible": __version__, "command": command}
    RESULTS.mkdir(exist_ok=True)
    stem = RESULTS / f"sal-{args.what}{'-width-scaled' if args.width_scaled else ''}-{now:%Y%m%d}"
    stem.with_suffix(".json").write_text(json.dumps({**meta, **result}, indent=2))
    header = [f"# SAL {args.what}: 3×200 ReLU MLP, batch 256, SGD lr {args.lr} momentum {args.momentum}, "
              f"{args.epochs} epoch(s)", "", f"{meta['date']} · {meta['machine']} · torch {meta['torch']}",
              f"· command: `{command}`", ""]
    stem.with_suffix(".md").write_text("\n".join(header + result["table"]) + "\n")
    print("\n".join(header + result["table"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
