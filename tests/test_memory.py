"""training.memory: the CPU allocation peak and the resident bytes that benchmarks read beside the
autograd-saved bytes."""

from __future__ import annotations

import torch

from bioplausible.algorithms import create_algorithm
from bioplausible.models import create_model
from bioplausible.training.memory import cpu_allocation_peak, resident_bytes

MIB = 2**20


def test_cpu_allocation_peak_is_measured_from_where_the_step_starts():
    held = []

    def warmup():  # what the measured call frees was allocated before it, as a previous step's gradients
        held.append(torch.empty(MIB // 4))

    def step():
        held.pop()  # -1 MiB
        a = torch.empty(MIB // 2)  # +2 MiB
        b = torch.empty(MIB // 4)  # +1 MiB: the peak, 2 MiB above the start
        del a, b

    assert cpu_allocation_peak(warmup, step) == 2 * MIB
    assert cpu_allocation_peak(lambda: None, lambda: None) == 0


def test_resident_bytes_counts_parameters_buffers_gradients_and_optimizer_state():
    torch.manual_seed(0)
    rule = create_algorithm("bp", create_model("mlp", (1, 4, 4), 3, hidden=[5], batch_norm=True))
    rule.configure_optimizers(lambda groups: torch.optim.SGD(groups, lr=0.1, momentum=0.9))
    params = sum(p.numel() * p.element_size() for p in rule.parameters())
    buffers = sum(b.numel() * b.element_size() for b in rule.buffers())
    assert buffers and resident_bytes(rule) == params + buffers  # no gradient or momentum yet
    rule.train_step(torch.randn(4, 1, 4, 4), torch.tensor([0, 1, 2, 0]))
    assert resident_bytes(rule) == 3 * params + buffers  # + a gradient and a momentum per parameter
