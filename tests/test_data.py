"""Data layer: dataset loading, validation split, batching, sharding and augmentation."""

from __future__ import annotations

import math
import os
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from bioplausible.data import (
    BatchAugment,
    BatchLoader,
    DataSplits,
    cache_dir,
    list_datasets,
    load_dataset,
    resolve_data_dir,
)
from bioplausible.data.datasets import _carve_val
from bioplausible.data.vision import SPECS, tv_to_tensors
from bioplausible.errors import ConfigError, DatasetNotFoundError, ShapeError


@pytest.fixture(autouse=True)
def isolated_env(tmp_path, monkeypatch):
    """A private cache per test and no data dir from the environment."""
    monkeypatch.setenv("BIOPLAUSIBLE_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("BIOPLAUSIBLE_DATA", raising=False)


@pytest.fixture
def no_network(monkeypatch):
    """Every urllib download fails at once, as offline, and never hangs."""

    def refuse(*args, **kwargs):
        raise urllib.error.URLError("network disabled by test")

    monkeypatch.setattr(urllib.request, "urlopen", refuse)


def snapshot(root: Path) -> dict[str, tuple[int, int]]:
    return {str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns) for p in root.rglob("*")}


# --------------------------------------------------------------------------- registry, dirs


def test_list_datasets_names_every_dataset():
    expected = {"digits", "mnist", "fashion_mnist", "kmnist", "cifar10", "cifar100", "svhn", "stl10", "imagefolder"}
    assert expected <= set(list_datasets())


def test_unknown_dataset_is_config_error_listing_names():
    with pytest.raises(ConfigError, match="digits"):
        load_dataset("nope")


@pytest.mark.parametrize("bad", [-0.1, 1.0, 1.5, float("nan"), "0.1", True])
def test_val_split_out_of_range(bad):
    with pytest.raises(ConfigError, match="val_split"):
        load_dataset("digits", val_split=bad)


def test_resolve_data_dir_and_cache_dir(monkeypatch, tmp_path):
    assert resolve_data_dir() is None
    monkeypatch.setenv("BIOPLAUSIBLE_DATA", "/from/env")
    assert resolve_data_dir() == Path("/from/env")
    assert resolve_data_dir(tmp_path) == tmp_path  # explicit wins
    assert cache_dir() == tmp_path / "cache"
    monkeypatch.delenv("BIOPLAUSIBLE_CACHE")
    assert cache_dir() == Path.home() / ".cache" / "bioplausible"


# --------------------------------------------------------------------------- digits, val split


def test_digits_shapes_classes_and_normalisation():
    s = load_dataset("digits")
    (xtr, ytr), (xte, yte) = s.train, s.test
    assert (s.name, s.input_shape, s.num_classes, s.task, s.val) == ("digits", (1, 8, 8), 10, "classification", None)
    assert xtr.shape == (1437, 1, 8, 8) and xte.shape == (360, 1, 8, 8)
    assert xtr.dtype == torch.float32 and ytr.dtype == torch.int64
    assert set(ytr.tolist()) == set(yte.tolist()) == set(range(10))  # stratified
    assert abs(xtr.mean().item()) < 1e-5 and abs(xtr.std().item() - 1) < 1e-4
    assert abs(xte.mean().item()) < 0.1  # test uses train statistics: close, not exact


def test_digits_split_is_deterministic():
    a, b = load_dataset("digits"), load_dataset("digits")
    assert torch.equal(a.train[0], b.train[0]) and torch.equal(a.test[1], b.test[1])


def test_val_split_sized_seeded_and_leaves_test_alone():
    full = load_dataset("digits")
    s = load_dataset("digits", val_split=0.2, seed=3)
    assert len(s.val[1]) == round(1437 * 0.2) and len(s.train[1]) + len(s.val[1]) == 1437
    assert torch.equal(s.test[0], full.test[0])
    again, other = load_dataset("digits", val_split=0.2, seed=3), load_dataset("digits", val_split=0.2, seed=4)
    assert torch.equal(s.val[0], again.val[0])
    assert not torch.equal(s.val[0], other.val[0])


