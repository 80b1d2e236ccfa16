"""CUDA: every rule runs on the GPU, and where its step draws no random numbers it takes the same
step there as on the CPU (the oracle: the CPU implementation, which the rest of the suite checks).

Skipped on machines without a CUDA device, which includes CI; run on a GPU machine with
``python -m pytest tests/test_cuda.py``.
"""

from __future__ import annotations

import copy

import pytest
import torch

from bioplausible import train
from bioplausible.algorithms import ALGORITHMS, create_algorithm
from bioplausible.config import TrainConfig
from bioplausible.models import create_model
from bioplausible.training.optim import OptimizerFactory
from test_learning import MLP_RULES, digits_recipe

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")

MLP = ("mlp", (1, 8, 8), {"hidden": [32, 32]})
# Every rule on a small MLP, plus each architecture a rule family was built for.
ARCHITECTURES = {
    "dep": [("dendritic_mlp", (1, 4, 4), {"hidden": [8]})],
    "dbptt": [("dendritic_mlp", (1, 4, 4), {"hidden": [8]})],
    "dll": [MLP, ("cnn", (2, 8, 8), {"channels": [4, 6], "hidden": 10, "activation": "tanh"}),
            ("elman_rnn", (5, 3), {"hidden": 8, "readout": "all"})],
    "sll": [MLP, ("vit_tiny", (1, 28, 28), {"patch_size": 4, "dim": 32, "depth": 2})],
    **{name: [MLP, ("resnet", (3, 16, 16), {"depth": 8, "width": 4})] for name in ("dgl", "infopro", "auglocal", "mlaan")},
}
# Options that make a rule's step deterministic, so that its CUDA step is compared with the CPU's.
DETERMINISTIC = {"sll": {"keep_prob": 1.0}}
CASES = [pytest.param(name, *arch, id=f"{name}-{arch[0]}")
         for name in ALGORITHMS.names() for arch in ARCHITECTURES.get(name, [MLP])]


def _batch(model_name: str, shape: tuple, classes: int):
    g = torch.Generator().manual_seed(1)
    x = torch.randn(16, *shape, generator=g)
    y = torch.randint(0, classes, (16, shape[0]) if model_name == "elman_rnn" else (16,), generator=g)
    return x, y


def _two_steps(rule, x, y, device: str, rng_seed: int) -> dict[str, torch.Tensor]:
    rule = copy.deepcopy(rule).to(device)
    rule.configure_optimizers(OptimizerFactory(TrainConfig(optimizer="sgd", lr=0.05, momentum=0.9)))
    torch.manual_seed(rng_seed)
    # cuDNN convolutions default to TF32 (10-bit mantissa) on Ampere and later; the comparison
    # with the CPU is of the float32 arithmetic.
    with torch.backends.cudnn.flags(enabled=True, allow_tf32=False):
        for _ in range(2):
            rule.train_step(x.to(device), y.to(device))
    return {k: v.detach().cpu() for k, v in rule.state_dict().items() if v.is_floating_point()}


@pytest.mark.parametrize("algo, model_name, shape, model_args", CASES)
def test_cuda_steps_equal_cpu_steps_unless_the_step_is_random(algo, model_name, shape, model_args):
    torch.manual_seed(0)
    classes = 4 if model_name == "elman_rnn" else 6
    rule = create_algorithm(algo, create_model(model_name, shape, classes, **model_args), **DETERMINISTIC.get(algo, {}))
    x, y = _batch(model_name, shape, classes)
    cpu = _two_steps(rule, x, y, "cpu", rng_seed=0)
    # A step that draws random numbers (perturbations, negative labels, dropout) differs with the
    # global seed; CPU and CUDA generators differ, so only finiteness can be compared for those.
    random_step = any(not torch.equal(a, b) for a, b in zip(cpu.values(), _two_steps(rule, x, y, "cpu", 1).values()))
    assert not (random_step and algo in DETERMINISTIC), f"{algo}: {DETERMINISTIC[algo]} left the step random"
    cuda = _two_steps(rule, x, y, "cuda", rng_seed=0)
    assert cuda.keys() == cpu.keys()
    moved = False
    for key, before in rule.state_dict().items():
        if key not in cpu:
            continue
        assert torch.isfinite(cuda[key]).all(), f"{algo}: {key} is not finite on CUDA"
        moved |= not torch.equal(cpu[key], before.cpu())
        if not random_step:
            torch.testing.assert_close(cuda[key], cpu[key], rtol=1e-3, atol=1e-4, msg=lambda m: f"{algo} {key}: {m}")
    assert moved, f"{algo}: two steps changed no parameter"


def test_a_units_cuda_stream_saved_on_another_gpu_continues():
    """Layer-local rules key a unit's streams by device type: a stream saved by a stage on cuda:1
    continues on this GPU instead of restarting (which would repeat epoch 1's masks)."""
    def sll():
        torch.manual_seed(0)
        return create_algorithm("sll", create_model("mlp", (1, 8, 8), 6, hidden=[32, 32]), keep_prob=0.5).to("cuda")

    saved, resumed = sll(), sll()
    with saved.unit_rng(0):
        torch.rand(3, device="cuda")
    streams = saved.random_streams()
    assert set(streams[0]) == {"cpu", "cuda"}
    resumed.load_random_streams({i: {("cuda:1" if k == "cuda" else k): v for k, v in states.items()}
                                 for i, states in streams.items()})
    draws = []
    for rule in (saved, resumed):
        with rule.unit_rng(0):
            draws.append(torch.rand(5, device="cuda"))
    assert torch.equal(*draws)


@pytest.mark.parametrize("algo", MLP_RULES)
def test_every_rule_learns_digits_on_cuda(algo, tmp_path):
    """The CPU learning test of tests/test_learning.py, with its recipes and bars, on the GPU."""
    settings, bar = digits_recipe(algo)
    result = train(algo=algo, device="cuda", out=str(tmp_path / algo), **settings)
    assert result.summary["device"] == torch.cuda.get_device_name(), result.summary
    assert result.summary["final"]["test_acc"] >= bar, result.summary["final"]


def test_mlaan_recompute_replays_the_cuda_generator():
    """MLAAN's rebuilt windows redraw the dropout masks of the CUDA generator the forwards drew
    from (tests/algorithms checks the CPU generator), so the steps and the generator's state after
    them equal those of the kept-graph schedule."""
    g = torch.Generator().manual_seed(1)
    x = torch.randn(16, 1, 4, 4, generator=g, dtype=torch.float64).cuda()
    y = torch.randint(0, 10, (16,), generator=g).cuda()

    def run(recompute: bool) -> dict[str, torch.Tensor]:
        torch.manual_seed(0)
        model = create_model("mlp", (1, 4, 4), 10, hidden=[12, 12, 12, 12], batch_norm=True, dropout=0.3).double()
        rule = create_algorithm("mlaan", model, recompute=recompute).cuda()
        rule.configure_optimizers(lambda groups: torch.optim.SGD(groups, lr=0.1, momentum=0.9))
        torch.manual_seed(0)
        for _ in range(2):
            rule.train_step(x, y)
        return {**{k: v.cpu() for k, v in rule.state_dict().items()}, "cuda rng": torch.cuda.get_rng_state()}

    kept, rebuilt = run(False), run(True)
    for key, value in kept.items():
        torch.testing.assert_close(rebuilt[key], value, rtol=1e-9, atol=1e-11, msg=key)
