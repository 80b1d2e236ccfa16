"""Measuring training memory on any device: the bytes autograd keeps for the backward pass.

On a CPU, peak RSS is dominated by the torch import and the allocator's caching; the storages
held by autograd graphs are what learning rules actually change (BP keeps every layer's graph
until its backward; layer-local rules free each layer's graph before the next layer runs).
Tensors a rule holds outside any graph (MLAAN's recomputation keeps module inputs), gradients
and temporaries are not in that count; :func:`cpu_allocation_peak` counts every CPU tensor
allocation, the CPU's counterpart of ``torch.cuda.max_memory_allocated``.
"""

from __future__ import annotations

from itertools import accumulate

import torch
from torch import nn
from torch.profiler import ProfilerActivity, profile, record_function


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


def cpu_allocation_peak(warmup, fn) -> int:
    """Peak bytes of CPU tensor memory allocated while ``fn()`` runs, above what was allocated when
    it started: the running sum of the profiler's allocation and free events during ``fn`` (the
    CPU allocator keeps no peak statistic; these events are what ``torch.profiler``'s memory
    timeline reads). The profiler only reports frees of memory allocated while it runs, so it
    starts before ``warmup()``, which allocates what ``fn`` frees (a step frees the previous
    step's gradients)."""
    mark = "bioplausible.cpu_allocation_peak"
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        warmup()
        with record_function(mark):
            fn()
    events = prof.profiler.kineto_results.events()
    span = next(e for e in events if e.name() == mark)
    inside = sorted((e for e in events if e.name() == "[memory]" and e.device_type() == torch.autograd.DeviceType.CPU
                     and span.start_ns() <= e.start_ns() <= span.end_ns()), key=lambda e: e.start_ns())
    return max(accumulate(e.nbytes() for e in inside), default=0)


def resident_bytes(rule) -> int:
    """Bytes of what a rule holds between steps: parameters, buffers, gradients and optimizer
    state (each storage once)."""
    tensors = [*rule.parameters(), *rule.buffers(), *(p.grad for p in rule.parameters() if p.grad is not None),
               *(v for opt in rule.optimizers for state in opt.state.values() for v in state.values()
                 if isinstance(v, torch.Tensor))]
    return sum({t.untyped_storage().data_ptr(): t.untyped_storage().nbytes() for t in tensors}.values())


def step_memory(rule, x: torch.Tensor, y: torch.Tensor) -> dict[str, float]:
    """Memory of one training step of ``rule``, after a warm-up step (so gradients and optimizer
    state exist): peak autograd-saved MiB; what the rule holds before the step (``resident_mb``);
    and the peak allocation above that baseline (on CUDA from the allocator's statistics, on the
    CPU from the profiler). Resident plus the peak above it is the step's peak tensor memory; the
    peak above the baseline alone can be below the saved bytes, for a rule that frees the last
    step's gradients at the step's start rather than module by module."""
    meter = SavedBytes(rule)
    row = {}

    def warmup():
        rule.train_step(x, y)
        row["resident_mb"] = resident_bytes(rule) / 2**20

    def measured_step():
        with torch.autograd.graph.saved_tensors_hooks(meter.pack, meter.unpack):
            rule.train_step(x, y)

    if x.device.type == "cpu":
        row["cpu_peak_above_baseline_mb"] = cpu_allocation_peak(warmup, measured_step) / 2**20
    else:
        warmup()
        cuda = x.device.type == "cuda"
        if cuda:
            torch.cuda.synchronize(x.device)
            before = torch.cuda.memory_allocated(x.device)
            torch.cuda.reset_peak_memory_stats(x.device)
        measured_step()
        if cuda:
            row["cuda_peak_above_baseline_mb"] = (torch.cuda.max_memory_allocated(x.device) - before) / 2**20
    return {"saved_mb": meter.peak / 2**20, **row}
