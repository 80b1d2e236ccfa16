"""Architectures: every registered model builds, runs, backpropagates and splits at its blocks."""

from __future__ import annotations

import functools
import math

import pytest
import torch
from torch import nn

from bioplausible.errors import ConfigError, ShapeError
from bioplausible.models import MODELS, Network, create_model
from bioplausible.models.resnet import BasicBlock
from bioplausible.models.rnn import ElmanRNN

NUM_CLASSES = 7  # not 10, so a hard-coded class count shows up

# name -> cases (input_shape, kwargs, batch). Every registered model needs at least one case
# (test_every_model_has_a_case fails otherwise); shapes are the smallest realistic ones.
CASES: dict[str, list[tuple[tuple[int, ...], dict, int]]] = {
    "mlp": [
        ((1, 8, 8), {}, 4),
        ((1, 8, 8), {"hidden": ()}, 3),
        ((64,), {"hidden": (32, 16), "activation": "tanh", "bias": False}, 2),
    ],
    "mlp_dll_mnist": [((1, 28, 28), {}, 2)],
    "mlp_dll_cifar": [((3, 32, 32), {}, 2)],
    "cnn": [
        ((1, 8, 8), {}, 4),
        ((1, 28, 28), {"channels": (8, 16, 16)}, 2),
        ((3, 32, 32), {"channels": (8, 8), "hidden": 16}, 2),
    ],
    "dendritic_mlp": [((1, 8, 8), {"hidden": (6,), "steps": 4}, 2), ((12,), {"hidden": (8, 6), "steps": 3}, 2)],
    "dll_cnn_mnist": [((1, 28, 28), {}, 2)],
    "dll_cnn_fmnist": [((1, 28, 28), {}, 2)],
    "dll_cnn_svhn": [((3, 32, 32), {}, 2)],
    "dll_cnn_cifar10": [((3, 32, 32), {}, 2)],
    "vgg11": [
        ((3, 32, 32), {"width": 0.25}, 2),
        ((1, 28, 28), {"width": 0.125, "batch_norm": False}, 2),
    ],
    "resnet": [((3, 32, 32), {"depth": 8, "width": 4}, 2), ((1, 28, 28), {"depth": 14, "width": 4}, 2)],
    "resnet32": [((3, 32, 32), {}, 2)],
    # Full width is built (not run) in test_resnet_block_structure_and_size.
    "resnet110": [((3, 16, 16), {"width": 4}, 2)],
    "elman_rnn": [((1, 28, 28), {"hidden": 32}, 3), ((5, 3), {"hidden": 8, "readout": "all"}, 2)],
    "vit_tiny": [
        ((1, 28, 28), {"patch_size": 4, "dim": 32, "depth": 2}, 2),
        ((3, 32, 32), {"pool": "mean"}, 2),
    ],
}


def _params() -> list:
    params = []
    for name in MODELS.names():
        for i, case in enumerate(CASES.get(name, [None])):
            params.append(pytest.param(name, i, id=f"{name}-{i}"))
    return params


@functools.lru_cache(maxsize=None)
def build(name: str, i: int) -> Network:
    """One model per case, shared by the tests (each test sets train/eval and clears grads)."""
    if name not in CASES:
        pytest.fail(f"model '{name}' is registered but has no entry in CASES of {__file__}")
    shape, kwargs, _ = CASES[name][i]
    torch.manual_seed(0)
    return create_model(name, shape, NUM_CLASSES, **kwargs)


def batch(name: str, i: int) -> torch.Tensor:
    shape, _, b = CASES[name][i]
    return torch.randn(b, *shape, generator=torch.Generator().manual_seed(1))


def expected_output_shape(model: Network, x: torch.Tensor) -> tuple[int, ...]:
    if isinstance(model, ElmanRNN) and model.readout == "all":
        return (x.shape[0], model.cell.steps, NUM_CLASSES)
    return (x.shape[0], NUM_CLASSES)


def test_every_model_has_a_case():
    missing = [n for n in MODELS.names() if n not in CASES]
    assert not missing, f"registered models without a test case: {missing}"
    stale = [n for n in CASES if n not in MODELS]
    assert not stale, f"test cases for unregistered models: {stale}"


