"""The command line, run as a user runs it: through a subprocess."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys

import pytest
import yaml

from bioplausible import train


def cli(*args: str, cwd=None) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.run([sys.executable, "-m", "bioplausible.cli", *args], capture_output=True, text=True,
                          timeout=300, cwd=cwd, env=env)


def test_list_shows_rules_with_flags_models_and_datasets():
    out = cli("list").stdout
    assert "bp       ✗ ✗ ✗" in out and "fa       ✓ ✗ ✗" in out
    for name in ("dfa", "kp", "wm", "mlp", "dll_cnn_mnist", "resnet32", "vit_tiny", "digits", "mnist", "imagefolder"):
        assert name in out
    assert cli("list", "models").stdout.startswith("models:")


def test_train_writes_a_run_directory(tmp_path):
    run = cli("train", "--algo", "dfa", "--epochs", "2", "--batch-size", "64", "--set", "model.hidden=[32]",
              "--out", str(tmp_path / "run"))
    assert run.returncode == 0, run.stderr
    assert "test accuracy" in run.stdout
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["algo"] == "dfa" and summary["final"]["epoch"] == 2


def test_resume_continues_an_interrupted_run(tmp_path):
    class Stop(Exception):
        pass

    def stop(trainer, metrics):
        raise Stop

    with pytest.raises(Stop):
        train(algo="fa", epochs=3, batch_size=64, model_args={"hidden": [16]}, out=str(tmp_path / "run"),
              progress=False, callbacks=[stop])
    run = cli("train", "--resume", str(tmp_path / "run"))
    assert run.returncode == 0, run.stderr
    lines = (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["epoch"] for line in lines] == [1, 2, 3]


@pytest.mark.parametrize(
    "args, message",
    [
        (["train", "--algo", "nope"], "unknown algorithm 'nope'"),
        (["train", "--lr", "-1"], "'lr' must be positive, got -1.0"),
        (["train", "--set", "epochz=3"], "unknown config key 'epochz'"),
        (["train", "--model", "mlp", "--set", "model.depth=3"], "model 'mlp' has no option 'depth'"),
        (["train", "--resume", "/nonexistent/run"], "cannot resume"),
        (["compare", "--algos", "bp,xyz"], "unknown algorithm 'xyz'"),
        (["compare", "--seeds", "a,b"], "'--seeds' must be comma-separated integers"),
        (["compare", "--resume"], "'resume' needs the directory of the comparison to continue ('--out')"),
        (["compare", "--algos", "bp,fa", "--set", "kp:lr=0.1"], "'--set kp:...' names a rule that is not compared"),
        (["compare", "--algos", "bp,kp", "--set", "kp:algo.decy=0.1"], "algorithm 'kp' has no option 'decy'"),
    ],
)
def test_bad_input_exits_nonzero_with_one_line(args, message, tmp_path):
    run = cli(*args, cwd=tmp_path)
    assert run.returncode == 2
    assert message in run.stderr
    assert "Traceback" not in run.stderr
    assert len(run.stderr.strip().splitlines()) == 1


def test_malformed_config_file(tmp_path):
    (tmp_path / "bad.yaml").write_text("epochs: [3\n")
    run = cli("train", "--config", str(tmp_path / "bad.yaml"))
    assert run.returncode == 2 and "is not valid YAML" in run.stderr and "Traceback" not in run.stderr


def test_compare_prints_table_and_writes_csv_markdown_plot(tmp_path):
    run = cli("compare", "--algos", "bp,fa", "--epochs", "2", "--seeds", "0,1", "--batch-size", "64",
              "--set", "model.hidden=[32]", "--out", str(tmp_path / "cmp"))
    assert run.returncode == 0, run.stderr
    assert "| bp | ✗ ✗ ✗ |" in run.stdout and "| fa | ✓ ✗ ✗ |" in run.stdout
    assert " ± " in run.stdout and "1.00x" in run.stdout
    rows = list(csv.DictReader(open(tmp_path / "cmp" / "results.csv")))
    assert {(r["algorithm"], r["seed"]) for r in rows} == {("bp", "0"), ("bp", "1"), ("fa", "0"), ("fa", "1")}
    assert (tmp_path / "cmp" / "results.md").read_text().count("|") > 10
    assert (tmp_path / "cmp" / "learning_curves.png").read_bytes()[:4] == b"\x89PNG"


def test_compare_applies_rule_scoped_settings_to_that_rule_only(tmp_path):
    """``--set kp:algo.decay=...`` reaches kp's runs; bp, which has no such option, runs unchanged."""
    run = cli("compare", "--algos", "bp,kp", "--epochs", "1", "--seeds", "0", "--batch-size", "64",
              "--set", "model.hidden=[16]", "--set", "kp:algo.decay=0.01", "--set", "kp:lr=0.002",
              "--out", str(tmp_path / "cmp"))
    assert run.returncode == 0, run.stderr
    kp = yaml.safe_load((tmp_path / "cmp" / "kp-s0" / "config.yaml").read_text())
    bp = yaml.safe_load((tmp_path / "cmp" / "bp-s0" / "config.yaml").read_text())
    assert kp["algo_args"] == {"decay": 0.01} and kp["lr"] == 0.002
    assert bp["algo_args"] == {} and bp["lr"] != 0.002
    assert "Per-rule settings: kp: algo.decay=0.01, lr=0.002" in (tmp_path / "cmp" / "results.md").read_text()


