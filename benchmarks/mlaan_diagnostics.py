"""Per-module diagnostics of local learning (MLAAN paper, Figures 5 and 6): linear-probe accuracy
of every module's output, and its linear CKA similarity (Kornblith et al. 2019) to the same
module of a BP-trained network of the same architecture.

    python benchmarks/mlaan_diagnostics.py                                    # quick: digits, ResNet-14
    python benchmarks/mlaan_diagnostics.py --dataset fashion_mnist --model resnet32 --width 16 \
        --epochs 10 --batch-size 128 --lr 0.1 --optimizer sgd --limit 0     # the paper's setting, on CPU data

Trains BP, DGL and MLAAN (DGL base) with the same settings (or takes existing run directories with
``--runs bp=DIR dgl=DIR ...``, whose checkpoints the trainer wrote), then, with the network frozen:

* probe: module outputs average-pooled to 2×2 (flat outputs as they are), a logistic regression
  fit on ``--probe-train`` training examples and scored on ``--probe-test`` test examples;
* CKA: ``‖Yᵀ X‖²_F / (‖Xᵀ X‖_F ‖Yᵀ Y‖_F)`` on centred, flattened module outputs of the probe's
  test examples, against BP's module at the same position (BP split with the same splitter).

Writes ``<out>/diagnostics.{json,md,png}`` (default ``benchmarks/results/mlaan-diagnostics-<date>``).
"""

from __future__ import annotations

import argparse
import json
import sys
from datetime import datetime, timezone
from pathlib import Path

import torch
import torch.nn.functional as F

from bioplausible import load_config
from bioplausible.algorithms.auxiliary import split_modules
from bioplausible.training.trainer import Trainer, describe_device

RESULTS = Path(__file__).resolve().parent / "results"


@torch.no_grad()
def module_outputs(model, modules: int, x: torch.Tensor, batch: int = 500) -> list[torch.Tensor]:
    """Outputs of the ``modules`` modules of ``model`` (eval mode), computed in batches."""
    model.eval()
    units = split_modules(model, modules)
    chunks = []
    for i in range(0, len(x), batch):
        h, outs = x[i:i + batch], []
        for unit in units:
            for block in unit:
                h = block(h)
            outs.append(h)
        chunks.append(outs)
    return [torch.cat([c[j] for c in chunks]) for j in range(len(units))]


def probe_features(h: torch.Tensor) -> torch.Tensor:
    return F.adaptive_avg_pool2d(h, 2).flatten(1) if h.dim() == 4 else h.flatten(1)


def linear_cka(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.flatten(1).double(), b.flatten(1).double()
    a, b = a - a.mean(0), b - b.mean(0)
    return ((b.T @ a).norm() ** 2 / ((a.T @ a).norm() * (b.T @ b).norm())).item()


def probe(train_h, train_y, test_h, test_y) -> float:
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    scaler = StandardScaler().fit(probe_features(train_h).numpy())
    clf = LogisticRegression(max_iter=500).fit(scaler.transform(probe_features(train_h).numpy()), train_y.numpy())
    return float(clf.score(scaler.transform(probe_features(test_h).numpy()), test_y.numpy()))


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="digits")
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--model", default="resnet")
    parser.add_argument("--depth", type=int, default=14)
    parser.add_argument("--width", type=int, default=8)
    parser.add_argument("--modules", type=int, default=None, help="K; default one module per block")
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--optimizer", default="adam")
    parser.add_argument("--limit", type=int, default=0, help="limit_train_batches per epoch (0: all)")
    parser.add_argument("--probe-train", type=int, default=2000)
    parser.add_argument("--probe-test", type=int, default=1000)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=None)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    out = Path(args.out or RESULTS / f"mlaan-diagnostics-{datetime.now(timezone.utc):%Y-%m-%d}")
    out.mkdir(parents=True, exist_ok=True)

    model_args = {"width": args.width, **({"depth": args.depth} if args.model == "resnet" else {})}
    rules = {"bp": ("bp", {}), "dgl": ("dgl", {}), "mlaan": ("mlaan", {"base": "dgl"})}
    results, features = {}, {}
    for label, (algo, algo_args) in rules.items():
        if args.modules and algo != "bp":
            algo_args = {**algo_args, "modules": args.modules}
        config = load_config(algo=algo, model=args.model, dataset=args.dataset, data_dir=args.data_dir,
                             model_args=model_args, algo_args=algo_args, epochs=args.epochs, batch_size=args.batch_size,
                             lr=args.lr, optimizer=args.optimizer, seed=args.seed, progress=False, num_threads=args.threads,
                             limit_train_batches=args.limit or None,
                             out=str(Path(__file__).resolve().parents[1] / "runs" / "mlaan-diagnostics" / label))
        trainer = Trainer(config)
        summary = trainer.fit().summary
        model = trainer.model
        k = args.modules or len(model.blocks) - 1
        (xtr, ytr), (xte, yte) = trainer.data.train, trainer.data.test
        xtr, ytr = xtr[:args.probe_train], ytr[:args.probe_train]
        xte, yte = xte[:args.probe_test], yte[:args.probe_test]
        htr, hte = module_outputs(model, k, xtr), module_outputs(model, k, xte)
        features[label] = hte
        results[label] = {"test_acc": summary["final"]["test_acc"],
                          "probe_acc": [probe(a, ytr, b, yte) for a, b in zip(htr[:-1], hte[:-1])]}
        print(label, "test acc", results[label]["test_acc"], "probe", [round(p, 3) for p in results[label]["probe_acc"]],
              flush=True)
    for label in results:
        results[label]["cka_to_bp"] = [linear_cka(a, b) for a, b in zip(features[label][:-1], features["bp"][:-1])]
        results[label]["mean_cka_to_bp"] = sum(results[label]["cka_to_bp"]) / len(results[label]["cka_to_bp"])

    meta = {"command": "python " + " ".join(sys.argv), "device": describe_device("cpu"),
            "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"), **vars(args)}
    (out / "diagnostics.json").write_text(json.dumps({"meta": meta, "results": results}, indent=1))
    lines = [f"# Per-module linear probes and CKA to BP ({args.model}, {args.dataset})", "",
             f"Device: {meta['device']}. Date: {meta['date']}. Command: `{meta['command']}`.", "",
             "| rule | test acc | probe acc per module (first → last but one) | mean CKA to BP |", "|---|---|---|---|"]
    for label, r in results.items():
        lines.append(f"| {label} | {r['test_acc']:.4f} | {' '.join(f'{p:.3f}' for p in r['probe_acc'])} | "
                     f"{r['mean_cka_to_bp']:.3f} |")
    (out / "diagnostics.md").write_text("\n".join(lines) + "\n")

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for label, r in results.items():
        axes[0].plot(range(1, len(r["probe_acc"]) + 1), r["probe_acc"], "o-", label=label.upper())
        if label != "bp":
            axes[1].plot(range(1, len(r["cka_to_bp"]) + 1), r["cka_to_bp"], "o-",
                         label=f"{label.upper()} (mean {r['mean_cka_to_bp']:.2f})")
    axes[0].set(xlabel="module", ylabel="linear-probe test accuracy", title="Layer-wise linear separability (Fig. 5)")
    axes[1].set(xlabel="module", ylabel="linear CKA to BP", title="Similarity to BP (Fig. 6)")
    for ax in axes:
        ax.legend()
    fig.tight_layout()
    fig.savefig(out / "diagnostics.png", dpi=110)
    print("\n".join(lines))


if __name__ == "__main__":
    main()
