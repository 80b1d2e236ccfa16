"""torchvision image datasets (MNIST family, CIFAR, SVHN, STL-10) as whole in-memory tensors.

Where the files come from, in order:
1. already-extracted files in the data directory, read in place (``download=False`` never writes);
2. archives in the data directory, copied into the cache and extracted there by torchvision
   (the data directory may be read-only, so nothing is ever written into it);
3. the cache itself, with ``download=True`` (a no-op when a previous run extracted the files,
   a download where a network exists).
The uint8 tensors are then saved to ``<cache>/datasets/tensors/<name>.pt``: later loads read
that file (~0.1 s for MNIST) and skip importing torchvision (~2 s) and parsing the sources.
These are canonical datasets with published checksums, so the cache is keyed by name only.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
import shutil
import socket
import stat
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from ..errors import DatasetNotFoundError
from .datasets import DATA_ENV, DataSplits, normalise, register_dataset

TENSOR_CACHE_VERSION = 1

# torchvision's urlopen has no timeout: on a firewalled machine a download would hang forever.
DOWNLOAD_TIMEOUT_S = 30.0


@dataclass(frozen=True)
class VisionSpec:
    tv_class: str  # class name in torchvision.datasets
    files: tuple[str, ...]  # what torchvision looks for, relative to its root
    layout: str  # shown in the error message
    split_arg: str  # "train" (bool keyword) or "split" ("train"/"test")
    channels_last: bool  # whether .data is [N, H, W, C]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    input_shape: tuple[int, ...]
    num_classes: int


def _mnist_like(folder: str, mean: float, std: float) -> VisionSpec:
    names = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")
    return VisionSpec(
        tv_class=folder,
        files=tuple(f"{folder}/raw/{n}.gz" for n in names),
        layout=f"DIR/{folder}/raw/train-images-idx3-ubyte.gz (and train-labels-idx1-ubyte.gz, "
        "t10k-images-idx3-ubyte.gz, t10k-labels-idx1-ubyte.gz)",
        split_arg="train",
        channels_last=False,
        mean=(mean,),
        std=(std,),
        input_shape=(1, 28, 28),
        num_classes=10,
    )


# Standard per-channel statistics of each training set, as commonly published.
SPECS: dict[str, VisionSpec] = {
    "mnist": _mnist_like("MNIST", 0.1307, 0.3081),
    "fashion_mnist": _mnist_like("FashionMNIST", 0.2860, 0.3530),
    "kmnist": _mnist_like("KMNIST", 0.1918, 0.3483),
    # MNIST as raw pixels in [0, 1] (no standardisation), the preprocessing of the EP/DEP papers.
    "mnist_raw": _mnist_like("MNIST", 0.0, 1.0),
    "cifar10": VisionSpec(
        "CIFAR10", ("cifar-10-python.tar.gz",),
        "DIR/cifar-10-python.tar.gz (or the extracted DIR/cifar-10-batches-py/)",
        "train", True, (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616), (3, 32, 32), 10,
    ),
    "cifar100": VisionSpec(
        "CIFAR100", ("cifar-100-python.tar.gz",),
        "DIR/cifar-100-python.tar.gz (or the extracted DIR/cifar-100-python/)",
        "train", True, (0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762), (3, 32, 32), 100,
    ),
    "svhn": VisionSpec(
        "SVHN", ("train_32x32.mat", "test_32x32.mat"),
        "DIR/train_32x32.mat and DIR/test_32x32.mat",
        "split", False, (0.4377, 0.4438, 0.4728), (0.1980, 0.2010, 0.1970), (3, 32, 32), 10,
    ),
    "stl10": VisionSpec(
        "STL10", ("stl10_binary.tar.gz",),
        "DIR/stl10_binary.tar.gz (or the extracted DIR/stl10_binary/)",
        "split", False, (0.4467, 0.4398, 0.4066), (0.2603, 0.2566, 0.2713), (3, 96, 96), 10,
    ),
}


def tv_to_tensors(ds, channels_last: bool) -> tuple[Tensor, Tensor]:
    """A torchvision dataset's ``.data`` and ``.targets``/``.labels`` -> uint8 [N,C,H,W], int64 [N].

    Reads the arrays torchvision already holds, skipping its per-sample PIL path entirely.
    """
    data = ds.data
    x = data if isinstance(data, Tensor) else torch.from_numpy(np.asarray(data))
    if x.ndim == 3:  # MNIST family: [N, H, W]
        x = x.unsqueeze(1)
    elif channels_last:  # CIFAR: [N, H, W, C]
        x = x.permute(0, 3, 1, 2)
    labels = getattr(ds, "targets", None)
    if labels is None:  # SVHN, STL-10
        labels = ds.labels
    y = torch.as_tensor(np.asarray(labels), dtype=torch.int64)
    if len(x) != len(y):
        raise ValueError(f"{type(ds).__name__}: {len(x)} images but {len(y)} labels")
    return x.contiguous(), y


def _read(spec: VisionSpec, root: Path, download: bool) -> dict:
    """Both splits as uint8 tensors via torchvision (which is imported only here: it takes ~2 s)."""
    import torchvision.datasets as tvd

    cls = getattr(tvd, spec.tv_class)
    raw = {"version": TENSOR_CACHE_VERSION}
    for split in ("train", "test"):
        if spec.split_arg == "train":
            ds = cls(str(root), train=split == "train", download=download)
        else:
            ds = cls(str(root), split=split, download=download)
        raw[split] = tv_to_tensors(ds, spec.channels_last)
    return raw


def _read_tensor_cache(path: Path, spec: VisionSpec) -> dict | None:
    if not path.is_file():
        return None
    try:
        raw = torch.load(path, weights_only=True)
        ok = raw.get("version") == TENSOR_CACHE_VERSION and all(
            tuple(raw[s][0].shape[1:]) == spec.input_shape for s in ("train", "test")
        )
        return raw if ok else None
    except Exception:  # partial or foreign file: rebuild it from the sources
        return None


def _write_tensor_cache(path: Path, raw: dict) -> None:
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.save(raw, tmp)
        os.replace(tmp, path)  # atomic: a concurrent reader never sees half a file
    except (OSError, RuntimeError):  # torch.save reports a full disk as RuntimeError
        tmp.unlink(missing_ok=True)  # an unwritable cache costs speed, not correctness


def _stage(spec: VisionSpec, data_dir: Path, root: Path) -> None:
    """Copy whatever archives the data directory has into the cache, where extraction may write."""
    for rel in spec.files:
        src, dst = data_dir / rel, root / rel
        if not src.is_file():
            continue
        if dst.is_file() and dst.stat().st_size == src.stat().st_size:
            continue  # torchvision checks the MD5 afterwards, so size suffices to skip the copy
        dst.parent.mkdir(parents=True, exist_ok=True)
        dst.unlink(missing_ok=True)  # a previous partial copy may be read-only
        shutil.copy2(src, dst)
        # copy2 keeps a read-only source's mode; the cache should stay ours to clean up.
        dst.chmod(dst.stat().st_mode | stat.S_IWUSR)


@contextlib.contextmanager
def _download_guard():
    """Bound socket waits and send torchvision's prints to stderr, keeping stdout for results."""
    old = socket.getdefaulttimeout()
    if old is None:
        socket.setdefaulttimeout(DOWNLOAD_TIMEOUT_S)
    try:
        with contextlib.redirect_stdout(sys.stderr):
            yield
    finally:
        socket.setdefaulttimeout(old)


