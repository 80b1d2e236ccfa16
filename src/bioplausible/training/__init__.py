"""Training loop, optimizers, schedules and checkpoints."""

from .trainer import RunResult, Trainer, resume, train, train_or_resume

__all__ = ["RunResult", "Trainer", "resume", "train", "train_or_resume"]
