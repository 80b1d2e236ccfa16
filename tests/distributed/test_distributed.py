"""Data-parallel and layer-parallel training over 2 processes (gloo on 127.0.0.1; DISTRIBUTED.md).

One launch of ``worker.py`` on two ranks runs every scenario (launching costs more than the
scenarios); each rank writes its results before it exits, and the tests below read them, so a
gloo abort at teardown cannot hide or fake a result. Oracles:

* data parallelism (every registered rule that can train the tiny models, the issue's list
  required): 2 ranks x 6 examples for 3 SGD-with-momentum steps equal, within 1e-6, a single
  process emulating two replicas that average each optimizer's gradients (and BatchNorm's
  running statistics) -- and the two ranks' rule states are bitwise identical;
* the replica check names a feedback matrix perturbed on one rank;
* layer-parallel SLL (with masks on R and dropout) and DGL (a conv net with auxiliary heads)
  over 2 stages, pipeline depths 1 and 2, after 200 micro-batches: bitwise the weights and the
  metrics of a single-process run; likewise local losses and FF with dropout, depth 2;
* resuming a data-parallel or a layer-parallel run under two ranks ends with the metrics of an
  uninterrupted run;
* a NaN loss seen by one rank only stops every rank with the same DivergenceError (data- and
  layer-parallel), instead of leaving the other waiting in a collective;
* data-parallel evaluation: each rank scores its share of the test batches, and every rank
  reports exactly the figures of a single process scoring them all;
* a rule with top-down signals refuses ``layer_parallel`` with a clear message (in process).
"""

from __future__ import annotations

import itertools
import os
import re
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from bioplausible.errors import ConfigError
from bioplausible.training.pipeline import balanced_partition

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import worker  # noqa: E402

