"""Predictive coding (Whittington & Bogacz 2017; Song et al. 2020, Z-IL; Millidge et al. 2022,
FPA; Salvatori et al. 2024, iPC), as resolved in BASELINES.md, section 2.

**Parametrisation.** PC puts the nonlinearity before the weights. Value nodes ``x_0..x_L``:

    μ_{l+1} = W_l f_l(x_l) + b_l,    ε_l = x_l - μ_l,    F = Σ_{l=1}^{L} ½‖ε_l‖²

The library's blocks are ``[pre, weight layer, post]`` (``pre`` a Flatten, ``post`` the
activation and pooling), so the value node ``x_{l+1}`` is the *output of the weight layer* of
block ``l`` (its pre-activation) and ``f_l = pre_l ∘ post_{l-1}`` (``f_0 = pre_0``, the identity
on the input up to a reshape). A network whose last block ends with its weight layer is then
exactly the spec's ``h̃_{l+1} = W_l f(h̃_l) + b_l`` with a linear output ``μ_L``, so BP on the
model is the reference every oracle compares with.

**Output.** ``x_0 = x``. For a CE loss the output error is not Gaussian: it is held fixed at
``ε_L = onehot(y) - softmax(μ̄_L)`` (``μ̄`` the feedforward values). For MSE the output node is
clamped, ``x_L = y`` (hard) or ``x_L = μ_L + β(y - μ_L)`` (soft, with the current ``μ_L``), so
``ε_L = β(y - μ_L)`` follows ``μ_L`` during inference (``β = 1`` for the hard clamp). A soft
clamp also scales a CE output error by ``β``, and divides the weight update by ``β`` so that its
scale is BP's (oracle 3: ``ΔW/β → -∂L/∂W``).
Hidden nodes start at their feedforward values, so every ``ε_l = 0`` at ``t = 0``.

**Inference and learning** (row vectors, ``X_l`` is ``[B, ...]``), all layers at once, ``ε``
recomputed every step, under ``no_grad``:

    X_l ← X_l + γ(-E_l + f_l'(X_l)ᵀ[W_lᵀ E_{l+1}])              (standard dynamics)
    ΔW_l = E_{l+1}ᵀ f_l(X_l) / B,   Δb_l = Σ_batch E_{l+1} / B     (Hebbian: error × rate)

Variants (``variant``):

* ``standard`` (W&B 2017): ``T`` inference steps, then one weight update from the final states.
* ``fpa`` (fixed prediction assumption): ``μ_l = μ̄_l`` and the Jacobians are held at the
  feedforward values, ``X_l ← X_l - γ(E_l - D_l W_lᵀ E_{l+1})`` with ``E_l = X_l - μ̄_l``, and
  ``ΔW_l = E_{l+1}ᵀ f_l(X̄_l) / B``. The fixed point ``E_l = D_l W_lᵀ E_{l+1}`` is BP's recursion;
  it is reached geometrically at rate ``1 - γ`` (and after ``L - 1`` steps at ``γ = 1``). The output
  error is the hard one.
* ``zil`` (Z-IL, Song et al. 2020): standard dynamics, ``γ = 1``, ``L - 1`` steps; ``W_{L-1-t}``
  takes its update from the errors and rates at step ``t`` (``t = 0..L-1``), the step at which the
  error first reaches it and equals BP's there. The updates are collected and handed to the
  optimizer together, so one Z-IL step equals one BP step (oracle 1). Hard output error.
* ``ipc`` (incremental PC, Salvatori et al. 2024): at *every* inference step both ``X`` and ``W``
  move, ``W ← W + α E_{l+1}ᵀ f_l(X_l)/B``; no signal ends inference. The rule steps the run's
  optimizers itself after each of the first ``T - 1`` steps and leaves the ``T``-th update to
  :meth:`train_step`, so ``α`` is the run's learning rate.

``η`` and ``α`` are the optimizer's ``lr`` (as for every rule); ``T = inference_steps``,
``γ = inference_rate``, ``β = beta`` and the variant are this rule's options.

**No autograd through the network.** Prediction errors are written out; ``W_lᵀ E`` is ``E @ W``
for a Linear layer and the transposed convolution ``torch.nn.grad.conv2d_input`` for a Conv2d;
``ΔW`` is ``Eᵀ f(X)`` or ``torch.nn.grad.conv2d_weight``. The only derivative taken by machinery
is the local Jacobian ``f_l'(X_l)ᵀ`` of *one* block's activation and pooling (``post_{l-1}`` then
``pre_l``, no weights), as a vector-Jacobian product from ``torch.func.vjp`` at ``X_l``; it is
never taken through more than one layer. So the rule runs on the ``mlp``, the ``cnn`` and the
DLL CNNs (tanh, max/average pooling) alike; blocks with BatchNorm or dropout are refused (batch
coupling and random masks have no place in the energy).

**Prediction.** With the output free, the feedforward values are an equilibrium (every ``ε_l =
0``), so inference from the feedforward initialisation does not move and ``predict`` is the
forward pass.

**Plausibility flags ✗✓✗** (DLL Table 1; ALGORITHMS.md criteria):

* C1 ✗: inference sends ``E_{l+1}`` down through ``W_lᵀ``, the transpose of the forward weights
  (the C1 probe sees the hidden errors change when ``W_{l+1}`` is perturbed; tested).
* C2 ✓: ``ΔW_l`` is the error node above times the rate below, both at the synapse; after
  inference the update of layer ``l`` reads nothing from other layers (tested).
* C3 ✗: learning waits for inference to settle (iPC argues for ✓; the spec keeps DLL's ✗).
"""