def test_carve_val_is_disjoint_and_covers():
    x = torch.arange(50, dtype=torch.float32)[:, None]  # row i holds i
    splits = DataSplits("t", (x, torch.arange(50)), (x, torch.arange(50)), None, (1,), 50)
    out = _carve_val(splits, 0.3, seed=0)
    tr, va = out.train[1].tolist(), out.val[1].tolist()
    assert len(va) == 15 and not set(tr) & set(va) and sorted(tr + va) == list(range(50))
    assert torch.equal(out.train[0][:, 0].long(), out.train[1])  # x and y stay paired


# --------------------------------------------------------------------------- BatchLoader


def epoch_labels(loader, epoch):
    loader.set_epoch(epoch)
    return torch.cat([yb for _, yb in loader]).tolist()


def make_loader(n=103, **kw):
    x = torch.arange(n, dtype=torch.float32)[:, None].repeat(1, 2)
    return BatchLoader(x, torch.arange(n), **{"batch_size": 10, **kw})


def test_loader_covers_every_example_once_and_pairs_x_y():
    loader = make_loader()
    assert len(loader) == 11
    seen = []
    for xb, yb in loader:
        assert torch.equal(xb[:, 0].long(), yb)
        seen += yb.tolist()
    assert sorted(seen) == list(range(103)) and seen != list(range(103))


def test_loader_drop_last():
    loader = make_loader(drop_last=True)
    batches = [yb for _, yb in loader]
    assert len(loader) == len(batches) == 10 and all(len(b) == 10 for b in batches)
    assert len(set(torch.cat(batches).tolist())) == 100


def test_loader_order_is_function_of_seed_and_epoch():
    a, b = make_loader(seed=1), make_loader(seed=1)
    assert epoch_labels(a, 4) == epoch_labels(b, 4)  # a resumed run replays the order
    assert epoch_labels(a, 0) != epoch_labels(a, 1)
    assert epoch_labels(a, 0) != epoch_labels(make_loader(seed=2), 0)
    assert epoch_labels(make_loader(shuffle=False), 5) == list(range(103))


@pytest.mark.parametrize("n", [100, 101])
def test_loader_shards_disjoint_equal_and_covering(n):
    ranks = [make_loader(n=n, seed=7, rank=r, world_size=2) for r in range(2)]
    shards = [epoch_labels(r, 2) for r in ranks]
    per_rank = math.ceil(n / 2)
    assert [len(s) for s in shards] == [per_rank, per_rank]
    assert [len(r) for r in ranks] == [math.ceil(per_rank / 10)] * 2
    assert set(shards[0]) | set(shards[1]) == set(range(n))
    assert len(set(shards[0]) & set(shards[1])) == 2 * per_rank - n  # only the wrapped padding


def test_loader_rejects_bad_arguments():
    with pytest.raises(ConfigError):
        make_loader(rank=2, world_size=2)
    with pytest.raises(ConfigError):
        make_loader(batch_size=0)
    with pytest.raises(ConfigError):
        BatchLoader(torch.zeros(3, 1), torch.zeros(4), batch_size=2)


def test_loader_augmentation_seeded_by_seed_and_epoch():
    x = torch.randn(40, 1, 6, 6, generator=torch.Generator().manual_seed(0))
    mk = lambda: BatchLoader(x, torch.arange(40), batch_size=8, seed=5, augment=BatchAugment(2, flip=True))

    def run(loader, epoch):
        loader.set_epoch(epoch)
        return torch.cat([xb for xb, _ in loader])

    a, b = mk(), mk()
    assert torch.equal(run(a, 3), run(b, 3))
    assert not torch.equal(run(a, 3), run(a, 4))


# --------------------------------------------------------------------------- BatchAugment


def crops(img: torch.Tensor, p: int) -> list[torch.Tensor]:
    """Every zero-padded crop of a [C, H, W] image, for a brute-force reference."""
    _, h, w = img.shape
    padded = torch.nn.functional.pad(img, (p, p, p, p))
    return [padded[:, i : i + h, j : j + w] for i in range(2 * p + 1) for j in range(2 * p + 1)]


