"""DGL, InfoPro, AugLocal and MLAAN (supervised local learning with auxiliary networks).

Oracles: the splitter composes to the unsplit network (equivalence); each loss's gradient reaches
exactly the modules the rule says (isolation, by autograd on each loss separately); MLAAN's
step, with its window graphs kept or rebuilt (``recompute``), equals the authors' recomputing form
(equivalence), the two take the same steps (BatchNorm statistics and dropout masks included), and
MLAAN reduces to its base with MLM and LAM off; EMA copies move exactly by the EMA rule; rebuilt
windows keep about DGL's saved memory; shapes for every preset K; learning on digits and (real data)
MNIST."""

from __future__ import annotations

import collections
import copy
import math
import weakref
from pathlib import Path

import pytest
import torch

from bioplausible import load_config, train
from bioplausible.algorithms import create_algorithm
from bioplausible.algorithms.auxiliary import compose, split_modules
from bioplausible.algorithms.mlaan import ErrorRoot
from bioplausible.errors import ConfigError
from bioplausible.models import create_model
from bioplausible.training.memory import step_memory

RULES = ["dgl", "infopro", "auglocal", "mlaan"]


def preset_setups() -> list[tuple[str, str, dict]]:
    """The distinct (model, rule, rule options) of the presets in configs/mlaan, BP left out."""
    setups = {}
    for path in sorted((Path(__file__).resolve().parents[2] / "configs" / "mlaan").glob("*.yaml")):
        config = load_config(path)
        if config.algo != "bp":
            setups.setdefault(repr((config.model, config.algo, sorted(config.algo_args.items()))),
                              (config.model, config.algo, config.algo_args))
    return list(setups.values())


def tiny_resnet(depth=14, shape=(3, 16, 16), width=4, seed=0):
    torch.manual_seed(seed)
    return create_model("resnet", shape, 10, depth=depth, width=width).double()


def data(shape=(3, 16, 16), n=6, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, *shape, generator=g, dtype=torch.float64), torch.randint(0, 10, (n,), generator=g)


def frozen_sgd(groups):  # lr 0: a step leaves the weights, so .grad after train_step is the update
    return torch.optim.SGD(groups, lr=0.0)


def touched(loss: torch.Tensor, params: dict[str, torch.Tensor]) -> set[str]:
    """Names of the tensors that ``loss``'s gradient reaches with a non-zero value."""
    names = list(params)
    grads = torch.autograd.grad(loss, [params[n] for n in names], allow_unused=True, retain_graph=True)
    return {n for n, g in zip(names, grads) if g is not None and g.abs().sum() > 0}


def module_of(rule, name: str) -> int | None:
    """Which module a ``model.blocks.b...`` parameter belongs to."""
    if not name.startswith("model.blocks."):
        return None
    b = int(name.split(".")[2])
    for j, unit in enumerate(rule.units):
        if any(blk is rule.model.blocks[b] for blk in unit):
            return j
    raise AssertionError(name)


# ---------------------------------------------------------------------------------- splitter
@pytest.mark.parametrize("depth, k", [(32, 16), (32, 8), (32, 4), (32, 2), (110, 55), (14, 3)])
def test_split_modules_compose_to_the_network(depth, k):
    model = create_model("resnet", (3, 32, 32), 10, depth=depth, width=2).double().eval()
    units = split_modules(model, k)
    assert len(units) == k
    assert [b for u in units for b in u] == list(model.blocks)  # every block once, in order
    x = torch.randn(2, 3, 32, 32, dtype=torch.float64)
    assert torch.equal(compose(units, x), model(x))


def test_split_modules_k16_is_stem_plus_each_block_and_vgg_splits():
    units = split_modules(create_model("resnet32", (3, 32, 32), 10, width=2))
    assert len(units) == 16 and all(len(u) == 1 for u in units[:-1]) and len(units[-1]) == 2
    vgg = create_model("vgg11", (3, 32, 32), 10, width=0.125).double().eval()
    x = torch.randn(2, 3, 32, 32, dtype=torch.float64)
    assert torch.equal(compose(split_modules(vgg, 4), x), vgg(x))
    with pytest.raises(ConfigError, match="'modules' must be an integer in \\[1, 16\\]"):
        split_modules(create_model("resnet32", (3, 32, 32), 10, width=2), 17)


