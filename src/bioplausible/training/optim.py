"""Optimizers and learning-rate schedules built from a run's configuration.

Rules decide how their tensors are grouped (``LearningRule.param_groups``); this module only
fills in learning rates: ``layer_lrs`` per model block, otherwise ``lr`` (times a group's
``lr_scale``), unless the rule fixed a group's ``lr`` itself.
"""

from __future__ import annotations

import math
from typing import Callable

import torch

from ..config import TrainConfig
from ..errors import ConfigError


def optimizer_factory(config: TrainConfig) -> Callable[[list[dict]], torch.optim.Optimizer]:
    def make_optimizer(groups: list[dict]) -> torch.optim.Optimizer:
        is_block = [g.get("name", "").startswith("blocks.") for g in groups]
        if config.layer_lrs is not None and len(config.layer_lrs) != sum(is_block):
            raise ConfigError(
                f"'layer_lrs' has {len(config.layer_lrs)} entries but the model has "
                f"{sum(is_block)} blocks with parameters"
            )
        filled, block_index = [], 0
        for group, in_block in zip(groups, is_block):
            group = dict(group)
            if "lr" not in group:
                if config.layer_lrs is not None and in_block:
                    group["lr"] = float(config.layer_lrs[block_index])
                else:
                    group["lr"] = config.lr * group.pop("lr_scale", 1.0)
            group.pop("lr_scale", None)
            block_index += in_block
            filled.append(group)
        # Fused kernels (CPU and CUDA): the unfused CPU Adam was half of a KP step on the MNIST MLP.
        fused = all(p.is_floating_point() and p.device.type in ("cpu", "cuda") for g in filled for p in g["params"])
        if config.optimizer == "sgd":
            return torch.optim.SGD(filled, lr=config.lr, momentum=config.momentum, nesterov=config.nesterov,
                                   weight_decay=config.weight_decay, fused=fused)
        adam = torch.optim.Adam if config.optimizer == "adam" else torch.optim.AdamW
        return adam(filled, lr=config.lr, weight_decay=config.weight_decay, fused=fused)

    return make_optimizer


def lr_factor(config: TrainConfig, epoch_progress: float) -> float:
    """Multiplier of every group's initial learning rate after ``epoch_progress`` epochs."""
    t, total, warmup = epoch_progress, config.epochs, config.warmup_epochs
    if warmup and t < warmup:
        return (t + 1e-12) / warmup if config.schedule in ("cosine", "linear") else 1.0
    if config.schedule == "constant":
        return 1.0
    if config.schedule == "step":
        return config.gamma ** sum(t >= m for m in config.milestones)
    fraction = min(1.0, (t - warmup) / max(total - warmup, 1e-12))
    if config.schedule == "cosine":
        return 0.5 * (1 + math.cos(math.pi * fraction))
    return 1.0 - fraction  # linear decay to 0


def make_schedulers(config: TrainConfig, optimizers, steps_per_epoch: int) -> list[torch.optim.lr_scheduler.LambdaLR]:
    """One scheduler per optimizer, stepped after every training step."""
    return [
        torch.optim.lr_scheduler.LambdaLR(opt, lambda step: lr_factor(config, step / steps_per_epoch))
        for opt in optimizers
    ]