def test_augment_crop_shifts_content_with_zero_padding():
    img = (torch.arange(2 * 5 * 6, dtype=torch.float32) + 1).reshape(2, 5, 6)  # unique non-zero values
    out = BatchAugment(crop_padding=2)(img.expand(300, -1, -1, -1), torch.Generator().manual_seed(0))
    assert out.shape == (300, 2, 5, 6)
    refs = crops(img, 2)
    which = [next(k for k, r in enumerate(refs) if torch.equal(o, r)) for o in out]  # StopIteration if none
    assert set(which) == set(range(25))  # every offset occurs
    assert (out == 0).any()  # padding is zeros


def test_augment_flip_flips_about_half():
    img = torch.arange(12, dtype=torch.float32).reshape(1, 3, 4)
    out = BatchAugment(flip=True)(img.expand(400, -1, -1, -1), torch.Generator().manual_seed(1))
    flipped = torch.tensor([torch.equal(o, img.flip(-1)) for o in out])
    same = torch.tensor([torch.equal(o, img) for o in out])
    assert bool((flipped | same).all())
    assert 150 < int(flipped.sum()) < 250


def test_augment_crop_and_flip_together():
    img = (torch.arange(16, dtype=torch.float32) + 1).reshape(1, 4, 4)
    out = BatchAugment(crop_padding=1, flip=True)(img.expand(200, -1, -1, -1), torch.Generator().manual_seed(2))
    refs = crops(img, 1) + [c.flip(-1) for c in crops(img, 1)]
    assert all(any(torch.equal(o, r) for r in refs) for o in out)


def test_augment_deterministic_under_seeded_generator():
    x = torch.randn(16, 3, 8, 8)
    aug = BatchAugment(crop_padding=2, flip=True)
    a = aug(x, torch.Generator().manual_seed(9))
    assert torch.equal(a, aug(x, torch.Generator().manual_seed(9)))
    assert not torch.equal(a, aug(x, torch.Generator().manual_seed(10)))
    assert BatchAugment()(x, torch.Generator()) is x  # nothing to do


def test_augment_rejects_bad_input():
    with pytest.raises(ShapeError):
        BatchAugment(crop_padding=1)(torch.zeros(4, 8, 8), torch.Generator())
    with pytest.raises(ConfigError):
        BatchAugment(crop_padding=-1)


# --------------------------------------------------------------------------- imagefolder


def write_images(root: Path, split: str, cls: str, n: int, size=(6, 5), mode="RGB", value=0):
    from PIL import Image

    folder = root / split / cls
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(value)
    for i in range(n):
        shape = (size[1], size[0], 3) if mode == "RGB" else (size[1], size[0])
        Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8), mode).save(folder / f"{i}.png")


def test_imagefolder_loads_rgb_classes(tmp_path):
    root = tmp_path / "data" / "imagefolder"
    for k, cls in enumerate(["cat", "dog"]):
        write_images(root, "train", cls, 3, value=k)
        write_images(root, "test", cls, 2, value=10 + k)
    before = snapshot(tmp_path / "data")
    s = load_dataset("imagefolder", tmp_path / "data")
    assert s.input_shape == (3, 5, 6) and s.num_classes == 2
    assert s.train[0].shape == (6, 3, 5, 6) and s.test[0].shape == (4, 3, 5, 6)
    assert s.train[1].tolist() == [0, 0, 0, 1, 1, 1] and s.test[1].tolist() == [0, 0, 1, 1]
    per_channel = s.train[0].transpose(0, 1).reshape(3, -1)
    assert per_channel.mean(1).abs().max() < 1e-4 and (per_channel.std(1) - 1).abs().max() < 1e-3
    assert snapshot(tmp_path / "data") == before


def test_imagefolder_gray_mixed_sizes_directly_in_data_dir(tmp_path):
    write_images(tmp_path, "train", "a", 2, size=(10, 10), mode="L")
    write_images(tmp_path, "train", "b", 2, size=(7, 9), mode="L")
    write_images(tmp_path, "test", "b", 1, size=(10, 10), mode="L")  # test may lack a class
    s = load_dataset("imagefolder", tmp_path)
    assert s.input_shape == (1, 32, 32) and s.test[1].tolist() == [1]


