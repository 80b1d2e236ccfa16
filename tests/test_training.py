"""The trainer: run directory contents, reproducibility, resume, divergence, schedules."""

from __future__ import annotations

import json

import pytest
import torch

from bioplausible import TrainConfig, resume, train
from bioplausible.training import train_or_resume
from bioplausible.errors import CheckpointError, ConfigError, DivergenceError
from bioplausible.training.checkpoint import load_checkpoint
from bioplausible.training.optim import lr_factor

TIMING_KEYS = {"epoch_seconds", "samples_per_second", "data_fraction", "peak_memory_mb"}


def quick(tmp_path, name="run", **values):
    base = dict(model="mlp", dataset="digits", epochs=2, batch_size=64, model_args={"hidden": [32]},
                progress=False, out=str(tmp_path / name), deterministic=True)
    return {**base, **values}


def read_metrics(run_dir):
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def without_timings(history):
    return [{k: v for k, v in m.items() if k not in TIMING_KEYS} for m in history]


def test_run_directory_holds_config_metrics_summary_checkpoint(tmp_path):
    result = train(quick(tmp_path, algo="fa", val_split=0.1, tensorboard=True))
    run = result.out_dir
    assert {"config.yaml", "metrics.jsonl", "summary.json", "checkpoint.pt"} <= {p.name for p in run.iterdir()}
    assert any((run / "tensorboard").iterdir())
    metrics = read_metrics(run)
    assert [m["epoch"] for m in metrics] == [1, 2]
    required = {"epoch", "train_loss", "train_acc", "test_acc", "val_acc"} | TIMING_KEYS
    assert required <= metrics[0].keys()
    summary = json.loads((run / "summary.json").read_text())
    assert summary["algo"] == "fa" and summary["model"] == "mlp" and summary["dataset"] == "digits"
    assert summary["final"] == metrics[-1]
    assert summary["best_val"]["epoch"] in (1, 2)
    assert summary["versions"]["torch"] == torch.__version__
    assert TrainConfig.from_dict(__import__("yaml").safe_load((run / "config.yaml").read_text())).algo == "fa"


@pytest.mark.parametrize("algo", ["bp", "wm"])
def test_same_seed_same_metrics_other_seed_different(tmp_path, algo):
    a = train(quick(tmp_path, "a", algo=algo))
    b = train(quick(tmp_path, "b", algo=algo))
    c = train(quick(tmp_path, "c", algo=algo, seed=1))
    assert without_timings(a.history) == without_timings(b.history)
    assert without_timings(a.history) != without_timings(c.history)


class Interrupt(Exception):
    pass


def kill_after_first_epoch(trainer, metrics):
    if metrics["epoch"] == 1:
        raise Interrupt


@pytest.mark.parametrize("algo", ["kp", "wm", "sll"])
def test_resume_after_interruption_matches_uninterrupted_run(tmp_path, algo):
    """(SLL: its masks on R come from per-layer streams, which the checkpoint must restore.)"""
    values = dict(algo=algo, epochs=3, optimizer="sgd", lr=0.05, schedule="cosine", augment=["crop"], crop_padding=1)
    full = train(quick(tmp_path, "full", **values))
    with pytest.raises(Interrupt):
        train(quick(tmp_path, "cut", **values), callbacks=[kill_after_first_epoch])
    assert len(read_metrics(tmp_path / "cut")) == 1
    resumed = resume(tmp_path / "cut")
    assert without_timings(resumed.history) == without_timings(full.history)
    assert without_timings(read_metrics(tmp_path / "cut")) == without_timings(full.history)


