"""SLL (ALGORITHMS.md, section SLL), grouped by oracle: locality (no gradient crosses a layer;
the per-layer schedule applies each layer's own gradient, taken before any layer steps), the
Bhattacharyya term against a hand computation, the fixed random projections, memory flat in
depth (autograd-saved bytes), and learning on digits and real MNIST."""

from __future__ import annotations

import math

import pytest
import torch

from bioplausible import train
from bioplausible.algorithms import create_algorithm
from bioplausible.algorithms.sll import bhattacharyya_loss
from bioplausible.errors import ConfigError
from bioplausible.models import create_model
from bioplausible.training.memory import SavedBytes
from helpers import batch, small_cnn, small_mlp
from layerwise_checks import assert_schedule_equals_summed_backward


def small_vit(seed: int = 0):
    torch.manual_seed(seed)
    return create_model("vit_tiny", input_shape=(1, 8, 8), num_classes=5, patch_size=4, dim=8, depth=3,
                        heads=2).double()


def sgd(groups):
    return torch.optim.SGD(groups, lr=0.1)


def unit_of(rule) -> dict[str, int]:
    """Which SLL layer owns each model parameter."""
    owner = {id(p): i for i, unit in enumerate(rule.units) for b in unit for p in b.parameters()}
    return {n: owner[id(p)] for n, p in rule.model.named_parameters()}


# ---------------------------------------------------------------------- locality
CASES = {
    "mlp": (small_mlp, {}),
    "cnn": (small_cnn, {}),
    "mlp-model-head": (small_mlp, {"head": "model"}),
    "vit": (small_vit, {}),
    "vit-blockwise": (small_vit, {"block_size": 2, "token_pool": "mean"}),
}


@pytest.mark.parametrize("block_size, expected", [(1, [1, 1, 1, 0]), (2, [2, 1]), (3, [3, 0])])
def test_vit_units_hold_block_size_transformer_blocks_with_the_embedding_in_the_first(block_size, expected):
    """SLL^{i+}: units of i transformer blocks. The patch embedding joins the first unit (alone,
    its class-token output does not depend on the input, so its own loss would train nothing);
    the head counts as a block, as an MLP's classifier layer does."""
    rule = create_algorithm("sll", small_vit(), block_size=block_size)
    kinds = [[type(b).__name__ for b in unit] for unit in rule.units]
    assert [k.count("TransformerBlock") for k in kinds] == expected
    assert kinds[0][0] == "PatchEmbedding" and kinds[-1][-1] == "ViTHead"


@pytest.mark.parametrize("case", CASES)
def test_a_layer_loss_has_zero_gradient_for_every_other_layer(case):
    build, hp = CASES[case]
    rule = create_algorithm("sll", build(), **hp)
    names, params = zip(*rule.model.named_parameters())
    owner = unit_of(rule)
    for i, loss in enumerate(rule.local_losses(*batch(rule.model))):
        for n, g in zip(names, torch.autograd.grad(loss, params, retain_graph=True, allow_unused=True)):
            if owner[n] != i:
                assert g is None or not g.any(), f"loss of layer {i} reaches {n}"
            else:
                assert g is not None and g.any(), f"loss of layer {i} does not reach its own {n}"


def error_at_first_hidden_layer(perturb: bool) -> torch.Tensor:
    """The C1 probe of test_c1_weight_transport.py, on SLL's local losses."""
    rule = create_algorithm("sll", small_mlp(seed=3))
    model, seen = rule.model, {}

    def keep(_, __, output):
        output.retain_grad()
        seen["h"] = output

    def perturb_layer_above(*_):
        if perturb:  # after the forward, without autograd noticing
            model.blocks[1][0].weight.data.add_(torch.randn_like(model.blocks[1][0].weight))

    model.blocks[0].register_forward_hook(keep)
    model.blocks[-1].register_forward_hook(perturb_layer_above)
    torch.manual_seed(2)
    sum(rule.local_losses(*batch(model))).backward()
    return seen["h"].grad


def test_c1_probe_error_at_a_layer_ignores_the_weights_above():
    assert torch.equal(error_at_first_hidden_layer(False), error_at_first_hidden_layer(True))