# ---------------------------------------------------------------------------------- isolation
@pytest.mark.parametrize("algo", ["dgl", "infopro", "auglocal"])
def test_module_loss_reaches_only_its_module_and_head(algo):
    rule = create_algorithm(algo, tiny_resnet()).double()
    x, y = data()
    params = {n: p for n, p in rule.named_parameters() if p.requires_grad}
    h, carry = x, rule.initial_carry(x)
    for j in range(len(rule.units) - 1):
        h = rule.forward_unit(j, h.detach())
        loss, _ = rule.aux_loss(j, rule.aux[j], h, carry, y)
        reached = touched(loss, params)
        assert {module_of(rule, n) for n in reached if n.startswith("model.")} == {j}
        assert {n.split(".")[1] for n in reached if n.startswith("aux.")} == {str(j)}
        assert not any(n.startswith("model.blocks.") and module_of(rule, n) != j for n in reached)


@pytest.mark.parametrize("algo", ["dgl", "infopro", "auglocal"])
def test_the_training_step_gives_each_module_the_gradient_of_its_own_loss_only(algo):
    """The schedule, not just the heads: after ``train_step`` every parameter's gradient is that of
    its module's loss on the module's detached input, so no gradient crossed a module boundary
    (a missing detach would add the next module's gradient to this one's)."""
    rule = create_algorithm(algo, tiny_resnet()).double()
    reference = copy.deepcopy(rule)
    rule.configure_optimizers(frozen_sgd)
    x, y = data()
    rule.train_step(x, y)
    h, carry = x, reference.initial_carry(x)
    for j in range(len(reference.units)):
        h = reference.forward_unit(j, h.detach())
        loss, carry, _ = reference.unit_loss(j, h, carry, y)
        loss.backward()
    for (name, p), q in zip(rule.named_parameters(), reference.parameters(), strict=True):
        if p.requires_grad:
            torch.testing.assert_close(p.grad, q.grad, rtol=1e-10, atol=1e-12, msg=name)


def test_mlaan_losses_reach_only_their_windows_and_never_the_ema_copies():
    rule = create_algorithm("mlaan", tiny_resnet()).double()
    x, y = data()
    params = {n: p for n, p in rule.named_parameters()}
    ema = {n for n in params if ".ema." in n}
    assert ema and not any(params[n].requires_grad for n in ema)
    trainable = {n: p for n, p in params.items() if p.requires_grad}
    k = rule.k
    for (kind, n), loss in rule.reference_losses(x, y).items():
        reached = touched(loss, trainable)
        modules = {module_of(rule, m) for m in reached if m.startswith("model.")}
        expected = set(range(n - k + 1, n + 1)) if kind == "cascade" else {n}
        assert modules == expected, (kind, n)
        heads = {m.split(".")[0] + "." + m.split(".")[1] for m in reached if not m.startswith("model.")}
        assert heads == ({f"cascade.{n}"} if kind == "cascade" else {f"aux.{n}"} if kind == "independent" else set())


# ---------------------------------------------------------------------------------- equivalence
@pytest.mark.parametrize("recompute", [False, True], ids=["shared-forward", "recompute"])
@pytest.mark.parametrize("options", [{}, {"base": "infopro"}, {"lam_head": "independent"}, {"lam": False},
                                     {"mlm": False}, {"window": 2, "modules": 4}])
