"""Task-specific metrics: accuracy for classification, MSE and MAE for regression.

``DataSplits.task`` picks the metrics. Classification counts every prediction: one per example
for ``[B, C]`` outputs, one per step for per-step outputs ``[B, T, C]`` with targets ``[B, T]``
(next-character accuracy). Regression (float targets ``[B, D]``) reports the mean squared and
mean absolute error over every predicted value (DLL paper, eqs. 31-32); lower is better, so the
best validation epoch is the one with the lowest ``val_mse``.
"""

from __future__ import annotations

import torch

TASKS = ("classification", "regression")


class MetricTracker:
    """Accumulates one split's metrics batch by batch, on the device (no sync per batch)."""

    def __init__(self, task: str, device: torch.device | str = "cpu"):
        if task not in TASKS:
            raise ValueError(f"unknown task {task!r}; known: {', '.join(TASKS)}")
        self.task = task
        self.sums = torch.zeros(2, device=device, dtype=torch.float64)  # correct | (squared, absolute) error
        self.count = 0

    @torch.no_grad()
    def update(self, output: torch.Tensor, y: torch.Tensor) -> None:
        if self.task == "classification":
            self.sums[0] += (output.argmax(-1) == y).sum()
        else:
            error = (output - y).double()
            self.sums[0] += error.pow(2).sum()
            self.sums[1] += error.abs().sum()
        self.count += y.numel()

    def compute(self, prefix: str) -> dict:
        values = (self.sums / max(self.count, 1)).tolist()
        if self.task == "classification":
            return {f"{prefix}_acc": values[0]}
        return {f"{prefix}_mse": values[0], f"{prefix}_mae": values[1]}


def task_of(metrics: dict) -> str:
    return "regression" if "test_mse" in metrics else "classification"


def headline(metrics: dict, prefix: str) -> str:
    """``"test 0.9731"`` (accuracy) or ``"test mse 0.0123"`` for a log line."""
    if f"{prefix}_mse" in metrics:
        return f"{prefix} mse {metrics[f'{prefix}_mse']:.5f}"
    return f"{prefix} {metrics[f'{prefix}_acc']:.4f}"


def best_val(history: list[dict]) -> dict:
    """The epoch with the best validation metric (highest accuracy or lowest MSE) and its test figures."""
    if task_of(history[0]) == "regression":
        best = min(history, key=lambda m: m["val_mse"])
        return {"epoch": best["epoch"], "val_mse": best["val_mse"],
                "test_mse": best["test_mse"], "test_mae": best["test_mae"]}
    best = max(history, key=lambda m: m["val_acc"])
    return {"epoch": best["epoch"], "val_acc": best["val_acc"], "test_acc": best["test_acc"]}
