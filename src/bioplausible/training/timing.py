"""Seconds per training step of several rules, measured so that they can be compared."""

from __future__ import annotations

import time

import torch


def round_robin_step_seconds(rules: dict, x: torch.Tensor, y: torch.Tensor, rounds: int,
                             report=None) -> dict[str, list[float]]:
    """One ``train_step`` of each rule in turn, ``rounds`` times after a warm-up round, so that
    load from other processes falls on all rules alike; CUDA is synchronised around each step.
    ``report(round, times)`` is called after every round (progress output)."""
    cuda = x.device.type == "cuda"
    times: dict[str, list[float]] = {name: [] for name in rules}
    for round_ in range(rounds + 1):
        for name, rule in rules.items():
            if cuda:
                torch.cuda.synchronize(x.device)
            start = time.perf_counter()
            rule.train_step(x, y)
            if cuda:
                torch.cuda.synchronize(x.device)
            if round_:  # round 0 is the warm-up
                times[name].append(time.perf_counter() - start)
        if report is not None:
            report(round_, times)
    return times
