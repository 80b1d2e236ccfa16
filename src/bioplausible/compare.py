"""Train several rules on the same model, data and seeds, and put them side by side."""

from __future__ import annotations

import csv
import multiprocessing
import statistics
import sys
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Iterator

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from .algorithms import ALGORITHMS  # noqa: E402
from .config import TrainConfig  # noqa: E402
from .data import load_dataset  # noqa: E402
from .errors import ConfigError  # noqa: E402
from .training import RunResult, train, train_or_resume  # noqa: E402

DEFAULT_ALGOS = ("bp", "fa", "dfa", "kp", "wm")


@dataclass
class ComparisonRow:
    algo: str
    flags: str
    test_acc: list[float]
    epoch_seconds: list[float]
    peak_memory_mb: list[float]
    time_vs_bp: float | None = None

    def cells(self) -> dict[str, str]:
        return {
            "algorithm": self.algo,
            "C1 C2 C3": " ".join(self.flags),
            "test acc (%)": _mean_std([100 * a for a in self.test_acc], 2),
            "s / epoch": _mean_std(self.epoch_seconds, 3),
            "time / BP": "—" if self.time_vs_bp is None else f"{self.time_vs_bp:.2f}x",
            "peak mem (MB)": f"{max(self.peak_memory_mb):.0f}",
        }


def split_rule_overrides(items: list[str]) -> tuple[list[str], dict[str, list[str]]]:
    """``--set`` strings for every rule, and those for one rule only, written ``rule:key=value``
    (``--set sal:lr=1e-3 --set pc:algo.variant=fpa``): rules differ in their options and in the
    learning rates they tolerate, and a side-by-side table needs each at its own."""
    shared, per_rule = [], {}
    for item in items:
        key = item.partition("=")[0]
        rule, colon, rest = key.partition(":")
        if colon:
            per_rule.setdefault(rule.strip(), []).append(item.split(":", 1)[1])
        else:
            shared.append(item)
    return shared, per_rule


def train_all(configs: list[TrainConfig], jobs: int = 1, resume: bool = False) -> Iterator[RunResult]:
    """Train every configuration; with ``jobs > 1`` that many at once, each in its own process;
    with ``resume``, continue the runs already in the configurations' ``out`` directories
    (:func:`~bioplausible.training.train_or_resume`).

    Concurrent runs share the processor or GPU, so their seconds per epoch are not speed figures;
    on a GPU, which one small model leaves mostly idle, they are how a table of many rules and seeds
    fits in the time of a few runs. Yields the results in the order of ``configs``, each as soon
    as it and those before it are done, so a caller can record every finished run."""
    if jobs < 1:
        raise ConfigError(f"'jobs' must be >= 1, got {jobs}")
    if jobs == 1:
        cache: dict[tuple, object] = {}
        for config in configs:
            key = (config.dataset, config.data_dir, config.val_split, config.seed)
            if key not in cache:  # the same data for every rule; loaded once per seed
                cache[key] = load_dataset(*key)
            yield _train_and_report(config, resume, cache[key])
        return
    # spawn, not fork: a forked child of a process that touched CUDA cannot use it.
    with ProcessPoolExecutor(jobs, mp_context=multiprocessing.get_context("spawn")) as pool:
        yield from pool.map(_train_and_report, configs, [resume] * len(configs))


def _train_and_report(config: TrainConfig, resume: bool, data=None) -> RunResult:
    return _report((train_or_resume if resume else train)(config, data=data))


def _report(result: RunResult) -> RunResult:
    print(f"  {result.summary['algo']:<6} seed {result.summary['seed']}: test "
          f"{100 * result.summary['final']['test_acc']:.2f}%  {result.summary['mean_epoch_seconds']:.3f} s/epoch",
          file=sys.stderr, flush=True)
    return result


