"""Optimizers and learning-rate schedules built from a run's configuration.

Rules decide how their tensors are grouped (``LearningRule.param_groups``); this module only
fills in learning rates: ``layer_lrs`` per model block, otherwise ``lr`` (times a group's
``lr_scale``), unless the rule fixed a group's ``lr`` itself.
"""

from __future__ import annotations

import math
import torch

from ..config import TrainConfig
from ..errors import ConfigError


class OptimizerFactory:
    """``make_optimizer(groups)`` for :meth:`LearningRule.configure_optimizers`.

    ``layer_lrs`` are handed out in order to the groups named ``blocks.*`` across all calls, so
    a rule with one optimizer per module (SLL, local losses) gets the same per-block rates as a
    rule with one optimizer; :meth:`check_layer_lrs` then checks that every entry was used."""

    def __init__(self, config: TrainConfig):
        self.config = config
        self.blocks_seen = 0

    def __call__(self, groups: list[dict]) -> torch.optim.Optimizer:
        config = self.config
        filled = []
        for group in groups:
            group = dict(group)
            in_block = group.get("name", "").startswith("blocks.")
            if "lr" not in group:
                if config.layer_lrs is not None and in_block:
                    if self.blocks_seen >= len(config.layer_lrs):
                        raise self._count_error(f"more than {len(config.layer_lrs)}")
                    group["lr"] = float(config.layer_lrs[self.blocks_seen])
                else:
                    group["lr"] = config.lr * group.pop("lr_scale", 1.0)
            group.pop("lr_scale", None)
            self.blocks_seen += in_block
            filled.append(group)
        # Fused kernels (CPU and CUDA): the unfused CPU Adam was half of a KP step on the MNIST MLP.
        fused = all(p.is_floating_point() and p.device.type in ("cpu", "cuda") for g in filled for p in g["params"])
        if config.optimizer == "sgd":
            return torch.optim.SGD(filled, lr=config.lr, momentum=config.momentum, nesterov=config.nesterov,
                                   weight_decay=config.weight_decay, fused=fused)
        adam = torch.optim.Adam if config.optimizer == "adam" else torch.optim.AdamW
        return adam(filled, lr=config.lr, weight_decay=config.weight_decay, fused=fused)

    def check_layer_lrs(self) -> None:
        """After the rule built its optimizers: one ``layer_lrs`` entry per block with parameters."""
        if self.config.layer_lrs is not None and self.blocks_seen != len(self.config.layer_lrs):
            raise self._count_error(str(self.blocks_seen))

    def _count_error(self, blocks: str) -> ConfigError:
        return ConfigError(f"'layer_lrs' has {len(self.config.layer_lrs)} entries but the model has "
                           f"{blocks} blocks with parameters")


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
