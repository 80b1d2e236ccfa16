"""Atomic checkpoints: a crash while writing never leaves a broken ``checkpoint.pt``."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import torch

from ..errors import CheckpointError


def save_atomic(obj: Any, path: str | Path) -> None:
    """Write to a temporary file in the same directory, flush it to disk, then rename."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict:
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"no checkpoint at '{path}'")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # torch raises several types for truncated or foreign files
        raise CheckpointError(f"checkpoint '{path}' is corrupt or not a bioplausible checkpoint ({type(exc).__name__})") from None
    required = {"epoch", "rule", "optimizers", "schedulers", "rng", "history"}
    if not isinstance(state, dict) or not required <= state.keys():
        raise CheckpointError(f"checkpoint '{path}' lacks {sorted(required - set(state or {}))}")
    return state
