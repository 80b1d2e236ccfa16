"""The recurrent form of DLL (paper, Appendix B, eqs. 10-30) for the Elman RNN; used by the
``dll`` and ``dll_fa`` rules (``dll.py``) when the model is an :class:`ElmanRNN`.

Forward (basal), for ``t = 1..n`` from ``h_0 = 0``:

    a_t = W_h h_{t-1} + W_x x_t + b,   h_t = f(a_t),   y_t = W_y h_t          (10), (12)

Errors (apical), top-down in time:

    ξ^y_t = -∇_{y_t} ℓ                          mse: t_t - y_t (13); ce: onehot - softmax(y_t)
    ξ^h_n = Θ_yᵀ ξ^y_n                                                         (20)
    ξ^h_t = Θ_yᵀ ξ^y_t + Θ_hᵀ [ξ^h_{t+1} ⊙ f'(a_{t+1})]                        (19)

    the fixed point of  x_t ← x_t + η_x (-x_t + Θ_yᵀ ξ^y_t + Θ_hᵀ[x_{t+1} ⊙ f'(a_{t+1})])  (17), (18)

Updates, with ``g_t = ξ^h_t ⊙ f'(a_t)``:

    ΔW_y = Σ_t ξ^y_t h_tᵀ          (21)      ΔΘ_y = -Σ_t ξ^y_t ξ^hᵀ_t                (27), in Θ_y's shape
    ΔW_x = Σ_t g_t x_tᵀ, Δb = Σ_t g_t (23)   ΔΘ_h = -Σ_{t<n} g_{t+1} ξ^hᵀ_t          (29), in Θ_h's shape
    ΔW_h = Σ_t g_t h_{t-1}ᵀ        (25)

Θ_y and Θ_h have the shapes of W_y and W_h; W_x gets no Θ (the input sends no error). This is
the hand-written loop the per-layer rewiring of ``dll.py`` cannot express: ``h_t`` feeds both
W_y and W_h, and (27) pairs ξ^y_t with the *total* ξ^h_t, not with the part W_y sent down.

With Θ = W the recursion (19) is exactly backpropagation through time over the whole window
(not truncated: ξ^h_t collects the errors of every later step), so ΔW equals minus the
gradient of the loss (tested in float64). A step with no target (``readout="last"``: only the
last output is scored) has ξ^y_t = 0. Sums over time and batch are divided by the number of
scored predictions (B·T or B), the normalisation of ``LearningRule.loss``.

C1: the errors read only Θ and the stored forward quantities (f'(a_t)); changing W_y or W_h
after the forward pass leaves ξ^h unchanged. C2: each ΔW and ΔΘ is the product of the two
ends' compartments (ξ or g of one neuron, activity or ξ of the other). C3: errors live in the
apical compartments while the basal ones hold the forward activity, nothing is frozen in turn.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from .base import LearningRule, StepResult
from .feedback import random_like_weight


@dataclass
class RecurrentPass:
    """What the forward pass leaves for the error pass: inputs, activities, f'(a)."""

    seq: torch.Tensor  # x_t, [B, T, D]
    states: torch.Tensor  # h_t, [B, T, H]
    fprime: torch.Tensor  # f'(a_t), [B, T, H]
    outputs: torch.Tensor  # y_t, [B, T, C]


class RecurrentDLL(nn.Module):
    """Θ_y, Θ_h (parameters if plastic, buffers if frozen) and the updates of Appendix B."""

    def __init__(self, cell: nn.Module, plastic: bool, settle_steps: int = 0, eta_x: float = 0.5):
        super().__init__()
        for name, layer in (("theta_y", cell.W_y), ("theta_h", cell.W_h)):
            theta = random_like_weight(layer)
            if plastic:
                self.register_parameter(name, nn.Parameter(theta))
            else:
                self.register_buffer(name, theta)
        self.settle_steps, self.eta_x = settle_steps, eta_x

    @staticmethod
    @torch.no_grad()
    def forward_pass(cell: nn.Module, x: torch.Tensor) -> RecurrentPass:
        seq = cell.to_sequence(x)
        drive = cell.W_x(seq)  # W_x x_t + b for every step at once
        h = drive.new_zeros(drive.shape[0], drive.shape[2])
        pre, states = [], []
        for t in range(seq.shape[1]):
            a = drive[:, t] + cell.W_h(h)
            h = cell.act(a)
            pre.append(a)
            states.append(h)
        pre_t, states_t = torch.stack(pre, 1), torch.stack(states, 1)
        with torch.enable_grad():  # f'(a) for any elementwise activation
            a = pre_t.requires_grad_()
            fprime = torch.autograd.grad(cell.act(a).sum(), a)[0]
        return RecurrentPass(seq, states_t, fprime, cell.W_y(states_t))

    def local_errors(self, output_error: torch.Tensor, fprime: torch.Tensor) -> torch.Tensor:
        """ξ^h_t for every step: closed form (19)-(20), or ``settle_steps`` synchronous steps of
        (17)-(18) from x = 0 (exact after T steps with η_x = 1, geometric otherwise)."""
        top = output_error @ self.theta_y  # Θ_yᵀ ξ^y_t
        if self.settle_steps:
            xi = torch.zeros_like(top)
            for _ in range(self.settle_steps):
                drive = top.clone()
                drive[:, :-1] += (xi[:, 1:] * fprime[:, 1:]) @ self.theta_h
                xi = xi + self.eta_x * (drive - xi)
            return xi
        xi = torch.empty_like(top)
        carry = torch.zeros_like(top[:, 0])
        for t in reversed(range(top.shape[1])):
            xi[:, t] = top[:, t] + carry
            carry = (xi[:, t] * fprime[:, t]) @ self.theta_h  # Θ_hᵀ[ξ^h_t ⊙ f'(a_t)], sent to t-1
        return xi

    @torch.no_grad()
    def compute_updates(self, rule: LearningRule, x: torch.Tensor, y: torch.Tensor) -> StepResult:
        """Write ``p.grad = -Δp`` for the cell's weights and Θ; ``rule`` supplies the model and loss."""
        cell = rule.model.cell
        fwd = self.forward_pass(cell, x)
        # ξ^y = -∇_y of the summed loss, per scored prediction (zero at unscored steps).
        with torch.enable_grad():
            outputs = fwd.outputs.requires_grad_()
            scored = outputs if cell.readout == "all" else outputs[:, -1]
            loss = rule.loss(scored, y)
            count = scored[..., 0].numel()
            output_error = -count * torch.autograd.grad(loss, outputs)[0]
        xi = self.local_errors(output_error, fwd.fprime)
        g = xi * fwd.fprime
        previous = torch.cat([torch.zeros_like(fwd.states[:, :1]), fwd.states[:, :-1]], 1)  # h_{t-1}
        updates = [  # Δ of (21), (23), (25), (27), (29), summed over batch and time
            (cell.W_y.weight, torch.einsum("btc,bth->ch", output_error, fwd.states)),
            (cell.W_y.bias, output_error.sum((0, 1))),
            (cell.W_x.weight, torch.einsum("bth,btd->hd", g, fwd.seq)),
            (cell.W_x.bias, g.sum((0, 1))),
            (cell.W_h.weight, torch.einsum("bth,btk->hk", g, previous)),
            (self.theta_y, -torch.einsum("btc,bth->ch", output_error, xi)),
            (self.theta_h, -torch.einsum("bth,btk->hk", g[:, 1:], xi[:, :-1])),
        ]
        for p, delta in updates:
            if isinstance(p, nn.Parameter) and p.requires_grad:
                p.grad = -delta / count
        return StepResult(loss.detach(), scored.detach())
