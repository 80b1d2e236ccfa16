"""Training loop, optimizers, schedules and checkpoints."""

from .trainer import RunResult, Trainer, resume, train

__all__ = ["RunResult", "Trainer", "resume", "train"]
