"""Small builders shared by the tests."""

from __future__ import annotations

import torch

from bioplausible.models import create_model


def small_mlp(seed: int = 0, dtype=torch.float64, hidden=(12, 9), activation="tanh"):
    torch.manual_seed(seed)
    return create_model("mlp", input_shape=(1, 4, 4), num_classes=5, hidden=list(hidden), activation=activation).to(dtype)


def small_cnn(seed: int = 0, dtype=torch.float64):
    torch.manual_seed(seed)
    return create_model("cnn", input_shape=(2, 8, 8), num_classes=5, channels=[4, 6], hidden=10, activation="tanh").to(dtype)


def batch(model, n: int = 7, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    dtype = next(model.parameters()).dtype
    x = torch.randn(n, *model.input_shape, generator=g, dtype=dtype)
    y = torch.randint(0, model.num_classes, (n,), generator=g)
    return x, y


def angle_degrees(a: torch.Tensor, b: torch.Tensor) -> float:
    cos = torch.nn.functional.cosine_similarity(a.flatten().double(), b.flatten().double(), dim=0)
    return torch.rad2deg(torch.arccos(cos.clamp(-1, 1))).item()


def check_nudged_relaxation(rule, x, y, widths, plain_step, free_steps=20, nudged_steps=9, beta=0.7):
    """The rule's free phase, then its +β and -β phases stacked as one batch of 2B rows with one β
    per row (as ``nudged_phases`` runs them, but from rows laid out as ``torch.cat`` makes them),
    must equal the same phases by ``plain_step(x, states, target=None, betas=None)``, the paper's
    equations written out row by row in float64; and ``relax`` must never write into its start."""
    twice = lambda t: torch.cat([t, t])  # noqa: E731
    betas = torch.cat([torch.full((len(x), 1), beta), torch.full((len(x), 1), -beta)]).to(x.dtype)
    with torch.no_grad():
        free, drive, syn = rule.free_phase(x, free_steps)
        target = twice(rule.target(y, free[-1]))
        start = [twice(s) for s in free]
        kept = [s.clone() for s in start]
        nudged = rule.relax(start, [twice(d) for d in drive], syn, nudged_steps, target, betas)
        plain_free = [torch.zeros(len(x), width, dtype=x.dtype) for width in widths]
        for _ in range(free_steps):
            plain_free = plain_step(x, plain_free)
        plain_nudged = [twice(s) for s in plain_free]
        for _ in range(nudged_steps):
            plain_nudged = plain_step(twice(x), plain_nudged, target, betas)
    for got, want in zip(free + nudged, plain_free + plain_nudged):
        torch.testing.assert_close(got, want, rtol=0, atol=1e-12)
    for s, s0 in zip(start, kept):
        assert torch.equal(s, s0)