@pytest.mark.parametrize("name,i", _params())
def test_forward_shape_and_attributes(name, i):
    model = build(name, i)
    x = batch(name, i)
    model.train()
    y = model(x)
    assert tuple(y.shape) == expected_output_shape(model, x)
    assert torch.isfinite(y).all()
    assert isinstance(model, Network) and isinstance(model.blocks, nn.ModuleList)
    assert model.input_shape == CASES[name][i][0]
    assert model.num_classes == NUM_CLASSES


@pytest.mark.parametrize("name,i", _params())
def test_backward_reaches_every_parameter(name, i):
    model = build(name, i)
    x = batch(name, i)
    model.train()
    model.zero_grad(set_to_none=True)
    y = model(x)
    # A random weighting of the outputs, so no gradient vanishes by symmetry (e.g. after BN).
    (y * torch.randn(y.shape, generator=torch.Generator().manual_seed(2))).sum().backward()
    for pname, p in model.named_parameters():
        assert p.grad is not None, f"{name}: no gradient for {pname}"
        assert torch.isfinite(p.grad).all(), f"{name}: non-finite gradient for {pname}"
    assert any(p.grad.abs().sum() > 0 for p in model.parameters())


@pytest.mark.parametrize("name,i", _params())
def test_blocks_compose_to_forward(name, i):
    # Holds for the RNN too: its single block is the whole recurrent computation.
    model = build(name, i)
    x = batch(name, i)
    model.eval()
    with torch.no_grad():
        h = x
        for block in model.blocks:
            h = block(h)
        assert torch.allclose(h, model(x), atol=1e-6)


@pytest.mark.parametrize("name,i", _params())
def test_wrong_input_shape_names_expected_shape(name, i):
    model = build(name, i)
    shape = CASES[name][i][0]
    wrong = torch.zeros(2, *shape[:-1], shape[-1] + 1)
    with pytest.raises(ShapeError, match=", ".join(map(str, shape))):
        model(wrong)
    with pytest.raises(ShapeError):
        model(torch.zeros(*shape))  # no batch dimension


@pytest.mark.parametrize("name,i", _params())
def test_layers_are_plain_and_rewirable(name, i):
    # Learning rules swap nn.Linear / nn.Conv2d modules and need integer padding.
    model = build(name, i)
    assert not any(isinstance(m, nn.MultiheadAttention) for m in model.modules())
    assert any(isinstance(m, (nn.Linear, nn.Conv2d)) for m in model.modules())
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            assert all(isinstance(p, int) for p in m.padding), m


def test_unknown_option_is_a_config_error():
    with pytest.raises(ConfigError, match="hiden"):
        create_model("mlp", (1, 8, 8), 10, hiden=(32,))
    with pytest.raises(ConfigError, match="no_such_model"):
        create_model("no_such_model", (1, 8, 8), 10)


@pytest.mark.parametrize(
    "name,shape,kwargs,match",
    [
        ("mlp", (1, 8, 8), {"hidden": (64, 0)}, "got 0"),
        ("mlp", (1, 8, 8), {"hidden": (-3,)}, "got -3"),
        ("mlp", (1, 8, 8), {"hidden": (2.5,)}, "got 2.5"),
        ("mlp", (1, 8, 8), {"activation": "swish"}, "swish"),
        ("cnn", (1, 8, 8), {"channels": (8, 0)}, "channels"),
        ("vgg11", (3, 32, 32), {"width": 0}, "width"),
        ("resnet", (3, 32, 32), {"depth": 33}, "6n\\+2.*33"),
        ("resnet", (3, 32, 32), {"depth": 2}, "6n\\+2"),
        ("elman_rnn", (5, 3), {"readout": "first"}, "first"),
        ("vit_tiny", (1, 28, 28), {"patch_size": 5}, "patch_size 5 must divide"),
        ("vit_tiny", (3, 32, 32), {"dim": 64, "heads": 3}, "heads 3"),
        ("vit_tiny", (3, 32, 32), {"pool": "max"}, "max"),
    ],
)
def test_invalid_options_are_config_errors(name, shape, kwargs, match):
    with pytest.raises(ConfigError, match=match):
        create_model(name, shape, 10, **kwargs)