@pytest.mark.parametrize("case", CASES)
def test_train_step_applies_the_gradients_of_the_summed_local_losses(case):
    """Layer i steps before layer i+1 runs, yet on h_i computed before that step, so the update
    of every layer is exactly the gradient of its own local loss."""
    build, hp = CASES[case]
    rule = create_algorithm("sll", build(), **hp)
    assert_schedule_equals_summed_backward(rule, *batch(rule.model))


def test_the_first_layer_has_no_bc_term_and_local_loss_only_drops_all():
    x, y = batch(small_mlp())
    full = create_algorithm("sll", small_mlp(), keep_prob=1.0)
    ablation = create_algorithm("sll", small_mlp(), keep_prob=1.0, local_loss_only=True)
    zero = create_algorithm("sll", small_mlp(), keep_prob=1.0, bc_weight=0.0)
    l_full, l_abl, l_zero = (r.local_losses(x, y) for r in (full, ablation, zero))
    assert torch.equal(l_full[0], l_abl[0])  # layer 0: CE only in both
    assert all(torch.equal(a, b) for a, b in zip(l_abl, l_zero))  # ablation = λ 0
    assert all(a > b for a, b in zip(l_full[1:], l_abl[1:]))  # BC > 0 for untrained layers


def test_per_layer_lambda_scales_each_bc_term():
    x, y = batch(small_mlp())
    base = create_algorithm("sll", small_mlp(), keep_prob=1.0, local_loss_only=True).local_losses(x, y)
    one = create_algorithm("sll", small_mlp(), keep_prob=1.0).local_losses(x, y)
    mixed = create_algorithm("sll", small_mlp(), keep_prob=1.0, bc_weight=[0.0, 2.0]).local_losses(x, y)
    assert torch.equal(mixed[1], base[1])
    assert torch.allclose(mixed[2] - base[2], 2 * (one[2] - base[2]))


# ---------------------------------------------------------------------- the BC term
def test_bc_term_matches_a_hand_computation():
    q = torch.tensor([[0.5, 0.3, 0.2], [0.1, 0.1, 0.8]], dtype=torch.float64)
    p = torch.tensor([[0.2, 0.2, 0.6], [0.7, 0.2, 0.1]], dtype=torch.float64)
    bc0 = math.sqrt(0.5 * 0.2) + math.sqrt(0.3 * 0.2) + math.sqrt(0.2 * 0.6)
    bc1 = math.sqrt(0.1 * 0.7) + math.sqrt(0.1 * 0.2) + math.sqrt(0.8 * 0.1)
    expected = -(math.log(bc0) + math.log(bc1)) / 2
    # Logits with a per-row shift: the softmax is shift-invariant, the loss must be too.
    got = bhattacharyya_loss(q.log() + 3.0, p.log() - 1.5)
    assert got.item() == pytest.approx(expected, rel=1e-12)


def test_bc_term_is_zero_for_identical_distributions():
    v = torch.randn(6, 10, dtype=torch.float64)
    assert bhattacharyya_loss(v, v.clone()).abs().item() < 1e-15
    assert bhattacharyya_loss(v, v + 7.0).abs().item() < 1e-14


def test_bc_gradient_does_not_reach_the_parent():
    v = torch.randn(4, 5, dtype=torch.float64, requires_grad=True)
    parent = torch.randn(4, 5, dtype=torch.float64, requires_grad=True)
    bhattacharyya_loss(v, parent).backward()
    assert parent.grad is None
    assert v.grad is not None and v.grad.any()


# ---------------------------------------------------------------------- the random projections
def projections(rule) -> list[torch.Tensor]:
    return [p.weight.clone() for p in rule.projections]


def test_r_depends_on_the_seed_only():
    torch.manual_seed(1)
    a = projections(create_algorithm("sll", small_mlp(seed=1), seed=4))
    torch.randn(100)  # other draws of the global RNG must not move R
    b = projections(create_algorithm("sll", small_mlp(seed=2), seed=4))
    c = projections(create_algorithm("sll", small_mlp(seed=1), seed=5))
    assert all(torch.equal(r, s) for r, s in zip(a, b))
    assert not any(torch.equal(r, s) for r, s in zip(a, c))
    assert [tuple(r.shape) for r in a] == [(5, 12), (5, 9), (5, 5)]  # K × d'_i