from __future__ import annotations

import numbers
from dataclasses import dataclass
from functools import partial

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import vjp

from . import register_algorithm
from ..errors import ConfigError, require_positive
from .base import Hyperparameters, LearningRule, Plausibility, StepResult

VARIANTS = ("standard", "fpa", "zil", "ipc")
CLAMPS = ("hard", "soft")
DEFAULT_STEPS = 20
DEFAULT_RATE = 0.1


@dataclass
class PCHyperparameters(Hyperparameters):
    variant: str = "standard"  # standard | fpa | zil | ipc
    clamp: str = "hard"  # output clamp of standard and ipc: hard (x_L = y) or soft (β)
    beta: float = 0.1  # β, strength of the soft clamp (clamp="soft" only)
    inference_steps: int | None = None  # T (default 20); Z-IL's is fixed at L - 1
    inference_rate: float | None = None  # γ (default 0.1); Z-IL's is fixed at 1

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.variant not in VARIANTS:
            raise ConfigError(f"pc: unknown variant '{self.variant}'; options: {', '.join(VARIANTS)}")
        if self.clamp not in CLAMPS:
            raise ConfigError(f"pc: unknown clamp '{self.clamp}'; options: {', '.join(CLAMPS)}")
        if self.clamp == "soft" and self.variant in ("fpa", "zil"):
            raise ConfigError(f"pc: 'clamp' soft applies to variants standard and ipc; {self.variant} "
                              "computes BP's errors from the hard output error")
        require_positive("pc", beta=self.beta)
        if self.beta > 1:
            raise ConfigError(f"pc: 'beta' must be in (0, 1] (1 is the hard clamp), got {self.beta}")
        if self.variant == "zil":
            if self.inference_steps is not None:
                raise ConfigError("pc: variant zil runs exactly L - 1 inference steps (one per weight layer "
                                  "below the output); leave 'inference_steps' unset")
            if self.inference_rate not in (None, 1):
                raise ConfigError(f"pc: variant zil needs 'inference_rate' 1, got {self.inference_rate}")
        if self.inference_steps is not None and (
            isinstance(self.inference_steps, bool) or not isinstance(self.inference_steps, numbers.Integral)
            or self.inference_steps < 1
        ):
            raise ConfigError(f"pc: 'inference_steps' must be a positive integer, got {self.inference_steps!r}")
        if self.inference_rate is not None:
            require_positive("pc", inference_rate=self.inference_rate)

    @property
    def steps(self) -> int:
        return DEFAULT_STEPS if self.inference_steps is None else int(self.inference_steps)

    @property
    def rate(self) -> float:
        if self.variant == "zil":
            return 1.0
        return DEFAULT_RATE if self.inference_rate is None else float(self.inference_rate)

    @property
    def scale(self) -> float:
        """The output error's factor: β for a soft clamp, 1 for a hard one."""
        return self.beta if self.clamp == "soft" else 1.0