def compare(algos: list[str], base: TrainConfig, seeds: list[int], out_dir: Path | None = None,
            per_rule: dict[str, list[str]] | None = None, jobs: int = 1,
            resume: bool = False) -> tuple[list[ComparisonRow], Path]:
    """Run every ``algo`` x ``seed`` with ``base`` otherwise unchanged, except for the ``key=value``
    overrides ``per_rule[algo]`` of that rule; ``jobs`` runs at once (see :func:`train_all`, and
    then no time ratio is given); with ``resume``, continue an interrupted comparison in
    ``out_dir``; write CSV, Markdown, PNG."""
    per_rule = per_rule or {}
    if not seeds:
        raise ConfigError("'seeds' must name at least one seed")
    for algo in algos:
        ALGORITHMS.get(algo)
    if resume and out_dir is None:
        raise ConfigError("'resume' needs the directory of the comparison to continue ('--out')")
    for algo in per_rule:
        if algo not in algos:
            raise ConfigError(f"'--set {algo}:...' names a rule that is not compared; compared: {', '.join(algos)}")
    configs = {algo: base.with_overrides(per_rule.get(algo, [])) for algo in algos}
    for algo, config in configs.items():  # a misspelt option fails now, not after hours of other runs
        config.validate()
        ALGORITHMS.get(algo).Hyperparameters.from_dict(algo, config.algo_args)
    print(f"comparing {', '.join(algos)} on {base.model}/{base.dataset}, {base.epochs} epochs, "
          f"seeds {','.join(map(str, seeds))}", file=sys.stderr)
    out_dir = out_dir or Path("runs") / f"compare-{base.model}-{base.dataset}-{datetime.now():%Y%m%d-%H%M%S}"
    out_dir.mkdir(parents=True, exist_ok=True)
    pairs = [(algo, seed) for algo in algos for seed in seeds]
    results = list(train_all([configs[algo].replace(algo=algo, seed=seed, out=str(out_dir / f"{algo}-s{seed}"),
                                                    progress=False) for algo, seed in pairs], jobs, resume))
    runs: dict[str, list[RunResult]] = {}
    for (algo, _), result in zip(pairs, results):
        runs.setdefault(algo, []).append(result)
    rows = comparison_rows({algo: [r.summary for r in results] for algo, results in runs.items()}, jobs == 1)
    write_tables(rows, base, seeds, out_dir, per_rule, jobs)
    plot_learning_curves(runs, base, out_dir / "learning_curves.png")
    return rows, out_dir


def comparison_rows(summaries: dict[str, list[dict]], time_ratio: bool = True) -> list[ComparisonRow]:
    """One row per rule from its runs' ``summary.json`` contents; ``time_ratio`` only for runs
    that had the machine to themselves in turn."""
    rows = [
        ComparisonRow(
            algo=algo,
            flags=runs[0]["flags"],
            test_acc=[s["final"]["test_acc"] for s in runs],
            epoch_seconds=[s["mean_epoch_seconds"] for s in runs],
            peak_memory_mb=[s["final"]["peak_memory_mb"] for s in runs],
        )
        for algo, runs in summaries.items()
    ]
    if "bp" in summaries and time_ratio:
        bp_time = statistics.mean(next(r for r in rows if r.algo == "bp").epoch_seconds)
        for row in rows:
            row.time_vs_bp = statistics.mean(row.epoch_seconds) / bp_time
    return rows


def markdown_table(rows: list[ComparisonRow]) -> str:
    cells = [row.cells() for row in rows]
    header = list(cells[0])
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(c[h] for h in header) + " |" for c in cells]
    return "\n".join(lines)


def write_tables(rows: list[ComparisonRow], base: TrainConfig, seeds: list[int], out_dir: Path,
                 per_rule: dict[str, list[str]], jobs: int = 1) -> None:
    with open(out_dir / "results.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["algorithm", "flags", "seed", "test_acc", "epoch_seconds", "time_vs_bp", "peak_memory_mb"])
        for row in rows:
            for seed, acc, sec, mem in zip(seeds, row.test_acc, row.epoch_seconds, row.peak_memory_mb):
                writer.writerow([row.algo, row.flags, seed, acc, sec, row.time_vs_bp, mem])
    heading = (f"# {base.model} on {base.dataset}: {base.epochs} epochs, batch {base.batch_size}, "
               f"{base.optimizer} lr {base.lr}, seeds {','.join(map(str, seeds))}\n\n"
               "Final-epoch test accuracy, mean ± std over seeds.\n\n")
    if jobs > 1:
        heading += f"{jobs} runs at a time on {base.device}: seconds per epoch are not speed figures.\n\n"
    if per_rule:
        heading += "Per-rule settings: " + "; ".join(f"{r}: {', '.join(v)}" for r, v in per_rule.items()) + ".\n\n"
    (out_dir / "results.md").write_text(heading + markdown_table(rows) + "\n")


def plot_learning_curves(runs: dict[str, list[RunResult]], base: TrainConfig, path: Path) -> None:
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(10, 4))
    for algo, results in runs.items():
        epochs = [m["epoch"] for m in results[0].history]
        for key, ax in (("train_loss", ax_loss), ("test_acc", ax_acc)):
            curves = [[m[key] for m in r.history] for r in results]
            mean = [statistics.mean(v) for v in zip(*curves)]
            ax.plot(epochs, mean, label=algo)
    ax_loss.set(xlabel="epoch", ylabel="train loss", yscale="log", title="training loss")
    ax_acc.set(xlabel="epoch", ylabel="test accuracy", title="test accuracy")
    ax_acc.legend()
    fig.suptitle(f"{base.model} on {base.dataset} (mean over seeds)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _mean_std(values: list[float], digits: int) -> str:
    if len(values) == 1:
        return f"{values[0]:.{digits}f}"
    return f"{statistics.mean(values):.{digits}f} ± {statistics.stdev(values):.{digits}f}"