def test_r_is_never_updated_and_is_checkpointed():
    rule = create_algorithm("sll", small_cnn())
    rule.configure_optimizers(sgd)
    before = projections(rule)
    for seed in range(3):
        rule.train_step(*batch(rule.model, seed=seed))
    assert all(torch.equal(r, s) for r, s in zip(before, projections(rule)))
    assert not any(p is proj.weight for p in rule.parameters() for proj in rule.projections)
    assert "projections.0.weight" in rule.state_dict()


def read_effective_r(projection) -> torch.Tensor:
    """The matrix the projection applies: v = z (M ⊙ R)ᵀ / √d', read with z = √d' · I."""
    d = projection.weight.shape[1]
    return projection(math.sqrt(d) * torch.eye(d, dtype=projection.weight.dtype)).T


def test_mask_changes_between_training_steps_and_is_absent_in_eval():
    rule = create_algorithm("sll", small_mlp(), keep_prob=0.5)
    proj = rule.projections[0]
    first, second = read_effective_r(proj), read_effective_r(proj)
    for masked in (first, second):
        kept = masked != 0
        assert torch.allclose(masked[kept], proj.weight[kept]) and 0 < kept.sum() < kept.numel()
    assert not torch.equal(first, second)
    rule.eval()
    assert torch.allclose(read_effective_r(proj), 0.5 * proj.weight)  # expectation p·R
    assert torch.equal(read_effective_r(proj), read_effective_r(proj))


def test_each_layer_draws_its_masks_from_its_own_stream():
    """A layer's masks do not depend on what was drawn before it (in a pipeline, the other
    stages draw on other ranks), and the schedule leaves the global RNG alone."""
    one, staged = (create_algorithm("sll", small_mlp(), keep_prob=0.5) for _ in range(2))
    for rule in (one, staged):
        rule.configure_optimizers(sgd)
    x, y = batch(one.model)
    before = torch.get_rng_state()
    one.train_step(x, y)
    assert torch.equal(torch.get_rng_state(), before)
    h, carry = x, None
    for i in range(len(staged.units)):
        torch.rand(100)  # another stage's draws, in between
        result = staged.run_unit(i, h, carry, y)
        h, carry = result.h, result.carry
    for (name, p), q in zip(one.named_parameters(), staged.parameters()):
        assert torch.equal(p, q), name


def test_streams_differ_between_layers_and_runs_and_repeat_with_the_seed():
    def first_mask(seed, unit):
        rule = create_algorithm("sll", small_mlp(seed=seed), keep_prob=0.5)  # small_mlp seeds torch
        with rule.unit_rng(unit):
            return rule.projections[0].mask()

    assert torch.equal(first_mask(0, 0), first_mask(0, 0))
    assert not torch.equal(first_mask(0, 0), first_mask(0, 1))
    assert not torch.equal(first_mask(0, 0), first_mask(1, 0))


def test_streams_are_keyed_by_device_type_so_a_resume_on_another_gpu_continues_them():
    """A pipeline stage on cuda:1 saves its streams; resumed in one process on cuda:0 they must
    continue, not restart (a restart would repeat epoch 1's masks on R)."""
    def rule_with_one_draw():
        rule = create_algorithm("sll", small_mlp(), keep_prob=0.5)
        with rule.unit_rng(0):
            rule.projections[0].mask()
        return rule

    uninterrupted, resumed = rule_with_one_draw(), create_algorithm("sll", small_mlp(), keep_prob=0.5)
    saved = uninterrupted.random_streams()
    assert set(saved[0]) == {"cpu"}
    cuda_state = torch.Generator().manual_seed(5).get_state()  # the bytes a GPU stage would have saved
    resumed.load_random_streams({i: {**states, "cuda:1": cuda_state} for i, states in saved.items()})
    assert set(resumed.unit_rng_states[0]) == {"cpu", "cuda"}
    assert torch.equal(resumed.unit_rng_states[0]["cuda"], cuda_state)
    masks = []
    for rule in (uninterrupted, resumed):
        with rule.unit_rng(0):
            masks.append(rule.projections[0].mask())
    assert torch.equal(*masks)


# ---------------------------------------------------------------------- memory
def peak_saved_bytes(algo: str, depth: int, width: int = 256) -> int:
    torch.manual_seed(0)
    model = create_model("mlp", input_shape=(1, 16, 16), num_classes=10, hidden=[width] * depth)
    rule = create_algorithm(algo, model)
    rule.configure_optimizers(sgd)
    x, y = batch(model, n=64)
    meter = SavedBytes(rule)
    with torch.autograd.graph.saved_tensors_hooks(meter.pack, meter.unpack):
        rule.train_step(x, y)
    assert meter.live == 0  # every graph was freed
    return meter.peak