def test_mlaan_step_equals_recomputed_windows(options, recompute):
    """One step's update, with the window graphs kept or rebuilt, equals the gradient of the
    authors' recomputing form, summed."""
    rule = create_algorithm("mlaan", tiny_resnet(), recompute=recompute, **options).double()
    reference = copy.deepcopy(rule)
    rule.configure_optimizers(frozen_sgd)
    x, y = data()
    rule.train_step(x, y)
    sum(reference.reference_losses(x, y).values()).backward()
    for (name, p), q in zip(rule.named_parameters(), reference.parameters()):
        if p.requires_grad:
            assert p.grad is not None, name
            torch.testing.assert_close(p.grad, q.grad, rtol=1e-10, atol=1e-12, msg=name)


def two_steps(rule, x, y, seed=0) -> dict[str, torch.Tensor]:
    """The rule's state (parameters and buffers: BatchNorm's running statistics and batch count)
    after two SGD steps, and the CPU generator's state after them."""
    rule.configure_optimizers(lambda groups: torch.optim.SGD(groups, lr=0.1, momentum=0.9))
    torch.manual_seed(seed)
    for _ in range(2):
        rule.train_step(x, y)
    return {**rule.state_dict(), "rng": torch.get_rng_state()}


@pytest.mark.parametrize("options", [{}, {"base": "infopro"}, {"window": 2, "modules": 4}])
def test_mlaan_recompute_takes_the_same_steps_and_counts_each_batch_once(options):
    """Rebuilding the windows changes neither the updates nor BatchNorm's running statistics: the
    rebuilt forwards do not update them a second time (the batch counts would differ)."""
    x, y = data()
    states = [two_steps(create_algorithm("mlaan", tiny_resnet(), recompute=r, **options).double(), x, y)
              for r in (False, True)]
    assert states[0].keys() == states[1].keys()
    counts = [k for k in states[0] if k.endswith("num_batches_tracked")]
    assert counts and all(states[1][k] == 2 for k in counts)
    for key, value in states[0].items():
        torch.testing.assert_close(states[1][key], value, rtol=1e-10, atol=1e-12, msg=key)


def test_mlaan_recompute_redraws_the_same_dropout_masks():
    """With dropout in the modules, a rebuilt forward replays the random numbers of the forward it
    rebuilds (else its gradients would follow other masks), and leaves the generator as it was."""
    x, y = data(shape=(1, 4, 4), n=8)

    def run(recompute, seed):
        torch.manual_seed(0)
        model = create_model("mlp", (1, 4, 4), 10, hidden=[12, 12, 12, 12], batch_norm=True, dropout=0.3).double()
        return two_steps(create_algorithm("mlaan", model, recompute=recompute), x, y, seed)

    kept, rebuilt, other_masks = run(False, 0), run(True, 0), run(False, 1)
    assert not torch.allclose(other_masks["model.blocks.0.1.weight"], kept["model.blocks.0.1.weight"])
    for key, value in kept.items():
        torch.testing.assert_close(rebuilt[key], value, rtol=1e-10, atol=1e-12, msg=key)


def test_mlaan_recompute_keeps_one_module_graph_as_dgl_does():
    """Rebuilding the windows brings MLAAN's autograd-saved peak to DGL's (one module's graph and
    one head's at a time; a push saves nothing more, not even its error), where keeping them
    holds more than twice as much; the step's peak tensor memory falls by more than the k − 1
    inputs the rebuilt windows hold instead of graphs."""
    x, y = data(n=32)
    memory = {}
    for name, algo, options in [("dgl", "dgl", {}), ("kept", "mlaan", {"recompute": False}),
                                ("rebuilt", "mlaan", {"recompute": True})]:
        rule = create_algorithm(algo, tiny_resnet(width=8), **options).double()
        rule.configure_optimizers(lambda groups: torch.optim.SGD(groups, lr=0.01, momentum=0.9))
        memory[name] = step_memory(rule, x, y)
    activation = max(x.element_size() * len(x) * math.prod(s) for s in rule.shapes) / 2**20
    assert memory["rebuilt"]["saved_mb"] == memory["dgl"]["saved_mb"]
    assert memory["kept"]["saved_mb"] > 2 * memory["dgl"]["saved_mb"]
    peak = {name: m["resident_mb"] + m["cpu_peak_above_baseline_mb"] for name, m in memory.items()}
    assert peak["kept"] - peak["rebuilt"] > (rule.k - 1) * activation, (peak, activation)