def test_imagefolder_missing(tmp_path):
    with pytest.raises(DatasetNotFoundError, match="imagefolder"):
        load_dataset("imagefolder")
    with pytest.raises(DatasetNotFoundError, match=str(tmp_path)):
        load_dataset("imagefolder", tmp_path)


# --------------------------------------------------------------------------- torchvision datasets


def test_missing_dataset_names_dataset_dir_and_remedy(tmp_path, no_network):
    data = tmp_path / "empty"
    data.mkdir()
    with pytest.raises(DatasetNotFoundError) as info:
        load_dataset("mnist", data)
    message = str(info.value)
    for part in ("'mnist'", str(data), "--data-dir", "BIOPLAUSIBLE_DATA", "MNIST/raw/train-images-idx3-ubyte.gz"):
        assert part in message
    assert "\n" not in message
    assert list(data.iterdir()) == []  # nothing written into the data dir
    with pytest.raises(DatasetNotFoundError, match="no data directory given"):
        load_dataset("cifar10")


def test_conversion_of_torchvision_layouts():
    rng = np.random.default_rng(0)
    cifar = SimpleNamespace(data=rng.integers(0, 256, (5, 32, 32, 3), dtype=np.uint8), targets=[0, 1, 2, 3, 4])
    x, y = tv_to_tensors(cifar, channels_last=True)
    assert x.shape == (5, 3, 32, 32) and x.dtype == torch.uint8 and x.is_contiguous()
    assert x[2, 1, 3, 4] == cifar.data[2, 3, 4, 1] and y.dtype == torch.int64 and y.tolist() == [0, 1, 2, 3, 4]
    svhn = SimpleNamespace(data=rng.integers(0, 256, (4, 3, 32, 32), dtype=np.uint8), labels=np.array([1, 0, 9, 3]))
    x, y = tv_to_tensors(svhn, channels_last=False)
    assert x.shape == (4, 3, 32, 32) and torch.equal(x, torch.from_numpy(svhn.data)) and y.tolist() == [1, 0, 9, 3]
    kmnist = SimpleNamespace(data=torch.randint(0, 256, (6, 28, 28), dtype=torch.uint8), targets=torch.arange(6))
    x, y = tv_to_tensors(kmnist, channels_last=False)
    assert x.shape == (6, 1, 28, 28) and torch.equal(x[:, 0], kmnist.data)


def fake_torchvision_class(spec, calls):
    """Stands in for a torchvision dataset class: synthetic arrays in the real layouts."""
    c, h, w = spec.input_shape

    class Fake:
        def __init__(self, root, train=None, split=None, download=False):
            calls.append((root, train, split, download))
            n = 6 if train or split == "train" else 4
            value = np.full((n, h, w, c) if spec.channels_last else (n, c, h, w), 51, dtype=np.uint8)
            self.data = torch.from_numpy(value[:, 0]) if c == 1 else value  # MNIST family: [N, H, W] tensor
            labels = np.arange(n) % spec.num_classes
            if spec.tv_class in ("SVHN", "STL10"):
                self.labels = labels
            else:
                self.targets = labels.tolist()

    return Fake


@pytest.mark.parametrize("name", ["kmnist", "cifar10", "cifar100", "svhn", "stl10"])
def test_vision_pipeline_on_synthetic_data(name, tmp_path, monkeypatch):
    import torchvision.datasets as tvd

    spec, calls = SPECS[name], []
    monkeypatch.setattr(tvd, spec.tv_class, fake_torchvision_class(spec, calls))
    s = load_dataset(name, tmp_path, val_split=0.5)
    assert calls[0][-1] is False and calls[0][0] == str(tmp_path)  # data dir read in place first
    assert s.input_shape == spec.input_shape and s.num_classes == spec.num_classes
    assert s.train[0].shape == (3, *spec.input_shape) and s.val[0].shape == (3, *spec.input_shape)
    assert s.test[0].shape == (4, *spec.input_shape) and s.test[0].dtype == torch.float32
    expected = (0.2 - torch.tensor(spec.mean)) / torch.tensor(spec.std)
    assert torch.allclose(s.test[0][0, :, 0, 0], expected, atol=1e-5)
    # Second load comes from the tensor cache: torchvision is not called again.
    calls.clear()
    assert torch.equal(load_dataset(name).test[0], s.test[0]) and calls == []


