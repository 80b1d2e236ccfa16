"""The dataset registry, the :class:`DataSplits` container and :func:`load_dataset`.

Every dataset is a loader ``(data_dir, root) -> DataSplits`` registered under a name:
``data_dir`` is the user's (read-only) data directory or None, ``root`` a writable cache
folder (``cache_dir()/datasets``). Loaders return whole splits as in-memory tensors, because
on a small CPU machine per-sample Dataset/DataLoader pipelines cost more than the training.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
from torch import Tensor

from ..errors import ConfigError
from ..registry import Registry

DATA_ENV = "BIOPLAUSIBLE_DATA"
CACHE_ENV = "BIOPLAUSIBLE_CACHE"


@dataclass
class DataSplits:
    """Normalised float32 inputs ``[N, *input_shape]`` and int64 labels ``[N]`` per split."""

    name: str
    train: tuple[Tensor, Tensor]
    test: tuple[Tensor, Tensor]
    val: tuple[Tensor, Tensor] | None
    input_shape: tuple[int, ...]
    num_classes: int
    task: str = "classification"


DatasetLoader = Callable[[Path | None, Path], DataSplits]
DATASETS: Registry[DatasetLoader] = Registry("dataset")
register_dataset = DATASETS.register


def resolve_data_dir(data_dir: str | os.PathLike | None = None) -> Path | None:
    """The explicit directory if given, else ``$BIOPLAUSIBLE_DATA``, else None."""
    if data_dir is not None and str(data_dir) != "":
        return Path(data_dir).expanduser()
    env = os.environ.get(DATA_ENV)
    return Path(env).expanduser() if env else None


def cache_dir() -> Path:
    """Writable cache: ``$BIOPLAUSIBLE_CACHE``, else ``~/.cache/bioplausible`` (not created here)."""
    env = os.environ.get(CACHE_ENV)
    return Path(env).expanduser() if env else Path.home() / ".cache" / "bioplausible"


def list_datasets() -> list[str]:
    return DATASETS.names()


def load_dataset(
    name: str,
    data_dir: str | os.PathLike | None = None,
    val_split: float = 0.0,
    seed: int = 0,
) -> DataSplits:
    """Load ``name`` whole into memory; carve a seeded validation set from train if asked.

    Raises ConfigError for an unknown name or a val_split outside [0, 1), and
    DatasetNotFoundError when the files are neither in the data directory nor downloadable.
    """
    if (
        isinstance(val_split, bool)
        or not isinstance(val_split, (int, float))
        or not math.isfinite(val_split)
        or not 0.0 <= val_split < 1.0
    ):
        raise ConfigError(f"val_split must be a number in [0, 1), got {val_split!r}")
    loader = DATASETS.get(name)
    splits = loader(resolve_data_dir(data_dir), cache_dir() / "datasets")
    if val_split > 0:
        splits = _carve_val(splits, float(val_split), seed)
    return splits


def _carve_val(splits: DataSplits, val_split: float, seed: int) -> DataSplits:
    x, y = splits.train
    n = len(y)
    n_val = max(1, round(n * val_split))
    if n_val >= n:
        raise ConfigError(f"val_split={val_split} leaves no training examples out of {n}")
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    # Sorted so both parts keep the dataset's order; randomness only decides membership.
    val_idx, train_idx = perm[:n_val].sort().values, perm[n_val:].sort().values
    splits.train = (x[train_idx], y[train_idx])
    splits.val = (x[val_idx], y[val_idx])
    return splits


def normalise(x: Tensor, mean: Sequence[float] | Tensor, std: Sequence[float] | Tensor) -> Tensor:
    """uint8 ``[N, C, H, W]`` -> float32 ``(x / 255 - mean) / std`` per channel, in one copy."""
    if x.dtype != torch.uint8:
        raise TypeError(f"expected uint8 images, got {x.dtype}")
    shape = (1, -1) + (1,) * (x.ndim - 2)
    mean_t = torch.as_tensor(mean, dtype=torch.float32).reshape(shape)
    std_t = torch.as_tensor(std, dtype=torch.float32).reshape(shape)
    # In place after the one float copy: CIFAR-sized float32 arrays are ~600 MB.
    return x.float().div_(255.0).sub_(mean_t).div_(std_t)


def channel_stats(x: Tensor) -> tuple[Tensor, Tensor]:
    """Per-channel mean/std of uint8 ``[N, C, H, W]`` images scaled to [0, 1]."""
    flat = x.transpose(0, 1).reshape(x.shape[1], -1).double() / 255.0
    return flat.mean(1).float(), flat.std(1).clamp_min(1e-6).float()


@register_dataset("digits")
def _load_digits(data_dir: Path | None, root: Path) -> DataSplits:
    """scikit-learn's bundled 8x8 digits: offline, tiny, the default for quick runs."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    bunch = load_digits()
    x = bunch.images.astype(np.float32) / 16.0  # pixel values are 0..16
    y = bunch.target.astype(np.int64)
    xtr, xte, ytr, yte = train_test_split(x, y, test_size=360, random_state=0, stratify=y)
    xtr, xte = torch.from_numpy(xtr).unsqueeze(1), torch.from_numpy(xte).unsqueeze(1)
    mean, std = xtr.mean(), xtr.std()  # train statistics only, so test stays unseen
    return DataSplits(
        name="digits",
        train=((xtr - mean) / std, torch.from_numpy(ytr)),
        test=((xte - mean) / std, torch.from_numpy(yte)),
        val=None,
        input_shape=(1, 8, 8),
        num_classes=10,
    )