@pytest.mark.parametrize("recompute", [False, True], ids=["shared-forward", "recompute"])
def test_mlaan_weight_gradient_passes_per_module(recompute):
    """With kept graphs, the errors reaching a module (its independent head's and every window's)
    are summed at its output and reach its weights in one backward pass; the windows' own passes
    carry errors to module inputs only. Rebuilt windows send each error to the weights as it
    comes: the independent head's and the k windows' make k + 1 passes through an inner module."""
    rule = create_algorithm("mlaan", tiny_resnet(), recompute=recompute).double()
    rule.configure_optimizers(frozen_sgd)
    passes = collections.Counter()
    for name, p in rule.model.named_parameters():
        p.register_post_accumulate_grad_hook(lambda p, name=name: passes.update([name]))
    rule.train_step(*data())
    per_module = {}
    for name, count in passes.items():
        if (j := module_of(rule, "model." + name)) is not None:
            per_module.setdefault(j, set()).add(count)
    windows = {j: sum(n - rule.k + 1 <= j <= n for n in rule.window_ends) for j in range(len(rule.units))}
    assert max(windows.values()) == rule.k
    for j, counts in per_module.items():
        expected = 1 if not recompute or j == len(rule.units) - 1 else 1 + windows[j]
        assert counts == {expected}, (j, counts)


def test_error_root_sends_its_error_once_and_frees_it_from_a_retained_graph():
    """MLAAN's pushes enter a window's error as the gradient of a root: exactly ``e`` reaches the
    module's output, and ``e`` is freed by the backward although the module's graph is kept for
    the next window (a root ``(out * e).sum()`` would save ``e`` in that graph)."""
    x = torch.randn(5, dtype=torch.float64, requires_grad=True)
    out = x.sin()
    e = torch.randn(5, dtype=torch.float64)
    expected, held = e * x.detach().cos(), weakref.ref(e.untyped_storage())
    root = ErrorRoot.apply(out, e)
    del e
    root.backward(retain_graph=True)
    assert torch.equal(x.grad, expected)
    assert held() is None, "the error outlived its backward"
    out.backward(torch.ones(5, dtype=torch.float64))  # the module's graph is still there
    torch.testing.assert_close(x.grad, expected + x.detach().cos())


def test_mlaan_recompute_frees_the_held_copy_of_each_rebuilt_output():
    """A rebuilt module's output equals the held input of the module after it; when the window's
    error is pushed through the rebuilt module, that held copy's storage is already freed and the
    held input is the rebuilt output itself, so the two are never alive together."""
    rule = create_algorithm("mlaan", tiny_resnet(), recompute=True).double()
    rule.configure_optimizers(frozen_sgd)
    window_push, push = rule._window_push, rule._push
    pending, checked = {}, []

    def spy_window_push(j, error, live, *args, **kwargs):
        pending.update(j=j, live=live, held=weakref.ref(live[j + 1][0].untyped_storage()))
        window_push(j, error, live, *args, **kwargs)

    def spy_push(out, error, j, *args, **kwargs):
        if pending.pop("j", None) == j:  # a window's push, not a module's independent one
            assert pending["held"]() is None, f"module {j + 1}: the held copy of its input is still alive"
            assert pending["live"][j + 1][0].untyped_storage().data_ptr() == out.untyped_storage().data_ptr()
            checked.append(j)
        push(out, error, j, *args, **kwargs)

    rule._window_push, rule._push = spy_window_push, spy_push
    rule.train_step(*data())
    assert sorted(checked) == sorted(j for n in rule.window_ends for j in range(n - rule.k + 1, n + 1))


