"""Datasets as whole in-memory tensors, batching and batched augmentation.

Typical use::

    splits = load_dataset("digits", val_split=0.1)
    loader = BatchLoader(*splits.train, batch_size=64, seed=0, augment=BatchAugment(crop_padding=1))
    for epoch in range(epochs):
        loader.set_epoch(epoch)  # order = f(seed, epoch): resumable
        for xb, yb in loader:
            ...
"""

import importlib

from .augment import BatchAugment
from .datasets import (
    DATASETS,
    DataSplits,
    cache_dir,
    list_datasets,
    load_dataset,
    register_dataset,
    resolve_data_dir,
)
from .loader import BatchLoader

# Importing a loader module registers its datasets.
for _module in ("vision", "imagefolder", "sequences"):
    importlib.import_module(f"{__name__}.{_module}")

__all__ = [
    "DATASETS",
    "BatchAugment",
    "BatchLoader",
    "DataSplits",
    "cache_dir",
    "list_datasets",
    "load_dataset",
    "register_dataset",
    "resolve_data_dir",
]