WORLD = 2
TIMEOUT_S = 240  # the launch, on a loaded 2-core machine; about 25 s idle


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    out = tmp_path_factory.mktemp("distributed")
    env = {**os.environ, "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(free_port()),
           "WORLD_SIZE": str(WORLD), "LOCAL_WORLD_SIZE": str(WORLD), "OMP_NUM_THREADS": "1"}
    procs = [subprocess.Popen([sys.executable, str(HERE / "worker.py"), str(out)],
                              env={**env, "RANK": str(r), "LOCAL_RANK": str(r)},
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for r in range(WORLD)]
    logs = []
    try:
        for p in procs:
            logs.append(p.communicate(timeout=TIMEOUT_S)[0])
    except subprocess.TimeoutExpired:
        for p in procs:
            p.kill()
        pytest.fail(f"the 2-rank worker did not finish within {TIMEOUT_S} s")
    if not all((out / f"done.rank{r}").exists() for r in range(WORLD)):
        pytest.fail("the 2-rank worker did not finish its scenarios:\n" + "\n".join(log[-3000:] for log in logs))

    def load(name: str) -> list[dict]:
        found = [torch.load(out / f"{name}.rank{r}.pt", weights_only=False) for r in range(WORLD)]
        for r, result in enumerate(found):
            assert result["ok"], f"{name} failed on rank {r}:\n{result['error']}"
        return found

    load.out = out
    return load


def dp_rules() -> list[str]:
    from bioplausible.algorithms import ALGORITHMS

    return ALGORITHMS.names()


# ---------------------------------------------------------------------- equivalence
@pytest.mark.parametrize("name", dp_rules())
def test_data_parallel_equals_averaged_shard_updates(results, name):
    ranks = results(f"dp_{name}")
    if "skipped" in ranks[0]:
        assert name not in worker.REQUIRED, f"{name} must be checked: {ranks[0]['skipped']}"
        pytest.skip(f"{name}: {ranks[0]['skipped']}")
    if name in ("bp", "fa", "dfa", "kp", "dll"):  # autograd rules that call model(x): DDP's hooks
        assert ranks[0]["path"] == "ddp"
    state, emulation = ranks[0]["state"], ranks[0]["emulation"]
    for key, value in state.items():
        assert torch.equal(value, ranks[1]["state"][key]), f"{name}: '{key}' differs between the ranks"
        if value.is_floating_point():
            torch.testing.assert_close(value, emulation[key], rtol=0, atol=1e-6, msg=f"{name}: '{key}'")
    initial = ranks[0]["initial"]
    moved = [k for k, v in state.items() if v.is_floating_point() and not torch.equal(v, initial[k])]
    assert moved, f"{name}: training changed nothing, so the comparison proves nothing"


def test_issue_rules_are_registered():
    names = dp_rules()
    assert [n for n in worker.REQUIRED if n not in names] == []


# ---------------------------------------------------------------------- replica check
def test_replica_check_names_the_desynchronised_feedback_matrix(results):
    for rank in results("replicas"):
        assert rank["error"] is not None, "the replica check missed a perturbed feedback matrix"
        assert "'model.blocks.2.0.feedback' differs between rank 0 and rank(s) [1]" in rank["error"]


# ---------------------------------------------------------------------- layer parallelism
def single_process(out: Path, config, data):
    from bioplausible.training import Trainer

    torch.set_num_threads(1)
    result = Trainer(config, data=data).fit()
    return result, torch.load(out / "checkpoint.pt", weights_only=True)


@pytest.fixture(scope="module")
def single_process_sll(tmp_path_factory):
    out = tmp_path_factory.mktemp("sll-single")
    return single_process(out, worker.lp_config(out, 2, False), worker.tiny_data())


@pytest.fixture(scope="module")
def single_process_dgl(tmp_path_factory):
    out = tmp_path_factory.mktemp("dgl-single")
    return single_process(out, worker.dgl_config(out, 2, False), worker.tiny_data(worker.DGL_SHAPE))


def assert_bitwise_a_single_process(ranks, run_dir: Path, single, reference, what: str) -> None:
    checkpoint = torch.load(run_dir / "checkpoint.pt", weights_only=True)
    assert checkpoint["rule"].keys() == reference["rule"].keys()
    for key, value in reference["rule"].items():
        assert torch.equal(checkpoint["rule"][key], value), f"{what}: '{key}' differs from one process"
    # the units' random streams as one process leaves them, gathered from their stages
    assert checkpoint["rng"]["units"].keys() == reference["rng"]["units"].keys()
    for unit, states in reference["rng"]["units"].items():
        assert torch.equal(checkpoint["rng"]["units"][unit]["cpu"], states["cpu"]), f"{what}: unit {unit}'s stream"
    for rank in ranks:  # every rank reports the metrics the last stage measured
        for got, want in zip(rank["history"], single.history, strict=True):
            for key in ("train_loss", "train_acc", "test_loss", "test_acc"):
                assert got[key] == want[key], f"{what}: {key}"
            # the memory of every stage, the largest as the run's peak
            assert len(got["stage_peak_memory_mb"]) == WORLD and min(got["stage_peak_memory_mb"]) > 0, what
            assert got["peak_memory_mb"] == max(got["stage_peak_memory_mb"]), what


def test_every_rank_learns_every_ranks_value(results):
    for rank in results("gather"):
        assert rank["values"] == [0.5, 1.5] and rank["ranks"] == [1]


def test_stages_minimise_the_largest_stage_cost():
    """The partition against all contiguous cuts (brute force), on random unit costs."""
    g = torch.Generator().manual_seed(0)
    for n, parts in [(4, 2), (7, 3), (9, 4), (5, 5)]:
        costs = torch.rand(n, generator=g).tolist()
        bounds = balanced_partition(costs, parts)
        assert [a for a, _ in bounds] == [0] + [b for _, b in bounds[:-1]] and bounds[-1][1] == n
        assert all(a < b for a, b in bounds)
        best = min(max(sum(costs[a:b]) for a, b in zip((0, *cuts), (*cuts, n)))
                   for cuts in itertools.combinations(range(1, n), parts - 1))
        assert max(sum(costs[a:b]) for a, b in bounds) == pytest.approx(best, rel=1e-12)


@pytest.mark.parametrize("depth", [1, 2])
def test_layer_parallel_sll_is_bitwise_a_single_process(results, single_process_sll, depth):
    ranks = results(f"lp_depth{depth}")
    info = ranks[0]["summary"]["distributed"]  # 4 units cut where their measured costs balance
    assert info["stages"] == balanced_partition(info["unit_seconds"], WORLD) and len(info["unit_seconds"]) == 4
    assert_bitwise_a_single_process(ranks, results.out / f"lp{depth}", *single_process_sll, f"sll, depth {depth}")


@pytest.mark.parametrize("depth", [1, 2])
def test_layer_parallel_dgl_is_bitwise_a_single_process(results, single_process_dgl, depth):
    ranks = results(f"lp_dgl_depth{depth}")
    assert len(ranks[0]["summary"]["distributed"]["stages"]) == 2  # 3 modules, cut by measured cost
    assert_bitwise_a_single_process(ranks, results.out / f"lp_dgl{depth}", *single_process_dgl, f"dgl, depth {depth}")


@pytest.mark.parametrize("algo", worker.DRAWING_RULES)
def test_layer_parallel_rules_with_dropout_are_bitwise_a_single_process(results, tmp_path, algo):
    ranks = results(f"lp_{algo}")
    reference = single_process(tmp_path, worker.drawing_config(algo, tmp_path, False), worker.tiny_data())
    assert_bitwise_a_single_process(ranks, results.out / f"lp_{algo}", *reference, algo)
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(results.out / f"lp_{algo}" / "tensorboard")).Reload()
    assert {"peak_memory_mb", "stage_peak_memory_mb/0", "stage_peak_memory_mb/1", "stage_share/1"} <= set(events.Tags()["scalars"])