def test_train_or_resume_continues_a_cut_run_and_reads_back_a_finished_one(tmp_path):
    """A table of runs survives an interruption: the cut run continues to the uninterrupted
    result, also where only how it executes changed, and a finished run is not trained again."""
    values = dict(algo="fa", epochs=3, optimizer="sgd", lr=0.05, schedule="cosine")
    full = train(quick(tmp_path, "full", **values))
    with pytest.raises(Interrupt):
        train(quick(tmp_path, "cut", **values), callbacks=[kill_after_first_epoch])
    config = TrainConfig.from_dict(quick(tmp_path, "cut", **values, progress=True, data_dir=str(tmp_path)))
    resumed = train_or_resume(config)
    assert without_timings(resumed.history) == without_timings(full.history)
    checkpoint = tmp_path / "cut" / "checkpoint.pt"
    written = checkpoint.stat().st_mtime_ns
    again = train_or_resume(config)
    assert again.history == resumed.history and checkpoint.stat().st_mtime_ns == written


def test_train_or_resume_refuses_a_directory_of_another_configuration(tmp_path):
    train(quick(tmp_path, epochs=1, lr=0.01))
    with pytest.raises(ConfigError, match=r"holds a run with other 'lr' \(lr=0.01\)"):
        train_or_resume(TrainConfig.from_dict(quick(tmp_path, epochs=1, lr=0.02)))


def test_divergence_stops_with_epoch_and_step_and_keeps_last_checkpoint(tmp_path):
    def poison(trainer, metrics):  # make the next epoch's first step produce NaN
        with torch.no_grad():
            next(trainer.model.parameters()).fill_(float("nan"))

    with pytest.raises(DivergenceError, match=r"epoch 2, step 1: loss is nan.*checkpoint.*\(epoch 1\)"):
        train(quick(tmp_path, algo="bp", epochs=3), callbacks=[poison])
    state = load_checkpoint(tmp_path / "run" / "checkpoint.pt")
    assert state["epoch"] == 0
    assert all(torch.isfinite(v).all() for v in state["rule"].values() if v.is_floating_point())


def test_corrupt_or_missing_checkpoint_is_named(tmp_path):
    train(quick(tmp_path, epochs=1))
    (tmp_path / "run" / "checkpoint.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="corrupt"):
        resume(tmp_path / "run")
    (tmp_path / "run" / "checkpoint.pt").unlink()
    with pytest.raises(CheckpointError, match="no checkpoint"):
        resume(tmp_path / "run")
    with pytest.raises(ConfigError, match="cannot resume"):
        resume(tmp_path / "nowhere")


def test_layer_learning_rates_reach_parameter_groups(tmp_path):
    from bioplausible.training import Trainer

    trainer = Trainer(TrainConfig.from_dict(quick(tmp_path, layer_lrs=[0.01, 0.002], optimizer="sgd")))
    assert [g["lr"] for g in trainer.optimizers[0].param_groups] == [0.01, 0.002]
    with pytest.raises(ConfigError, match="'layer_lrs' has 3 entries but the model has 2 blocks"):
        Trainer(TrainConfig.from_dict(quick(tmp_path, layer_lrs=[0.1, 0.1, 0.1])))


@pytest.mark.parametrize(
    "schedule, progress, expected",
    [("constant", 5.0, 1.0), ("step", 3.0, 0.1), ("step", 2.9, 1.0), ("cosine", 10.0, 0.0),
     ("cosine", 6.0, 0.5), ("linear", 6.0, 0.5), ("linear", 1.0, 0.5)],
)
def test_lr_schedules(schedule, progress, expected):
    config = TrainConfig(epochs=10, schedule=schedule, milestones=[3], warmup_epochs=2 if schedule != "step" else 0)
    assert lr_factor(config, progress) == pytest.approx(expected, abs=1e-9)


def test_wrong_input_shape_is_named(tmp_path):
    from bioplausible import create_algorithm, create_model
    from bioplausible.errors import ShapeError

    rule = create_algorithm("fa", create_model("mlp", (1, 8, 8), 10))
    with pytest.raises(ShapeError, match=r"expects \[batch, 1, 8, 8\], got \[4, 3, 32, 32\]"):
        rule.compute_updates(torch.zeros(4, 3, 32, 32), torch.zeros(4, dtype=torch.long))