@pytest.mark.parametrize(
    "name,shape,match",
    [
        ("dll_cnn_mnist", (1, 8, 8), "too small"),
        ("dll_cnn_cifar10", (3, 4, 4), "too small"),
        ("cnn", (784,), r"\(C, H, W\)"),
        ("resnet32", (28, 28), r"\(C, H, W\)"),
        ("elman_rnn", (2, 3, 4, 5), r"\(T, D\)"),
    ],
)
def test_input_shapes_a_model_cannot_take(name, shape, match):
    with pytest.raises(ShapeError, match=match):
        create_model(name, shape, 10)


def test_num_classes_is_validated():
    with pytest.raises(ConfigError, match="num_classes"):
        create_model("mlp", (4,), 0)


# --- facts about specific architectures ------------------------------------------------------


def test_resnet_block_structure_and_size():
    r32 = build("resnet32", 0)
    assert sum(isinstance(b, BasicBlock) for b in r32.blocks) == 15
    assert len(r32.blocks) == 17
    assert not isinstance(r32.blocks[0], BasicBlock) and not isinstance(r32.blocks[-1], BasicBlock)
    n_params = sum(p.numel() for p in r32.parameters())
    assert 0.45e6 < n_params < 0.48e6, n_params  # He et al. 2016, Table 6: 0.46M
    r110 = build("resnet110", 0)
    assert sum(isinstance(b, BasicBlock) for b in r110.blocks) == 54
    assert len(r110.blocks) == 56
    full110 = create_model("resnet110", (3, 32, 32), 10)
    assert 1.7e6 < sum(p.numel() for p in full110.parameters()) < 1.75e6  # Table 6: 1.7M
    # Downsampling happens in the first block of stages 2 and 3, through a projection shortcut.
    strides = [b.conv1.stride[0] for b in r32.blocks if isinstance(b, BasicBlock)]
    assert strides == [1] * 5 + [2] + [1] * 4 + [2] + [1] * 4
    assert isinstance(r32.blocks[6].shortcut, nn.Sequential)
    assert isinstance(r32.blocks[2].shortcut, nn.Identity)


@pytest.mark.parametrize(
    "name,shape,conv_out,projection",
    [
        ("dll_cnn_mnist", (1, 28, 28), (16, 3, 3), 200),
        ("dll_cnn_fmnist", (1, 28, 28), (64, 3, 3), 128),
        ("dll_cnn_svhn", (3, 32, 32), (64, 8, 8), 256),
        ("dll_cnn_cifar10", (3, 32, 32), (64, 4, 4), 256),
    ],
)
def test_dll_cnn_layout(name, shape, conv_out, projection):
    """DLL Appendix D.2.2: three conv blocks, a tanh projection layer, a linear output layer."""
    model = create_model(name, shape, 10)
    assert len(model.blocks) == 5
    with torch.no_grad():
        h = torch.zeros(1, *shape)
        for block in model.blocks[:3]:
            h = block(h)
    assert tuple(h.shape[1:]) == conv_out
    fc = model.blocks[3][1]
    assert isinstance(fc, nn.Linear) and fc.in_features == math.prod(conv_out)
    assert fc.out_features == projection
    assert isinstance(model.blocks[3][2], nn.Tanh)
    assert not any(isinstance(m, nn.Tanh) for m in model.blocks[4].modules())
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert all(isinstance(b[1], nn.Tanh) for b in model.blocks[:3])
    assert len(convs) == 3


def test_dll_cnn_mnist_flattened_width_is_144():
    fc = build("dll_cnn_mnist", 0).blocks[3][1]
    assert fc.in_features == 16 * 3 * 3 == 144 and fc.out_features == 200