def test_corrupt_tensor_cache_is_rebuilt(tmp_path, monkeypatch):
    import torchvision.datasets as tvd

    spec, calls = SPECS["cifar10"], []
    monkeypatch.setattr(tvd, "CIFAR10", fake_torchvision_class(spec, calls))
    bad = tmp_path / "cache" / "datasets" / "tensors" / "cifar10.pt"
    bad.parent.mkdir(parents=True)
    bad.write_bytes(b"not a tensor file")
    assert load_dataset("cifar10", tmp_path).train[0].shape == (6, 3, 32, 32) and calls


def test_sources_are_read_and_cached_under_an_exclusive_lock(tmp_path, monkeypatch):
    """Concurrent runs on a cold cache (``compare --jobs``) must not read half-extracted archives:
    the reading and caching happen while this process holds the dataset's lock file."""
    import fcntl

    import torchvision.datasets as tvd

    from bioplausible.data import vision

    spec, calls, lock_state = SPECS["cifar10"], [], []
    monkeypatch.setattr(tvd, "CIFAR10", fake_torchvision_class(spec, calls))
    real_read = vision._read_sources

    def read_and_probe_lock(name, spec, data_dir, root):
        with open(root / f".{name}.lock") as other:  # a second open file description
            try:
                fcntl.flock(other, fcntl.LOCK_EX | fcntl.LOCK_NB)
                lock_state.append("free")
            except BlockingIOError:
                lock_state.append("held")
        return real_read(name, spec, data_dir, root)

    monkeypatch.setattr(vision, "_read_sources", read_and_probe_lock)
    assert load_dataset("cifar10", tmp_path).train[0].shape == (6, 3, 32, 32)
    assert lock_state == ["held"]


# --------------------------------------------------------------------------- real data


@pytest.mark.real_data
@pytest.mark.parametrize("name", ["mnist", "fashion_mnist"])
def test_real_mnist_family_from_read_only_data_dir(name, data_dir):
    before = snapshot(data_dir)
    s = load_dataset(name, data_dir)
    assert s.train[0].shape == (60000, 1, 28, 28) and s.test[0].shape == (10000, 1, 28, 28)
    assert s.train[1].shape == (60000,) and s.test[1].shape == (10000,)
    assert s.train[0].dtype == torch.float32 and s.train[1].dtype == torch.int64
    assert sorted(s.train[1].unique().tolist()) == list(range(10)) and s.input_shape == (1, 28, 28)
    # Standard statistics of the train set: normalised train is ~N(0, 1).
    assert abs(s.train[0].mean().item()) < 0.01 and abs(s.train[0].std().item() - 1) < 0.01
    assert snapshot(data_dir) == before
    # Later loads come from the tensor cache and no longer need the data dir.
    assert torch.equal(load_dataset(name).test[0], s.test[0])


@pytest.mark.real_data
def test_processes_loading_one_dataset_at_once_on_a_cold_cache_all_succeed(data_dir, tmp_path):
    """Three processes started together, as ``compare --jobs 3`` starts them (one of three failed
    on a half-extracted file before the cache lock)."""
    code = ("import sys; from bioplausible.data import load_dataset; "
            "print(float(load_dataset('mnist', sys.argv[1]).test[0].sum()))")
    env = {**os.environ, "BIOPLAUSIBLE_CACHE": str(tmp_path / "cold")}
    procs = [subprocess.Popen([sys.executable, "-c", code, str(data_dir)], env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for _ in range(3)]
    outputs = [p.communicate(timeout=300) for p in procs]
    assert all(p.returncode == 0 for p in procs), [err[-500:] for _, err in outputs]
    assert len({out for out, _ in outputs}) == 1