@dataclass
class Stage:
    """One block cut at its weight layer: ``pre`` (reshapes), ``layer``, ``post`` (activation,
    pooling)."""

    pre: list[nn.Module]
    layer: nn.Linear | nn.Conv2d
    post: list[nn.Module]


def split_blocks(model: nn.Module) -> list[Stage] | str:
    """The stages of ``model``, or the reason PC cannot run on it."""
    from ..models.base import Network

    if not isinstance(model, Network) or type(model).forward is not Network.forward:
        return "PC needs a bioplausible Network whose forward is the composition of its blocks"
    stages = []
    for i, block in enumerate(model.blocks):
        modules = list(block) if isinstance(block, nn.Sequential) else [block]
        at = [j for j, m in enumerate(modules) if isinstance(m, (nn.Linear, nn.Conv2d))]
        if len(at) != 1:
            return f"block {i} has {len(at)} Linear/Conv2d layers; PC needs exactly one weight layer per block"
        j = at[0]
        pre, layer, post = modules[:j], modules[j], modules[j + 1:]
        if type(layer) not in (nn.Linear, nn.Conv2d):
            return f"block {i}: {type(layer).__name__} is not a plain Linear or Conv2d"
        if isinstance(layer, nn.Conv2d) and (isinstance(layer.padding, str) or layer.padding_mode != "zeros"):
            return f"block {i}: PC's transposed convolution needs integer zero padding"
        if any(not isinstance(m, (nn.Flatten, nn.Identity)) for m in pre):
            return f"block {i}: only reshapes may come before the weight layer"
        for m in post:
            if isinstance(m, nn.modules.dropout._DropoutNd) or any(True for _ in m.parameters()) \
                    or any(True for _ in m.buffers()):
                return (f"block {i}: {type(m).__name__} after the weight layer; the PC energy takes a fixed "
                        "activation f (no BatchNorm, dropout or trainable activation)")
        stages.append(Stage(pre, layer, post))
    if stages[-1].post:
        return "the last block must end with its weight layer (PC's output node is the linear prediction μ_L)"
    return stages


def _apply(modules: list[nn.Module], x: torch.Tensor) -> torch.Tensor:
    for m in modules:
        x = m(x)
    return x


@dataclass
class Relaxation:
    """What inference leaves: the value nodes ``states``, and for every weight layer ``k`` the
    error above it ``errors[k+1]`` and the rate below it ``rates[k]`` that make its update;
    ``output`` is the feedforward ``μ̄_L``."""

    states: list[torch.Tensor]  # [X_0, ..., X_L] at the end of inference
    errors: list[torch.Tensor | None]  # [None, E_1, ..., E_L]
    rates: list[torch.Tensor]  # [f_0(X_0), ..., f_{L-1}(X_{L-1})]
    output: torch.Tensor