def test_compare_with_jobs_gives_the_sequential_results(tmp_path):
    """``--jobs 2`` trains runs in parallel processes; each run is still its own seeded run, so the
    accuracies equal the sequential ones, and no time ratio is claimed for shared hardware."""
    common = ("compare", "--algos", "bp,fa", "--epochs", "1", "--seeds", "0", "--batch-size", "64",
              "--set", "model.hidden=[16]")
    runs = {jobs: cli(*common, "--jobs", str(jobs), "--out", str(tmp_path / f"j{jobs}")) for jobs in (1, 2)}
    for run in runs.values():
        assert run.returncode == 0, run.stderr
    accuracy = {jobs: [(r["algorithm"], r["test_acc"]) for r in csv.DictReader(open(tmp_path / f"j{jobs}" / "results.csv"))]
                for jobs in runs}
    assert accuracy[2] == accuracy[1]
    assert "1.00x" in runs[1].stdout and "1.00x" not in runs[2].stdout
    assert "2 runs at a time" in (tmp_path / "j2" / "results.md").read_text()


def test_compare_resume_reads_back_finished_runs_and_continues_cut_ones(tmp_path):
    """``--resume`` on a comparison's directory trains only what is missing: a finished run is
    read back as it is, a run with no checkpoint is trained, and the table is the same."""
    common = ("compare", "--algos", "bp,fa", "--epochs", "1", "--seeds", "0", "--batch-size", "64",
              "--set", "model.hidden=[16]", "--out", str(tmp_path / "cmp"))
    first = cli(*common)
    assert first.returncode == 0, first.stderr
    bp_checkpoint = tmp_path / "cmp" / "bp-s0" / "checkpoint.pt"
    written = bp_checkpoint.stat().st_mtime_ns
    (tmp_path / "cmp" / "fa-s0" / "checkpoint.pt").unlink()  # as if cut during its first epoch
    accuracy = [(r["algorithm"], r["test_acc"]) for r in csv.DictReader(open(tmp_path / "cmp" / "results.csv"))]
    again = cli(*common, "--resume")
    assert again.returncode == 0, again.stderr
    assert bp_checkpoint.stat().st_mtime_ns == written
    assert (tmp_path / "cmp" / "fa-s0" / "checkpoint.pt").is_file()
    assert [(r["algorithm"], r["test_acc"]) for r in csv.DictReader(open(tmp_path / "cmp" / "results.csv"))] == accuracy
