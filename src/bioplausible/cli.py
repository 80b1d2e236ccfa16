"""Command line: ``bioplausible train | compare | list``."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from . import __version__
from .errors import BioplausibleError


def _add_run_options(p: argparse.ArgumentParser, defaults: dict) -> None:
    p.add_argument("--model", help=f"architecture (default {defaults['model']})")
    p.add_argument("--dataset", help=f"dataset (default {defaults['dataset']})")
    p.add_argument("--epochs", type=int, help=f"default {defaults['epochs']}")
    p.add_argument("--batch-size", type=int, dest="batch_size", help=f"default {defaults['batch_size']}")
    p.add_argument("--lr", type=float, help=f"learning rate (default {defaults['lr']})")
    p.add_argument("--device", help="cpu, cuda or cuda:N (default cpu)")
    p.add_argument("--data-dir", dest="data_dir", help="dataset directory (default: $BIOPLAUSIBLE_DATA, else download)")
    p.add_argument("--config", help="YAML file of config keys")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="any config key, e.g. --set optimizer=sgd --set model.hidden=[256,128] --set algo.decay=1e-3")


def build_parser() -> argparse.ArgumentParser:
    from .config import TrainConfig

    defaults = TrainConfig().to_dict()
    parser = argparse.ArgumentParser(prog="bioplausible", description="Learning rules without end-to-end backprop, side by side.")
    parser.add_argument("--version", action="version", version=f"bioplausible {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    train = sub.add_parser("train", help="train one rule")
    train.add_argument("--algo", help=f"learning rule (default {defaults['algo']})")
    _add_run_options(train, defaults)
    train.add_argument("--seed", type=int)
    train.add_argument("--out", help="run directory (default runs/<algo>-<model>-<dataset>-s<seed>-<time>)")
    train.add_argument("--resume", metavar="DIR", help="continue the run in DIR from its last checkpoint")
    # Multi-process runs (launch with torchrun; README, "Multi-process and multi-GPU runs").
    train.add_argument("--check-replicas", type=int, dest="check_replicas", metavar="K",
                       help="under torchrun: every K steps check that all ranks hold the same rule state")
    train.add_argument("--layer-parallel", action="store_const", const=True, dest="layer_parallel",
                       help="under torchrun: split a layer-local rule's units across ranks (pipeline)")
    train.add_argument("--pipeline-depth", type=int, dest="pipeline_depth", metavar="D",
                       help="micro-batches in flight between pipeline stages (default 2)")

    compare = sub.add_parser("compare", help="train several rules on the same data and seeds; print a table")
    compare.add_argument("--algos", default="bp,fa,dfa,kp,wm", help="comma-separated rules (default bp,fa,dfa,kp,wm)")
    _add_run_options(compare, defaults)
    compare.add_argument("--seeds", default="0,1,2", help="comma-separated seeds (default 0,1,2)")
    compare.epilog = "--set RULE:KEY=VALUE applies to that rule's runs only, e.g. --set sal:lr=1e-3"
    compare.add_argument("--out", help="output directory (default runs/compare-<model>-<dataset>-<time>)")
    compare.add_argument("--jobs", type=int, default=1,
                         help="runs at once, each in its own process (a GPU fits many small runs; default 1)")
    compare.add_argument("--resume", action="store_true",
                         help="continue the comparison in --out: finished runs are read back, interrupted ones resume")

    listing = sub.add_parser("list", help="list algorithms, models or datasets")
    listing.add_argument("what", nargs="?", choices=["algorithms", "models", "datasets"], default=None)
    return parser


def _run_values(args: argparse.Namespace) -> dict:
    keys = ("algo", "model", "dataset", "epochs", "batch_size", "lr", "device", "data_dir", "seed", "out",
            "check_replicas", "layer_parallel", "pipeline_depth")
    return {k: getattr(args, k) for k in keys if getattr(args, k, None) is not None}


def cmd_train(args: argparse.Namespace) -> None:
    from .config import load_config
    from .training import resume, train

    from .training.distributed import teardown

    try:
        if args.resume:
            result = resume(args.resume)
        else:
            result = train(load_config(args.config, args.set, **_run_values(args)))
    finally:
        teardown()  # under torchrun: leave the process group (no-op in a single process)
    if int(os.environ.get("RANK", "0")) != 0:
        return  # every rank has the same result; rank 0 reports it
    final = result.summary["final"]
    score = (f"test accuracy {100 * final['test_acc']:.2f}%" if "test_acc" in final
             else f"test MSE {final['test_mse']:.5f}, MAE {final['test_mae']:.5f}")
    print(f"{result.summary['algo']} on {result.summary['model']}/{result.summary['dataset']}: "
          f"{score} after {final['epoch']} epochs -> {result.out_dir}")


def cmd_compare(args: argparse.Namespace) -> None:
    from .compare import compare, markdown_table, split_rule_overrides
    from .config import load_config
    from .errors import ConfigError

    algos = [a.strip() for a in args.algos.split(",") if a.strip()]
    try:
        seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    except ValueError:
        raise ConfigError(f"'--seeds' must be comma-separated integers, got '{args.seeds}'") from None
    values = _run_values(args)
    out = values.pop("out", None)
    shared, per_rule = split_rule_overrides(args.set)
    base = load_config(args.config, shared, **values)
    rows, out_dir = compare(algos, base, seeds, Path(out) if out else None, per_rule, args.jobs, args.resume)
    print(markdown_table(rows))
    print(f"\ntables and learning curves: {out_dir}/results.md, results.csv, learning_curves.png")


def cmd_list(args: argparse.Namespace) -> None:
    from .algorithms import ALGORITHMS
    from .data import list_datasets
    from .models import list_models

    what = args.what
    if what in (None, "algorithms"):
        print("algorithms (C1 no weight transport, C2 local errors, C3 no separate phases):")
        for name in ALGORITHMS.names():
            rule = ALGORITHMS.get(name)
            print(f"  {name:<8} {' '.join(rule.flags.symbols())}   {rule.describe()}")
    if what in (None, "models"):
        print("models:\n  " + ", ".join(list_models()))
    if what in (None, "datasets"):
        print("datasets:\n  " + ", ".join(list_datasets()))


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        {"train": cmd_train, "compare": cmd_compare, "list": cmd_list}[args.command](args)
    except BioplausibleError as exc:
        print(f"bioplausible: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("bioplausible: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # output piped into `head` and closed: not an error of ours
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    return 0


if __name__ == "__main__":
    sys.exit(main())