@register_algorithm("pc")
class PredictiveCoding(LearningRule):
    """Predictive coding: inference on value nodes, Hebbian error × rate updates (standard, FPA, Z-IL, iPC)."""

    name = "pc"
    flags = Plausibility(no_weight_transport=False, local_errors=True, no_separate_phases=False)
    update_kind = "manual"
    Hyperparameters = PCHyperparameters

    @classmethod
    def supports(cls, model: nn.Module) -> str | None:
        stages = split_blocks(model)
        return stages if isinstance(stages, str) else None

    def __init__(self, model, **hyperparameters):
        super().__init__(model, **hyperparameters)
        self.stages: list[Stage] = split_blocks(model)  # modules stay registered in the model only

    # ------------------------------------------------------------------ the network in PC form
    def f(self, k: int, x_k: torch.Tensor) -> torch.Tensor:
        """``f_k(x_k)``: the rate that weight layer ``k`` reads (``post_{k-1}`` then ``pre_k``)."""
        if k > 0:
            x_k = _apply(self.stages[k - 1].post, x_k)
        return _apply(self.stages[k].pre, x_k)

    def rates_and_jacobians(self, states: list[torch.Tensor]):
        """``f_k(X_k)`` for every ``k`` and, for the hidden nodes, the vector-Jacobian product of
        ``f_k`` at ``X_k`` (one block's activation and pooling only)."""
        rates, jacobians = [self.f(0, states[0])], [None]
        for k in range(1, len(self.stages)):
            r, pullback = vjp(partial(self.f, k), states[k])
            rates.append(r)
            jacobians.append(lambda v, pullback=pullback: pullback(v)[0])
        return rates, jacobians

    def predictions(self, rates: list[torch.Tensor]) -> list[torch.Tensor | None]:
        """``[None, μ_1, ..., μ_L]`` with ``μ_{k+1} = W_k f_k(X_k) + b_k``."""
        return [None] + [stage.layer(r) for stage, r in zip(self.stages, rates)]

    def send_down(self, k: int, error: torch.Tensor, rate: torch.Tensor) -> torch.Tensor:
        """``W_kᵀ E_{k+1}``, shaped like ``f_k(X_k)``."""
        layer = self.stages[k].layer
        if isinstance(layer, nn.Linear):
            return error @ layer.weight
        return torch.nn.grad.conv2d_input(rate.shape, layer.weight, error, layer.stride, layer.padding,
                                          layer.dilation, layer.groups)

    def layer_update(self, k: int, error: torch.Tensor, rate: torch.Tensor):
        """``(ΔW_k, Δb_k) = (E_{k+1}ᵀ f_k(X_k), Σ E_{k+1}) / B``: error above times rate below."""
        layer, batch = self.stages[k].layer, error.shape[0]
        if isinstance(layer, nn.Linear):
            dw = error.T @ rate
            db = error.sum(0)
        else:
            dw = torch.nn.grad.conv2d_weight(rate, layer.weight.shape, error, layer.stride, layer.padding,
                                             layer.dilation, layer.groups)
            db = error.sum((0, 2, 3))
        return dw / batch, db / batch

    def write_updates(self, relaxation: Relaxation) -> None:
        """``θ.grad = -Δθ`` (divided by β under a soft clamp, so the step has BP's scale)."""
        for k, stage in enumerate(self.stages):
            dw, db = self.layer_update(k, relaxation.errors[k + 1], relaxation.rates[k])
            stage.layer.weight.grad = -dw / self.hp.scale
            if stage.layer.bias is not None:
                stage.layer.bias.grad = -db / self.hp.scale

    # ------------------------------------------------------------------ output and inference
    def feedforward(self, x: torch.Tensor) -> list[torch.Tensor]:
        """``[X_0, ..., X_L]`` at their feedforward values (so every ``ε_l = 0``)."""
        self.model.check_input(x)
        states = [x]
        for k, stage in enumerate(self.stages):
            states.append(stage.layer(self.f(k, states[k])))
        return states

    def output_error(self, mu_bar: torch.Tensor, y: torch.Tensor):
        """``E_L`` as a function of the current ``μ_L``: fixed for CE, ``β(y - μ_L)`` for MSE."""
        if y.is_floating_point():  # regression targets: squared error, as LearningRule.loss
            target = y.to(mu_bar.dtype)
        else:
            target = F.one_hot(y, mu_bar.shape[-1]).to(mu_bar.dtype)
        if self.hp.loss == "ce" and not y.is_floating_point():
            fixed = self.hp.scale * (target - torch.softmax(mu_bar, dim=-1))
            return lambda mu: fixed
        # x_L = μ_L + β(y - μ_L) with the *current* μ_L (β = 1: x_L = y). A node clamped at
        # μ̄_L + β(y - μ̄_L) instead would not tend to BP as β → 0: the hidden nodes would absorb
        # a fixed fraction of the output error (cosine 0.97 with BP at any β on the test net).
        return lambda mu: self.hp.scale * (target - mu)

    def errors(self, states, mus, output_error) -> list[torch.Tensor | None]:
        last = len(self.stages)
        return [None] + [states[k] - mus[k] for k in range(1, last)] + [output_error(mus[last])]

    @torch.no_grad()
    def relax(self, x: torch.Tensor, y: torch.Tensor) -> Relaxation:
        """Inference for the ``standard``, ``fpa`` and ``zil`` variants (weights held)."""
        if self.hp.variant == "fpa":
            return self._relax_fixed_prediction(x, y)
        if self.hp.variant == "ipc":
            raise RuntimeError("pc: variant ipc moves the weights during inference; use train_step()")
        states = self.feedforward(x)
        output_error = self.output_error(states[-1], y)
        last = len(self.stages)
        zil = self.hp.variant == "zil"
        steps = last - 1 if zil else self.hp.steps
        recorded_errors: list = [None] * (last + 1)
        recorded_rates: list = [None] * last
        for t in range(steps + 1):
            rates, jacobians = self.rates_and_jacobians(states)
            errors = self.errors(states, self.predictions(rates), output_error)
            if zil:  # W_{L-1-t} learns at step t, when the error first reaches it
                k = last - 1 - t
                recorded_errors[k + 1], recorded_rates[k] = errors[k + 1], rates[k]
            if t == steps:
                break
            for k in range(1, last):  # all hidden nodes at once, from the same errors
                states[k] = states[k] + self.hp.rate * (
                    -errors[k] + jacobians[k](self.send_down(k, errors[k + 1], rates[k])))
        # X_L is never moved (its error is fixed or its node clamped): it stays μ̄_L.
        if zil:
            return Relaxation(states, recorded_errors, recorded_rates, states[-1])
        return Relaxation(states, errors, rates, states[-1])

    def _relax_fixed_prediction(self, x: torch.Tensor, y: torch.Tensor) -> Relaxation:
        states = self.feedforward(x)  # X̄: μ̄_l = X̄_l, held, as are f(X̄) and the Jacobians
        rates, jacobians = self.rates_and_jacobians(states)
        last = len(self.stages)
        errors = [None] + [torch.zeros_like(states[k]) for k in range(1, last)]
        errors.append(self.output_error(states[-1], y)(states[-1]))
        for _ in range(self.hp.steps):
            sent = [None] + [jacobians[k](self.send_down(k, errors[k + 1], rates[k])) for k in range(1, last)]
            for k in range(1, last):
                errors[k] = errors[k] - self.hp.rate * (errors[k] - sent[k])
        settled = [states[0]] + [states[k] + errors[k] for k in range(1, last)] + [states[-1]]
        return Relaxation(settled, errors, rates, states[-1])

    # ------------------------------------------------------------------ the rule
    @torch.no_grad()
    def compute_updates(self, x, y) -> StepResult:
        if self.hp.variant == "ipc":
            output = self._incremental(x, y)
        else:
            relaxation = self.relax(x, y)
            self.write_updates(relaxation)
            output = relaxation.output
        return StepResult(self.loss(output, y).detach(), output)

    def _incremental(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """iPC: every inference step also updates the weights. The optimizers step here after
        each of the first ``T - 1`` updates; ``train_step`` applies the last one."""
        if not self.optimizers:
            raise RuntimeError("pc: variant ipc updates the weights at every inference step; "
                               "call configure_optimizers() first")
        states = self.feedforward(x)
        output = states[-1]
        output_error = self.output_error(output, y)
        last = len(self.stages)
        for t in range(self.hp.steps):
            rates, jacobians = self.rates_and_jacobians(states)
            errors = self.errors(states, self.predictions(rates), output_error)
            sent = [None] + [jacobians[k](self.send_down(k, errors[k + 1], rates[k])) for k in range(1, last)]
            self.write_updates(Relaxation(states, errors, rates, output))
            for k in range(1, last):
                states[k] = states[k] + self.hp.rate * (-errors[k] + sent[k])
            if t < self.hp.steps - 1:
                self._step_optimizers()
        return output

    def _step_optimizers(self) -> None:
        if self.grad_sync is not None:
            self.grad_sync([p.grad for p in self.parameters() if p.grad is not None])
        for opt in self.optimizers:
            opt.step()
            opt.zero_grad(set_to_none=True)

    @torch.no_grad()
    def predict(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)  # the free equilibrium from the feedforward initialisation