@pytest.mark.parametrize("base", ["dgl", "infopro"])
def test_mlaan_without_mlm_and_lam_is_its_base(base):
    x, y = data()
    rules = [create_algorithm("mlaan", tiny_resnet(), base=base, mlm=False, lam=False).double(),
             create_algorithm(base, tiny_resnet()).double()]
    for rule in rules:
        rule.configure_optimizers(lambda groups: torch.optim.SGD(groups, lr=0.1, momentum=0.9))
        for _ in range(2):
            rule.train_step(x, y)
    for p, q in zip(rules[0].parameters(), rules[1].parameters()):
        torch.testing.assert_close(p, q, rtol=1e-10, atol=1e-12)


def test_mlaan_with_a_1_sends_dgl_s_gradient_into_the_backbone():
    """Loss weights a / 1 - a (spec: a = 0.001 on the independent losses): at a = 1 the cascade
    windows send nothing into the backbone, whose gradient is then DGL's; with the weights
    swapped it would be the windows' alone."""
    x, y = data()
    mlaan = create_algorithm("mlaan", tiny_resnet(), a=1.0, lam=False).double()
    dgl = create_algorithm("dgl", tiny_resnet()).double()
    assert create_algorithm("mlaan", tiny_resnet()).hp.a == 0.001
    for rule in (mlaan, dgl):
        rule.configure_optimizers(frozen_sgd)
        rule.train_step(x, y)
    for (name, p), q in zip(mlaan.model.named_parameters(), dgl.model.parameters(), strict=True):
        torch.testing.assert_close(p.grad, q.grad, rtol=1e-10, atol=1e-12, msg=name)


def test_mlaan_trains_one_module_at_a_time_only_without_windows_and_leap_copies():
    """Layer-parallel stages run one module each: a cascade window spans k modules and LAM's EMA
    copy follows a later module's block, so both are refused; without them a module's step is
    DGL's."""
    x, y = data()
    for options, reason in [({}, "a cascade window"), ({"mlm": False}, "LAM's EMA copies")]:
        with pytest.raises(ConfigError, match=reason):
            create_algorithm("mlaan", tiny_resnet(), **options).double().train_unit(0, x, None, y)
    rules = [create_algorithm("mlaan", tiny_resnet(), mlm=False, lam=False).double(), create_algorithm("dgl", tiny_resnet()).double()]
    for rule in rules:
        rule.configure_optimizers(lambda groups: torch.optim.SGD(groups, lr=0.1))
    outputs = [rule.train_unit(0, x, None, y).h for rule in rules]
    torch.testing.assert_close(outputs[0], outputs[1], rtol=0, atol=0)
    for p, q in zip(rules[0].parameters(), rules[1].parameters(), strict=True):
        torch.testing.assert_close(p, q, rtol=0, atol=0)


def test_infopro_lambda_schedule_interpolates_over_modules():
    rule = create_algorithm("infopro", create_model("resnet32", (3, 32, 32), 10, width=2))
    weights = [rule.loss_weights(i) for i in range(15)]
    assert weights[0] == pytest.approx((5.0, 0.05)) and weights[14] == pytest.approx((0.2, 0.5))
    assert weights[7] == pytest.approx((2.6, 0.275))


# ---------------------------------------------------------------------------------- EMA
def test_ema_copies_move_exactly_by_the_ema_rule_each_step():
    rule = create_algorithm("mlaan", tiny_resnet(), lam_head="independent").double()
    rule.configure_optimizers(lambda groups: torch.optim.SGD(groups, lr=0.5))
    heads = rule.leap_heads()
    assert heads
    for head in heads:  # initialised from the backbone block it follows
        for e, s in zip(head.ema.parameters(), rule.model.blocks[head.source].parameters()):
            assert torch.equal(e, s)
    x, y = data()
    for step in range(2):
        before = [[e.detach().clone() for e in h.ema.parameters()] for h in heads]
        rule.train_step(x, y)
        for head, old in zip(heads, before):
            for e, e0, s in zip(head.ema.parameters(), old, rule.model.blocks[head.source].parameters()):
                assert e.grad is None
                torch.testing.assert_close(e, 0.995 * e0 + 0.005 * s.detach(), rtol=0, atol=1e-14)
                if step:
                    assert not torch.equal(e, e0)


