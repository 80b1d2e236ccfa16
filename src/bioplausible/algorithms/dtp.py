"""Difference target propagation (Lee, Zhang, Fischer & Bengio 2015, "Difference target
propagation"), with the trained inverses and noise-based reconstruction loss of Lee's paper, as
resolved in BASELINES.md, section 4. This is Lee's DTP: not DDTP/DRL (Meulemans 2020) nor L-DRL
(Ernoult 2022), whose feedback losses differ.

Forward layers are the model's blocks, ``h_l = f_l(h_{l-1})`` (``h_0 = x``; for the ``mlp``
``f_l = σ(W_l h_{l-1} + b_l)``). Every hidden block but the first has a trained approximate
inverse

    g_l(h_l) = σ_{l-1}(V_l h_l + c_l),   V_l : [d_{l-1}, d_l]

with ``σ_{l-1}`` the activation of the layer it reconstructs (tanh in the spec's tanh nets), on
the flattened ``h_l``, reshaped to ``h_{l-1}``. The bottom layer needs no ``g`` (nothing is
propagated below it); neither does the output layer (Lee: trained by its own gradient).

**Targets** (Lee, Algorithm 1), ``ℓ`` the per-example loss:

    ĥ_{L-1} = h_{L-1} - β ∂ℓ/∂h_{L-1}                     (penultimate layer: a gradient step)
    ĥ_{l-1} = h_{l-1} + g_l(ĥ_l) - g_l(h_l)                (difference correction, l = L-1..2)

**Forward update**, each layer on its detached input and target (one layer's autograd only):

    ℓ_l = ½‖f_l(sg h_{l-1}) - sg ĥ_l‖² / β,   ΔW_l = -∂ℓ_l/∂W_l = -[(h_l - ĥ_l) ⊙ f_l']ᵀ h_{l-1} / (Bβ)

Dividing by ``β`` (Meulemans' ``normalize_lr``) puts the step on BP's scale: with exact
inverses of linear orthogonal layers it *is* BP's step (oracle 2, tested). The output layer
takes ``-∂L/∂W_L`` of the batch loss.

**Feedback update** (Lee's reconstruction loss), on ``V_l, c_l`` only, ``ε ~ N(0, σ²I)``:

    ℓ^fb_l = ½‖g_l(f_l(h_{l-1} + ε)) - (h_{l-1} + ε)‖² / σ²

The ``1/σ²`` makes the loss O(1) whatever σ (Meulemans applies it for σ ≥ 0.02; here always).
The feedback weights have their own optimizer and learning rate (``feedback_lr``), and
:meth:`train_step` steps it *before* the targets of the same batch are computed, so the targets
use the feedback trained on that batch (the spec's pitfall). :meth:`compute_updates` alone
writes both gradients from the current feedback.

Defaults are Meulemans' verified MNIST DTP values: ``β = 0.2195``, ``σ = 0.0837``, feedback
Adam lr ``1.96e-3``.

**CNNs.** The spec's ``V_l`` is a dense matrix; it is used as such on the flattened feature
maps, so the rule runs on the ``cnn`` and ``dll_cnn_mnist`` unchanged (on ``dll_cnn_mnist`` the
largest inverse, conv2 → conv1, has 1600 × 4608 weights). Layers that compress (conv with
pooling) have no exact inverse; ``g`` learns the best one it can.

**Plausibility flags ✓✓✗** (DLL Table 1; ALGORITHMS.md criteria):

* C1 ✓: targets travel down through the separate, learned ``V_l``, never through ``W_lᵀ``
  (tested: perturbing a hidden layer's ``W`` after the forward pass leaves the targets below it
  unchanged). Caveat, from Lee's formulation: the penultimate target is a gradient step through
  the output layer, so the top weight matrix is read once.
* C2 ✓: ``ΔW_l`` reads the layer's own input, output and target (tested against the closed
  form); ``ΔV_l`` the layer's own input, output and reconstruction.
* C3 ✗: the forward activity and the target must be held at the same time, in separate phases
  (feedback training, target propagation, forward update).
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass

import torch
from torch import nn

from . import register_algorithm
from ..errors import require_positive
from ..models.base import ACTIVATIONS
from .base import Hyperparameters, LearningRule, Plausibility, StepResult
from .feedback import without


@dataclass
class DTPHyperparameters(Hyperparameters):
    beta: float = 0.2195  # target step β (Meulemans' MNIST DTP config)
    noise: float = 0.0837  # σ of the reconstruction noise
    feedback_lr: float = 1.96e-3  # learning rate of the inverses (their own optimizer)

    def __post_init__(self) -> None:
        super().__post_init__()
        require_positive("dtp", beta=self.beta, noise=self.noise, feedback_lr=self.feedback_lr)


class Inverse(nn.Module):
    """``g_l(h) = σ(V h + c)`` from the flattened ``h_l`` to a tensor shaped like ``h_{l-1}``."""

    def __init__(self, d_in: int, out_shape: tuple[int, ...], activation: nn.Module):
        super().__init__()
        self.linear = nn.Linear(d_in, math.prod(out_shape))
        self.activation = activation
        self.out_shape = out_shape

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.activation(self.linear(h.flatten(1))).view(-1, *self.out_shape)


def block_activation(block: nn.Module) -> nn.Module:
    """A copy of the (first) activation module of ``block``, or the identity if it has none."""
    for m in block.modules():
        if type(m) in ACTIVATIONS.values():
            return copy.deepcopy(m)
    return nn.Identity()


@dataclass
class ForwardPass:
    """Each block run on its detached input: ``inputs[l]`` (``h_l``, detached) and ``outputs[l]``
    (attached to block ``l``'s graph only)."""

    inputs: list[torch.Tensor]
    outputs: list[torch.Tensor]

    def h(self, j: int) -> torch.Tensor:
        """``h_j``, detached (``h_0 = x``)."""
        return self.inputs[j] if j < len(self.inputs) else self.outputs[-1].detach()


@register_algorithm("dtp")
class DifferenceTargetPropagation(LearningRule):
    """Difference target propagation: layer targets sent down through trained inverses, with a difference correction."""

    name = "dtp"
    flags = Plausibility(no_weight_transport=True, local_errors=True, no_separate_phases=False)
    # Each layer's loss is differentiated on its own detached input, outside any DDP forward, so
    # the gradients are all-reduced explicitly (DISTRIBUTED.md).
    update_kind = "manual"
    Hyperparameters = DTPHyperparameters

    @classmethod
    def supports(cls, model: nn.Module) -> str | None:
        from ..models.base import Network

        if not isinstance(model, Network) or type(model).forward is not Network.forward:
            return "DTP needs a bioplausible Network whose forward is the composition of its blocks"
        return None

    def __init__(self, model, **hyperparameters):
        super().__init__(model, **hyperparameters)
        shapes = self._shapes()
        blocks = model.blocks
        # g for blocks 1..L-2 (0-based): the first needs none, the output layer is trained by its gradient.
        self.inverses = nn.ModuleDict({
            str(k): Inverse(math.prod(shapes[k + 1]), shapes[k], block_activation(blocks[k - 1]))
            for k in range(1, len(blocks) - 1)
        })
        param = next(model.parameters())
        self.inverses.to(device=param.device, dtype=param.dtype)

    @torch.no_grad()
    def _shapes(self) -> list[tuple[int, ...]]:
        """The shape of one example at every block boundary, from a dry forward in eval mode."""
        was_training = self.model.training
        param = next(self.model.parameters())
        h = torch.zeros(2, *self.model.input_shape, device=param.device, dtype=param.dtype)
        shapes = [tuple(h.shape[1:])]
        try:
            self.model.eval()
            for block in self.model.blocks:
                h = block(h)
                shapes.append(tuple(h.shape[1:]))
        finally:
            self.model.train(was_training)
        return shapes

    # ------------------------------------------------------------------ the three phases
    def forward_pass(self, x: torch.Tensor) -> ForwardPass:
        self.model.check_input(x)
        inputs, outputs, h = [], [], x
        last = len(self.model.blocks) - 1
        for k, block in enumerate(self.model.blocks):
            h_in = h.detach().requires_grad_(k == last)  # ∂ℓ/∂h_{L-1} for the penultimate target
            inputs.append(h_in)
            h = block(h_in)
            outputs.append(h)
        return ForwardPass(inputs, outputs)

    def feedback_loss(self, forward: ForwardPass) -> torch.Tensor:
        """``Σ_l ℓ^fb_l``, batch mean; its gradient reaches only the inverses."""
        total = forward.outputs[-1].new_zeros(())
        sigma = self.hp.noise
        for key, g in self.inverses.items():
            k = int(key)
            noisy = forward.h(k) + sigma * torch.randn_like(forward.h(k))
            with torch.no_grad():
                image = self.model.blocks[k](noisy)
            total = total + 0.5 * (g(image) - noisy).pow(2).flatten(1).sum(1).mean() / sigma**2
        return total

    def targets(self, forward: ForwardPass, y: torch.Tensor) -> list[torch.Tensor | None]:
        """``[None, ĥ_1, ..., ĥ_{L-1}]``: the penultimate target, then difference-corrected
        targets through the inverses."""
        last = len(self.model.blocks) - 1
        targets: list = [None] * last
        if last == 0:
            return [None]
        output, h_pen = forward.outputs[-1], forward.inputs[-1]
        # ℓ per example: the batch mean's gradient times B.
        grad = torch.autograd.grad(self.loss(output, y), h_pen, retain_graph=True)[0] * output.shape[0]
        with torch.no_grad():
            targets.append(h_pen - self.hp.beta * grad)
            for k in range(last - 1, 0, -1):
                g = self.inverses[str(k)]
                targets[k] = forward.h(k) + g(targets[k + 1]) - g(forward.h(k + 1))
        return targets

    def forward_loss(self, forward: ForwardPass, targets: list, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``Σ_l ℓ_l + L(output)``: each hidden layer's distance to its target (over β), the
        output layer's own loss; and the batch loss (detached)."""
        loss = self.loss(forward.outputs[-1], y)
        total = loss
        for k in range(len(self.model.blocks) - 1):
            distance = (forward.outputs[k] - targets[k + 1]).pow(2).flatten(1).sum(1).mean()
            total = total + 0.5 * distance / self.hp.beta
        return total, loss.detach()

    # ------------------------------------------------------------------ the rule
    def compute_updates(self, x, y) -> StepResult:
        """Both gradients from the current feedback (``train_step`` steps the feedback first)."""
        forward = self.forward_pass(x)
        if len(self.inverses):
            self.feedback_loss(forward).backward()
        return self._forward_update(forward, y)

    def _forward_update(self, forward: ForwardPass, y: torch.Tensor) -> StepResult:
        total, loss = self.forward_loss(forward, self.targets(forward, y), y)
        total.backward()
        forward.inputs[-1].grad = None  # the leaf that gave ∂ℓ/∂h_{L-1}; not a parameter
        return StepResult(loss, forward.outputs[-1].detach())

    def train_step(self, x: torch.Tensor, y: torch.Tensor) -> StepResult:
        """Feedback update and step, then targets from the updated inverses, forward update and step."""
        if not self.optimizers:
            raise RuntimeError("call configure_optimizers() before train_step()")
        for opt in self.optimizers:
            opt.zero_grad(set_to_none=True)
        forward = self.forward_pass(x)
        if len(self.inverses):
            self.feedback_loss(forward).backward()
            self._step(self.optimizers[1], list(self.inverses.parameters()))
        result = self._forward_update(forward, y)
        self._step(self.optimizers[0], [p for p in self.model.parameters() if p.requires_grad])
        self.after_step()
        return result

    def _step(self, optimizer: torch.optim.Optimizer, params: list[torch.Tensor]) -> None:
        if self.grad_sync is not None:
            self.grad_sync([p.grad for p in params if p.grad is not None])
        optimizer.step()

    def configure_optimizers(self, make_optimizer):
        feedback = list(self.inverses.parameters())
        self.optimizers = [make_optimizer(without(self.param_groups(), feedback))]
        if feedback:
            self.optimizers.append(make_optimizer([{"name": "feedback", "params": feedback, "lr": self.hp.feedback_lr}]))
        return self.optimizers
