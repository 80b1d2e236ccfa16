"""In-memory mini-batching with reproducible, resumable shuffling and optional sharding.

A torch DataLoader with per-sample transforms costs more than training on a 2-core machine;
indexing a whole-dataset tensor per batch costs almost nothing.
"""

from __future__ import annotations

import math
from typing import Iterator

import numpy as np
import torch
from torch import Tensor

from ..errors import ConfigError
from .augment import BatchAugment

_SHUFFLE_STREAM, _AUGMENT_STREAM = 0, 1


def _generator(seed: int, epoch: int, stream: int) -> torch.Generator:
    """A CPU generator that depends only on (seed, epoch, stream), well mixed by SeedSequence."""
    state = np.random.SeedSequence([seed, epoch, stream]).generate_state(1, dtype=np.uint64)[0]
    return torch.Generator().manual_seed(int(state))


class BatchLoader:
    """Yields ``(xb, yb)`` batches on the device ``x`` lives on.

    The order depends only on ``(seed, epoch)``: call :meth:`set_epoch` before each epoch
    (as with DistributedSampler) so every epoch differs and a resumed run replays the same
    order. With ``world_size > 1`` each rank takes every ``world_size``-th index of the
    permutation, padded by wrapping so all ranks see the same number of examples.
    """

    def __init__(
        self,
        x: Tensor,
        y: Tensor,
        batch_size: int,
        shuffle: bool = True,
        seed: int = 0,
        augment: BatchAugment | None = None,
        drop_last: bool = False,
        rank: int = 0,
        world_size: int = 1,
    ):
        if len(x) != len(y):
            raise ConfigError(f"BatchLoader: x has {len(x)} examples but y has {len(y)}")
        if len(x) == 0:
            raise ConfigError("BatchLoader: empty dataset")
        if batch_size < 1:
            raise ConfigError(f"batch_size must be >= 1, got {batch_size}")
        if world_size < 1 or not 0 <= rank < world_size:
            raise ConfigError(f"need 0 <= rank < world_size, got rank={rank}, world_size={world_size}")
        self.x, self.y = x, y
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.seed = seed
        self.augment = augment
        self.drop_last = drop_last
        self.rank, self.world_size = rank, world_size
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    @property
    def num_samples(self) -> int:
        """Examples this rank sees per epoch (before drop_last)."""
        return math.ceil(len(self.y) / self.world_size)

    def __len__(self) -> int:
        if self.drop_last:
            return self.num_samples // self.batch_size
        return math.ceil(self.num_samples / self.batch_size)

    def indices(self) -> Tensor:
        """This rank's example indices for the current epoch, in order (CPU, int64)."""
        n = len(self.y)
        if self.shuffle:
            order = torch.randperm(n, generator=_generator(self.seed, self.epoch, _SHUFFLE_STREAM))
        else:
            order = torch.arange(n)
        total = self.num_samples * self.world_size
        if total > n:  # wrap around (repeatedly if world_size > n) to equal shards
            order = order.repeat(math.ceil(total / n))[:total]
        return order[self.rank : total : self.world_size]

    def __iter__(self) -> Iterator[tuple[Tensor, Tensor]]:
        idx = self.indices()
        idx_x, idx_y = idx.to(self.x.device), idx.to(self.y.device)
        aug_gen = _generator(self.seed, self.epoch, _AUGMENT_STREAM) if self.augment is not None else None
        stop = len(self) * self.batch_size if self.drop_last else len(idx)
        for start in range(0, stop, self.batch_size):
            xb = self.x[idx_x[start : start + self.batch_size]]
            yb = self.y[idx_y[start : start + self.batch_size]]
            if aug_gen is not None:
                xb = self.augment(xb, aug_gen)
            yield xb, yb