def test_leap_head_follows_the_next_stage():
    rule = create_algorithm("mlaan", create_model("resnet32", (3, 32, 32), 10, width=2), lam_head="independent")
    # Module j = block j (stem 0, stage 1 = blocks 1-5, stage 2 = 6-10, stage 3 = 11-15).
    sources = [rule.aux[j].classifier.source for j in range(15)]
    assert sources == [6] * 6 + [11] * 5 + [12, 13, 14, 15]
    assert len(rule.aux[0].classifier.copies) == 1 and len(rule.aux[13].classifier.copies) == 0


def test_options_are_checked():
    model = tiny_resnet()
    with pytest.raises(ConfigError, match="unknown base 'bp'"):
        create_algorithm("mlaan", model, base="bp")
    with pytest.raises(ConfigError, match="lam_head='cascade' needs mlm=true"):
        create_algorithm("mlaan", model, mlm=False, lam_head="cascade")
    with pytest.raises(ConfigError, match="'recompute' must be true or false"):
        create_algorithm("mlaan", model, recompute="yes")
    with pytest.raises(ConfigError, match="'head_width' 0 builds an InfoPro head with no hidden units"):
        create_algorithm("mlaan", model, base="infopro", head_width=0)
    with pytest.raises(ConfigError, match="'recon_weight' must be two"):
        create_algorithm("infopro", model, recon_weight=[1.0])


# ---------------------------------------------------------------------------------- shapes
@pytest.mark.parametrize("setup", preset_setups(), ids=lambda s: "-".join([s[0], s[1], *map(str, s[2].values())]))
@pytest.mark.parametrize("shape", [(3, 32, 32), (1, 28, 28)], ids=["cifar", "mnist"])
def test_every_preset_k_runs_one_step(setup, shape):
    model_name, algo, algo_args = setup
    model = create_model(model_name, shape, 10, width=2)
    rule = create_algorithm(algo, model, **algo_args)
    rule.configure_optimizers(lambda groups: torch.optim.SGD(groups, lr=0.1))
    x, y = torch.randn(2, *shape), torch.randint(0, 10, (2,))
    result = rule.train_step(x, y)
    assert torch.isfinite(result.loss) and rule.predict(x).shape == (2, 10)


# ---------------------------------------------------------------------------------- learning
@pytest.mark.parametrize("algo", ["dgl", "mlaan"])
def test_learns_digits_with_a_small_resnet(algo, tmp_path):
    result = train(algo=algo, model="resnet", dataset="digits", model_args={"depth": 8, "width": 8}, epochs=3,
                   batch_size=64, lr=3e-3, seed=0, progress=False, out=str(tmp_path / algo))
    assert result.summary["final"]["test_acc"] >= 0.85, result.summary["final"]


@pytest.mark.real_data
@pytest.mark.slow
# Measured on 2 cores, seed 0, 1 epoch: DGL at lr 3e-3 96.4% (about 100 s); MLAAN at lr 6e-3 96.18%
# (about 100 s at 1 thread). MLAAN needs the larger step here: at DGL's lr it reached 92.2%, at 1e-3 85.2%.
@pytest.mark.parametrize("algo, lr", [("dgl", 3e-3), ("mlaan", 6e-3)])
def test_small_resnet_on_real_mnist_in_one_epoch(algo, lr, data_dir, tmp_path):
    result = train(algo=algo, model="resnet", dataset="mnist", data_dir=str(data_dir), model_args={"depth": 8, "width": 8},
                   epochs=1, batch_size=64, lr=lr, seed=0, progress=False, out=str(tmp_path / algo))
    assert result.summary["final"]["test_acc"] >= 0.95, result.summary["final"]
