"""Throughput of data-parallel and layer-parallel training on 2 ranks vs one process (issue #9).

    python benchmarks/distributed.py [--steps 40] [--repeats 2] [--device cpu]

Every configuration runs in a fresh process (or a fresh ``torchrun`` of 2 ranks) through the
ordinary trainer on MNIST-shaped synthetic data (784 inputs, 10 classes; throughput does not
depend on the values) and the 3x1024 MLP (784-1024-1024-1024-10, ReLU), batch 128 per rank.
Each runs two epochs of ``--steps`` steps and reports the second epoch's training samples per
second (all ranks together). Compared:

* layer-parallel SLL on 2 ranks (one stage each, 1 thread per rank) vs one process with 1 and
  with 2 threads; the stage balance (measured unit costs and each stage's share) is recorded;
* data-parallel BP, FA, SLL and EP on 2 ranks (1 thread each) vs one process with 2 threads
  (EP runs fewer steps: its relaxation costs ~30 forward passes per step).

Writes ``benchmarks/results/distributed-<date>.{json,md}`` with the machine, the load average
before and after, and the exact command.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
from datetime import datetime, timezone
from pathlib import Path

HERE = Path(__file__).resolve().parent
HIDDEN = [1024, 1024, 1024]
BATCH = 128


def synthetic_data(n_train: int):
    import torch

    from bioplausible.data.datasets import DataSplits

    g = torch.Generator().manual_seed(0)
    train = (torch.randn(n_train, 1, 28, 28, generator=g), torch.randint(0, 10, (n_train,), generator=g))
    test = (torch.randn(1000, 1, 28, 28, generator=g), torch.randint(0, 10, (1000,), generator=g))
    return DataSplits("mnist-shaped", train, test, None, (1, 28, 28), 10)


def run_one(spec: dict) -> None:
    """One configuration (in this process, or this rank of a torchrun): write its result JSON."""
    import torch

    from bioplausible.config import TrainConfig
    from bioplausible.training import Trainer
    from bioplausible.training.trainer import describe_device

    ranks = int(os.environ.get("WORLD_SIZE", "1"))
    steps = spec["steps"]
    config = TrainConfig(algo=spec["algo"], model="mlp", dataset="mnist", epochs=2, batch_size=BATCH,
                         lr=1e-3, model_args={"hidden": HIDDEN, "activation": "relu"},
                         num_threads=spec["threads"], device=spec["device"], progress=False,
                         layer_parallel=spec["layer_parallel"], limit_train_batches=steps,
                         out=spec["out"])
    # Layer parallelism: rank 0 reads every batch; data parallelism: each rank its shard.
    n_train = steps * BATCH * (1 if spec["layer_parallel"] else ranks)
    result = Trainer(config, data=synthetic_data(n_train)).fit()
    if int(os.environ.get("RANK", "0")) == 0:
        last = result.history[-1]
        Path(spec["result"]).write_text(json.dumps({
            "samples_per_second": last["samples_per_second"],
            "epoch_seconds": last["epoch_seconds"],
            "threads_per_rank": torch.get_num_threads(),
            "distributed": result.summary.get("distributed"),
            "device": describe_device(config.device),
        }))


CONFIGS = [  # label, algo, ranks, threads (None: cores / ranks), layer_parallel
    ("sll 1 process, 1 thread", "sll", 1, 1, False),
    ("sll 1 process, 2 threads", "sll", 1, 2, False),
    ("sll layer-parallel, 2 ranks", "sll", 2, None, True),
    ("bp 1 process, 2 threads", "bp", 1, 2, False),
    ("bp data-parallel, 2 ranks", "bp", 2, None, False),
    ("fa 1 process, 2 threads", "fa", 1, 2, False),
    ("fa data-parallel, 2 ranks", "fa", 2, None, False),
    ("sll data-parallel, 2 ranks", "sll", 2, None, False),
    ("ep 1 process, 2 threads", "ep", 1, 2, False),
    ("ep data-parallel, 2 ranks", "ep", 2, None, False),
]


def load_average() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3]) if Path("/proc/loadavg").exists() else "n/a"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=40, help="training steps per epoch (EP: a quarter)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--repeats", type=int, default=2, help="rounds over all configurations; the best is kept")
    parser.add_argument("--spec", help=argparse.SUPPRESS)  # internal: one configuration as JSON
    args = parser.parse_args()
    if args.spec:
        run_one(json.loads(args.spec))
        return

    load_before = load_average()
    rows: dict[str, dict] = {}
    with tempfile.TemporaryDirectory() as tmp:
        # Rounds over all configurations, interleaved, so a burst of load on the shared machine
        # hits one round of a configuration, not all of them; each keeps its best round.
        for round_ in range(args.repeats):
            for i, (label, algo, ranks, threads, layer_parallel) in enumerate(CONFIGS):
                spec = {"algo": algo, "threads": threads, "layer_parallel": layer_parallel, "device": args.device,
                        "steps": max(4, args.steps // 4) if algo == "ep" else args.steps,
                        "out": f"{tmp}/run{round_}-{i}", "result": f"{tmp}/result{round_}-{i}.json"}
                launch = ([sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={ranks}"]
                          if ranks > 1 else [sys.executable])
                proc = subprocess.run(launch + [__file__, "--spec", json.dumps(spec)], capture_output=True, text=True)
                if not Path(spec["result"]).exists():
                    sys.exit(f"{label} failed (exit {proc.returncode}):\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}")
                row = {"label": label, "algo": algo, "ranks": ranks, "layer_parallel": layer_parallel,
                       "steps": spec["steps"], **json.loads(Path(spec["result"]).read_text())}
                print(f"round {round_ + 1}: {label:<32} {row['samples_per_second']:>9.1f} samples/s", flush=True)
                best = rows.setdefault(label, {**row, "rounds": []})
                best["rounds"].append(row["samples_per_second"])
                if row["samples_per_second"] > best["samples_per_second"]:
                    rows[label] = {**row, "rounds": best["rounds"]}
    rows = list(rows.values())
    load_after = load_average()

    def speed(label: str) -> float:
        return next(r["samples_per_second"] for r in rows if r["label"] == label)

    ratios = {
        "sll layer-parallel / 1 process 1 thread": speed("sll layer-parallel, 2 ranks") / speed("sll 1 process, 1 thread"),
        "sll layer-parallel / 1 process 2 threads": speed("sll layer-parallel, 2 ranks") / speed("sll 1 process, 2 threads"),
        **{f"{a} data-parallel / 1 process 2 threads":
           speed(f"{a} data-parallel, 2 ranks") / speed(f"{a} 1 process, 2 threads") for a in ("bp", "fa", "ep")},
        "sll data-parallel / 1 process 2 threads": speed("sll data-parallel, 2 ranks") / speed("sll 1 process, 2 threads"),
    }
    balance = next(r["distributed"] for r in rows if r["layer_parallel"])
    import torch

    now = datetime.now(timezone.utc)
    command = "python benchmarks/distributed.py " + " ".join(sys.argv[1:])
    record = {"date": now.isoformat(timespec="seconds"), "command": command.strip(),
              "machine": rows[0]["device"].rsplit(",", 1)[0], "cpu_count": os.cpu_count(),
              "torch": torch.__version__, "python": platform.python_version(),
              "load_average_before": load_before, "load_average_after": load_after,
              "model": f"mlp 784-{'-'.join(map(str, HIDDEN))}-10 relu, batch {BATCH} per rank",
              "rows": rows, "ratios": ratios, "stage_balance": balance}
    out = HERE / "results" / f"distributed-{now:%Y-%m-%d}"
    out.parent.mkdir(exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(record, indent=2))
    lines = [f"# Distributed throughput, {record['date']}", "",
             f"Machine: {record['machine']} ({record['cpu_count']} cores), torch {record['torch']}, gloo. "
             f"Model: {record['model']}; synthetic MNIST-shaped data; second epoch of each run, "
             f"best of {args.repeats} interleaved rounds (all rounds in the JSON).",
             f"Command: `{record['command']}`", "",
             f"Load average (1, 5, 15 min) before: {load_before}; after: {load_after}. "
             "Other engineers' jobs shared this 2-core machine, so absolute figures and ratios are "
             "indicative only.", "",
             "| configuration | ranks | threads/rank | steps | samples/s, best (all rounds) |", "|---|---|---|---|---|"]
    lines += [f"| {r['label']} | {r['ranks']} | {r['threads_per_rank']} | {r['steps']} | {r['samples_per_second']:.1f} "
              f"({', '.join(f'{v:.0f}' for v in r['rounds'])}) |" for r in rows]
    lines += ["", "| ratio | value |", "|---|---|"] + [f"| {k} | {v:.2f}x |" for k, v in ratios.items()]
    lines += ["", f"Stage balance (layer-parallel SLL): units per stage {balance['stages']}, measured unit "
              f"seconds {[round(s, 5) for s in balance['unit_seconds']]}, stage shares "
              f"{[round(s, 3) for s in balance['stage_share']]}."]
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print(f"-> {out}.json, {out}.md")


if __name__ == "__main__":
    main()