def test_top_down_rule_refuses_layer_parallel():
    from bioplausible.config import TrainConfig
    from bioplausible.training import Trainer

    with pytest.raises(ConfigError, match="--layer-parallel needs a layer-local rule.*'dfa' is not"):
        Trainer(TrainConfig(algo="dfa", layer_parallel=True, progress=False), data=worker.tiny_data())


# ---------------------------------------------------------------------- resume
@pytest.mark.parametrize("scenario", ["resume", "lp_resume"])
def test_resume_under_two_ranks_equals_an_uninterrupted_run(results, scenario):
    for rank in results(scenario):
        assert len(rank["resumed"]) == len(rank["full"]) == 2
        for got, want in zip(rank["resumed"], rank["full"]):
            for key in ("train_loss", "train_acc", "test_loss", "test_acc"):
                assert got[key] == want[key], key


# ---------------------------------------------------------------------- divergence on one rank
@pytest.mark.parametrize("scenario, message", [
    ("diverge_dp", r"epoch 1, step 1: loss is (nan|not finite) on rank\(s\) \[1\]"),
    ("diverge_lp", r"epoch 1, step 1: loss is nan on the last stage \(rank 1\)"),
])
def test_a_nan_on_one_rank_stops_every_rank_with_the_same_error(results, scenario, message):
    for rank in results(scenario):
        assert rank["error"] is not None, f"{scenario}: a rank trained on without stopping"
        assert re.search(message, rank["error"]), rank["error"]


# ---------------------------------------------------------------------- sharded evaluation
def test_each_rank_scores_its_share_and_all_report_the_single_process_figures(results):
    from bioplausible.training import Trainer

    ranks = results("eval_shard")
    assert [rank["scored"] for rank in ranks] == [[1000, 500], [1000]]
    torch.set_num_threads(1)
    single = Trainer.from_run_dir(results.out / "eval_shard", data=worker.tiny_data(n_test=worker.EVAL_TEST))
    figures = single.evaluate(single.data.test, "test")  # the checkpoint's weights, one process
    for rank in ranks:
        assert figures == {key: rank["history"][-1][key] for key in figures}