def _summary(err: BaseException) -> str:
    """One short line out of torchvision's multi-mirror error text."""
    text = " ".join(str(err).split())
    reasons = re.findall(r"<urlopen error [^>]*>", text)
    if reasons:  # the same network failure repeated once per mirror
        return reasons[-1]
    text = text if len(text) <= 160 else text[:157] + "..."
    return f"{type(err).__name__}: {text}" if text else type(err).__name__


@contextlib.contextmanager
def _one_process_at_a_time(root: Path, name: str):
    """Hold an exclusive lock on ``root/.<name>.lock`` (no lock if ``root`` is not writable).

    torchvision extracts archives in place, so a second process reading a half-extracted file
    fails ("invalid literal for int() with base 16": seen with ``compare --jobs`` on a cold cache).
    """
    try:
        root.mkdir(parents=True, exist_ok=True)
        lock = open(root / f".{name}.lock", "w")
    except OSError:
        yield
        return
    with lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes
        yield


def load_vision(name: str, spec: VisionSpec, data_dir: Path | None, root: Path) -> DataSplits:
    cache_file = root / "tensors" / f"{name}.pt"
    raw = _read_tensor_cache(cache_file, spec)
    if raw is None:
        with _one_process_at_a_time(root, name):
            raw = _read_tensor_cache(cache_file, spec)  # built by the process that held the lock
            if raw is None:
                raw = _read_sources(name, spec, data_dir, root)
                _write_tensor_cache(cache_file, raw)
    train, test = raw["train"], raw["test"]
    return DataSplits(
        name=name,
        train=(normalise(train[0], spec.mean, spec.std), train[1]),
        test=(normalise(test[0], spec.mean, spec.std), test[1]),
        val=None,
        input_shape=spec.input_shape,
        num_classes=spec.num_classes,
    )


def _read_sources(name: str, spec: VisionSpec, data_dir: Path | None, root: Path) -> dict:
    has_dir = data_dir is not None and data_dir.is_dir()
    if has_dir:
        try:
            return _read(spec, data_dir, download=False)
        except (RuntimeError, OSError):
            pass  # not extracted there (the usual case): stage the archives instead
    try:
        if has_dir:
            _stage(spec, data_dir, root)
        root.mkdir(parents=True, exist_ok=True)
        with _download_guard():
            return _read(spec, root, download=True)
    except (RuntimeError, OSError) as err:
        if data_dir is None:
            where = "no data directory given"
        elif not has_dir:
            where = f"data directory {data_dir} does not exist"
        else:
            where = f"searched data directory {data_dir}"
        raise DatasetNotFoundError(
            f"dataset '{name}' not found: {where}; not in cache {root} and download failed "
            f"({_summary(err)}). Provide it with --data-dir DIR or {DATA_ENV}=DIR, "
            f"laid out as {spec.layout}"
        ) from None


def _make_loader(name: str, spec: VisionSpec):
    def loader(data_dir: Path | None, root: Path) -> DataSplits:
        return load_vision(name, spec, data_dir, root)

    loader.__doc__ = f"torchvision {spec.tv_class}: {spec.input_shape}, {spec.num_classes} classes."
    return loader


for _name, _spec in SPECS.items():
    register_dataset(_name)(_make_loader(_name, _spec))
