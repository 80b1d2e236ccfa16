"""Diagnostics of EP / DEP / DBPTT on one batch (issue #5): per-tensor cosine between the rule's
update and the BPTT gradient, mean |s| and fraction of active hidden units in the free phase
(the DEP paper's section 3.4), free steps to reach ``max|Δs| < tol``, accuracy with early
stopping vs fixed T1, and a PNG of hidden-state trajectories for a few examples.

    python benchmarks/ep_diagnostics.py --config configs/ep_mnist.yaml --data-dir ../shared/datasets
    python benchmarks/ep_diagnostics.py --run-dir /tmp/bioplausible-table2/ep_mnist-s0   # a trained run

Without ``--run-dir`` the rule is diagnosed at initialisation. Writes
``benchmarks/results/ep-diagnostics-<algo>-<dataset>-<init|trained>.{json,png}``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from datetime import datetime
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402

from bioplausible.config import load_config  # noqa: E402
from bioplausible.training import Trainer  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"


def plot_trajectories(rule, x: torch.Tensor, path: Path, title: str, units: int = 12) -> None:
    """Hidden states of the first hidden layer over the free phase, one panel per example."""
    trajectory = rule.free_trajectory(x)
    path_states = torch.stack([states[0] for states in trajectory])  # [T, B, width]
    fig, axes = plt.subplots(1, len(x), figsize=(3.2 * len(x), 2.8), sharey=True)
    for i, ax in enumerate(axes):
        ax.plot(range(1, len(trajectory) + 1), path_states[:, i, :units].cpu().numpy(), linewidth=1)
        ax.set_title(f"example {i}")
        ax.set_xlabel("free step")
    axes[0].set_ylabel(f"s (first {units} hidden units)")
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def accuracy(trainer: Trainer, tol: float) -> tuple[float, float, float]:
    """Test accuracy, mean free steps per evaluation batch and seconds, with early stop at ``tol``
    (capped at 5·T1) or the fixed T1 (tol = 0)."""
    rule = trainer.rule
    saved_tol, saved_steps = rule.hp.tol, rule.hp.free_steps
    rule.hp.tol, rule.hp.free_steps = tol, saved_steps * 5 if tol else saved_steps
    steps = []
    original = rule.relax

    def counting(*args, **kwargs):
        out = original(*args, **kwargs)
        steps.append(rule.last_steps)
        return out

    rule.relax = counting
    try:
        start = time.perf_counter()
        acc = trainer.evaluate(trainer.data.test, "test")["test_acc"]
        return acc, sum(steps) / len(steps), time.perf_counter() - start
    finally:
        del rule.relax
        rule.hp.tol, rule.hp.free_steps = saved_tol, saved_steps


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--config", help="a preset, diagnosed at initialisation")
    source.add_argument("--run-dir", help="a trained run directory (its last checkpoint)")
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--tol", type=float, default=1e-4)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--batch", type=int, default=64)
    args = parser.parse_args(argv)

    torch.set_num_threads(args.threads)
    if args.run_dir:
        trainer, stage = Trainer.from_run_dir(args.run_dir), "trained"
    else:
        config = load_config(args.config, data_dir=args.data_dir, num_threads=args.threads, out="/tmp/bioplausible-diagnostics")
        trainer, stage = Trainer(config), "init"
    rule, cfg = trainer.rule, trainer.config
    x, y = (t[: args.batch] for t in trainer.data.test)
    record = {
        "date": datetime.now().isoformat(timespec="seconds"),
        "command": "python benchmarks/ep_diagnostics.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "algo": cfg.algo, "dataset": cfg.dataset, "stage": stage, "epochs_trained": len(trainer.history),
        "cosine_with_bptt": rule.gradient_cosines(x, y),
        "free_phase": rule.free_phase_statistics(x),
        f"free_steps_to_tol_{args.tol:g}": rule.steps_to_converge(x, args.tol, max_steps=10 * rule.hp.free_steps),
    }
    fixed = accuracy(trainer, 0.0)
    early = accuracy(trainer, args.tol)
    record["test_acc_fixed_T1"] = {"acc": fixed[0], "mean_steps": fixed[1], "seconds": fixed[2]}
    record[f"test_acc_early_stop_{args.tol:g}"] = {"acc": early[0], "mean_steps": early[1], "seconds": early[2]}
    RESULTS.mkdir(parents=True, exist_ok=True)
    stem = RESULTS / f"ep-diagnostics-{cfg.algo}-{cfg.dataset}-{stage}"
    plot_trajectories(rule, x[:4], stem.with_suffix(".png"), f"{cfg.algo} on {cfg.dataset} ({stage}): free-phase hidden states")
    stem.with_suffix(".json").write_text(json.dumps(record, indent=2))
    print(json.dumps(record, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