def test_saved_memory_is_flat_in_depth_for_sll_and_grows_for_bp():
    sll2, sll16 = peak_saved_bytes("sll", 2), peak_saved_bytes("sll", 16)
    bp2, bp16 = peak_saved_bytes("bp", 2), peak_saved_bytes("bp", 16)
    assert sll16 <= 1.10 * sll2, (sll2, sll16)
    assert bp16 >= 4 * bp2, (bp2, bp16)
    assert sll16 < bp16 / 5


# ---------------------------------------------------------------------- configuration
@pytest.mark.parametrize("options, message", [
    ({"keep_prob": 0.0}, "'keep_prob' must be in"),
    ({"keep_prob": 1.5}, "'keep_prob' must be in"),
    ({"bc_weight": -1.0}, "'bc_weight' must be non-negative"),
    ({"bc_weight": [1.0]}, "'bc_weight' has 1 entries but this model has 2 layers with a parent"),
    ({"head": "learned"}, "unknown head 'learned'"),
    ({"token_pool": "max"}, "unknown token_pool 'max'"),
    ({"block_size": 0}, "'block_size' must be a positive integer"),
    ({"loss": "mse"}, "'loss' must be 'ce'"),
    ({"head": "model", "block_size": 3}, "leaves no SLL layer"),
])
def test_bad_hyperparameters_are_named(options, message):
    with pytest.raises(ConfigError, match=message):
        create_algorithm("sll", small_mlp(), **options)


def test_a_model_that_is_not_a_chain_of_blocks_is_refused():
    rnn = create_model("elman_rnn", input_shape=(4, 3), num_classes=5)
    with pytest.raises(ConfigError, match="algorithm 'sll' cannot train ElmanRNN"):
        create_algorithm("sll", rnn)


def test_model_head_predicts_with_the_model_and_projection_head_with_v():
    x, _ = batch(small_mlp())
    rule = create_algorithm("sll", small_mlp(), head="model").eval()
    assert torch.equal(rule.predict(x), rule.model(x))
    rule = create_algorithm("sll", small_mlp(), keep_prob=0.5).eval()
    logits = rule.model(x)
    assert torch.allclose(rule.predict(x), logits @ (0.5 * rule.projections[-1].weight).T / math.sqrt(5))


def test_diagnostics_report_every_layer():
    rule = create_algorithm("sll", small_mlp())
    rule.configure_optimizers(sgd)
    rule.train_step(*batch(rule.model))
    rows = rule.diagnostics(*batch(rule.model, n=40, seed=3))
    assert [r["layer"] for r in rows] == [0, 1, 2]
    assert rows[0]["bc"] == 0.0 and rows[1]["bc"] > 0 and rows[0]["train_ce"] > 0
    assert all(0 <= r["probe_acc"] <= 1 and 0 <= r["readout_acc"] <= 1 for r in rows)


# ---------------------------------------------------------------------- learning
@pytest.mark.slow
@pytest.mark.parametrize("model, model_args, algo_args", [
    ("cnn", {"channels": [16], "hidden": 64}, {}),
    ("mlp", {"hidden": [128, 128]}, {"head": "model"}),
])
def test_learns_digits(model, model_args, algo_args, tmp_path):
    result = train(algo="sll", model=model, dataset="digits", epochs=15, batch_size=32, lr=1e-3,
                   model_args=model_args, algo_args=algo_args, seed=0, progress=False, out=str(tmp_path))
    assert result.summary["final"]["test_acc"] >= 0.90, result.summary["final"]


@pytest.mark.real_data
@pytest.mark.slow
def test_mlp_reaches_95_percent_on_real_mnist_in_two_epochs(data_dir, tmp_path):
    result = train(algo="sll", model="mlp", dataset="mnist", data_dir=str(data_dir), epochs=2, batch_size=64,
                   lr=1e-3, model_args={"hidden": [256]}, seed=0, progress=False, out=str(tmp_path))
    assert result.summary["final"]["test_acc"] >= 0.95, result.summary["final"]