def test_dll_mlp_presets():
    widths = lambda m: [l.out_features for l in m.modules() if isinstance(l, nn.Linear)]  # noqa: E731
    mnist, cifar = build("mlp_dll_mnist", 0), build("mlp_dll_cifar", 0)
    assert widths(mnist) == [1024, 512, 256, NUM_CLASSES]
    assert widths(cifar) == [4096, 2048, 1024, 256, NUM_CLASSES]
    assert cifar.blocks[0][1].in_features == 3072
    assert len(mnist.blocks) == 4 and isinstance(mnist.blocks[0][0], nn.Flatten)
    assert sum(isinstance(m, nn.Tanh) for m in mnist.modules()) == 3


def test_mlp_one_block_per_weight_layer():
    model = create_model("mlp", (1, 8, 8), 10, hidden=(32, 16))
    assert [type(m).__name__ for m in model.blocks[0]] == ["Flatten", "Linear", "ReLU"]
    assert [type(m).__name__ for m in model.blocks[1]] == ["Linear", "ReLU"]
    assert [type(m).__name__ for m in model.blocks[2]] == ["Linear"]


def test_vgg11_layout():
    # 32 -> 16 -> 8 -> 4 -> 2 -> 1; 28 -> 14 -> 7 -> 3 -> 1, so the 5th pool is skipped.
    for shape, pools in (((3, 32, 32), 5), ((1, 28, 28), 4)):
        model = create_model("vgg11", shape, 10, width=0.125)
        assert len(model.blocks) == 9  # 8 convs + head
        assert sum(isinstance(m, nn.Conv2d) for m in model.modules()) == 8
        assert sum(isinstance(m, nn.MaxPool2d) for m in model.modules()) == pools
        assert sum(isinstance(m, nn.BatchNorm2d) for m in model.modules()) == 8
    full = create_model("vgg11", (3, 32, 32), 10)
    widths = [m.out_channels for m in full.modules() if isinstance(m, nn.Conv2d)]
    assert widths == [64, 128, 256, 256, 512, 512, 512, 512]


def test_vit_structure():
    model = build("vit_tiny", 1)  # (3, 32, 32), patch 4: 64 patches + class token
    assert len(model.blocks) == 1 + 4 + 1
    with torch.no_grad():
        tokens = model.blocks[0](torch.zeros(2, 3, 32, 32))
    assert tokens.shape == (2, 65, 64)


def test_elman_rnn_matches_its_equations():
    torch.manual_seed(0)
    model = create_model("elman_rnn", (5, 3), 4, hidden=6, readout="all")
    cell = model.cell
    assert cell.W_h.bias is None and cell.W_x.bias is not None and cell.W_y.bias is None
    x = torch.randn(2, 5, 3)
    h = torch.zeros(2, 6)
    ys = []
    for t in range(5):
        h = torch.tanh(h @ cell.W_h.weight.T + x[:, t] @ cell.W_x.weight.T + cell.W_x.bias)
        ys.append(h @ cell.W_y.weight.T)
    assert torch.allclose(model(x), torch.stack(ys, 1), atol=1e-6)
    last = create_model("elman_rnn", (5, 3), 4, hidden=6)
    last.load_state_dict(model.state_dict())
    assert torch.allclose(last(x), ys[-1], atol=1e-6)


def test_elman_rnn_is_causal():
    torch.manual_seed(0)
    model = create_model("elman_rnn", (6, 3), 4, hidden=8, readout="all")
    x = torch.randn(2, 6, 3)
    x2 = x.clone()
    x2[:, 4] += 1.0
    with torch.no_grad():
        y, y2 = model(x), model(x2)
    assert torch.equal(y[:, :4], y2[:, :4])
    assert not torch.allclose(y[:, 4:], y2[:, 4:])


def test_elman_rnn_reads_images_row_by_row():
    torch.manual_seed(0)
    img = create_model("elman_rnn", (2, 4, 5), 3, hidden=8)  # 4 steps of 2*5 features
    seq = create_model("elman_rnn", (4, 10), 3, hidden=8)
    seq.load_state_dict(img.state_dict())
    x = torch.randn(2, 2, 4, 5)
    rows = torch.cat([x[:, 0], x[:, 1]], dim=2)  # [B, H, C*W]: row t of channel 0, then channel 1
    assert torch.allclose(img(x), seq(rows), atol=1e-6)
