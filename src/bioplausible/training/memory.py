"""Measuring training memory on any device: the bytes autograd keeps for the backward pass.

On a CPU, peak RSS is dominated by the torch import and the allocator's caching; the storages
held by autograd graphs are what learning rules actually change (BP keeps every layer's graph
until its backward; layer-local rules free each layer's graph before the next layer runs).
"""

from __future__ import annotations

import torch
from torch import nn


class SavedBytes:
    """Live and peak bytes of the storages autograd holds for backward (saved_tensors_hooks).

    A storage counts once however many ops save it, from its first packing until the last graph
    holding it is freed; storages of the model's parameters and buffers are not counted (they
    are resident anyway: BP saves views of the weights, SLL does not need them)."""

    def __init__(self, resident: nn.Module):
        self.resident = {t.untyped_storage().data_ptr() for t in [*resident.parameters(), *resident.buffers()]}
        self.refs: dict[int, int] = {}
        self.live = self.peak = 0

    def pack(self, t: torch.Tensor):
        storage = t.untyped_storage()
        ptr, size = storage.data_ptr(), storage.nbytes()
        if ptr in self.resident:
            return None, t
        meter = self

        class Handle:  # dropped with the graph that holds it
            def __del__(self):
                meter.refs[ptr] -= 1
                if not meter.refs[ptr]:
                    del meter.refs[ptr]
                    meter.live -= size

        if ptr not in self.refs:
            self.refs[ptr] = 0
            self.live += size
            self.peak = max(self.peak, self.live)
        self.refs[ptr] += 1
        return Handle(), t

    @staticmethod
    def unpack(packed):
        return packed[1]


def step_memory(rule, x: torch.Tensor, y: torch.Tensor) -> dict[str, float]:
    """Memory of one training step of ``rule`` (after a warm-up step, so gradients and optimizer
    state already exist): peak autograd-saved MiB, and on CUDA the peak allocation above the
    baseline before the step."""
    rule.train_step(x, y)  # warm-up
    meter = SavedBytes(rule)
    cuda = x.device.type == "cuda"
    if cuda:
        torch.cuda.synchronize(x.device)
        before = torch.cuda.memory_allocated(x.device)
        torch.cuda.reset_peak_memory_stats(x.device)
    with torch.autograd.graph.saved_tensors_hooks(meter.pack, meter.unpack):
        rule.train_step(x, y)
    row = {"saved_mb": meter.peak / 2**20}
    if cuda:
        row["cuda_peak_above_baseline_mb"] = (torch.cuda.max_memory_allocated(x.device) - before) / 2**20
    return row
