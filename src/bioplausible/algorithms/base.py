"""The learning-rule interface.

A learning rule ("algorithm") owns a model and turns a batch ``(x, y)`` into *update
directions* ``Δθ`` for every trainable tensor. It hands them to standard ``torch.optim``
optimizers as ``θ.grad = -Δθ`` (ALGORITHMS.md, conventions), so every rule runs with SGD,
momentum or Adam, per-layer learning rates (parameter groups) and LR schedules unchanged.

The interface is shaped by the families the library must hold:

* rules that replace each layer's backward pass (FA, DFA, KP, WM, DLL) override
  :meth:`compute_updates` or rewire the model's layers at construction;
* rules with a second plastic pathway (SAL) or plastic feedback (KP, WM) keep that state as
  parameters or buffers of the rule or of the rewired layers, so it is checkpointed with
  ``state_dict()`` and synchronised like any other tensor;
* energy-based rules (EP, DEP, PC) relax states under ``no_grad`` in :meth:`compute_updates`
  and relax again in :meth:`predict`;
* layer-local rules (SLL, local losses, DGL, InfoPro, MLAAN) override
  :meth:`configure_optimizers` (one optimizer per module) and :meth:`train_step` (each
  module's backward and step before the next module's forward); EMA copies are updated in
  :meth:`after_step`.

For data parallelism (DISTRIBUTED.md) each rule declares ``update_kind``: ``"autograd"``
(gradients come from ``backward()``, so DDP can reduce them) or ``"manual"`` (the rule writes
``.grad`` itself; the distributed runtime sets :attr:`grad_sync` to an all-reduce that
:meth:`train_step` calls before the optimizers step).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Callable, ClassVar, Literal, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ConfigError

LOSSES = ("ce", "mse")


@dataclass(frozen=True)
class Plausibility:
    """The DLL paper's criteria (ALGORITHMS.md, first section)."""

    no_weight_transport: bool  # C1: the error pathway never reads the forward weights
    local_errors: bool  # C2: a synapse changes from quantities at its two neurons
    no_separate_phases: bool  # C3: inference and learning need not be separated in time

    def symbols(self) -> str:
        return "".join("✓" if f else "✗" for f in dataclasses.astuple(self))


@dataclass
class StepResult:
    """What one training step reports: the batch loss and the output used for accuracy."""

    loss: torch.Tensor  # scalar, detached
    output: torch.Tensor  # [B, classes], detached


@dataclass
class Hyperparameters:
    """Base of every rule's hyperparameters; subclasses add fields with defaults."""

    loss: str = "ce"

    def __post_init__(self) -> None:
        if self.loss not in LOSSES:
            raise ConfigError(f"unknown loss '{self.loss}'; available: {', '.join(LOSSES)}")

    @classmethod
    def from_dict(cls, rule: str, values: dict) -> "Hyperparameters":
        names = {f.name for f in dataclasses.fields(cls)}
        for key in values:
            if key not in names:
                raise ConfigError(
                    f"algorithm '{rule}' has no option '{key}'; options: {', '.join(sorted(names))}"
                )
        return cls(**values)


OptimizerFactory = Callable[[list[dict]], torch.optim.Optimizer]


class DecoupledDecay:
    """``θ ← (1 - ηλ) θ`` for chosen tensors after every optimizer step, with ``η`` the current
    learning rate of the tensor's group divided by ``ratio(group)`` (for rules whose groups run
    at a multiple of a base rate). Read at every step, so LR schedules apply and
    ``Optimizer.load_state_dict``, which replaces the group dicts, does not leave it stale.
    Decoupled from the gradient, it is exact under SGD and keeps paired tensors paired under Adam."""

    def __init__(self, optimizers: list[torch.optim.Optimizer], tensors: list[torch.Tensor], decay: float,
                 ratio: Callable[[dict], float] = lambda group: 1.0):
        ids = {id(t) for t in tensors}
        self.decay = decay
        self.groups = [
            (opt, i, [p for p in group["params"] if id(p) in ids], ratio(group))
            for opt in optimizers for i, group in enumerate(opt.param_groups)
        ]
        self.groups = [entry for entry in self.groups if entry[2]]

    @torch.no_grad()
    def __call__(self) -> None:
        if self.decay == 0:
            return
        for opt, i, tensors, ratio in self.groups:
            torch._foreach_mul_(tensors, 1 - opt.param_groups[i]["lr"] / ratio * self.decay)


class LearningRule(nn.Module):
    """Base class of every learning rule. Subclasses implement :meth:`compute_updates`."""

    name: ClassVar[str]
    flags: ClassVar[Plausibility]
    update_kind: ClassVar[Literal["autograd", "manual"]] = "autograd"
    layer_local: ClassVar[bool] = False
    Hyperparameters: ClassVar[type[Hyperparameters]] = Hyperparameters

    @classmethod
    def supports(cls, model: nn.Module) -> str | None:
        """``None`` if the rule can train ``model``, else the reason it cannot (rules for one
        architecture family override this; the constructor turns a reason into a ConfigError)."""
        return None

    def __init__(self, model: nn.Module, **hyperparameters):
        super().__init__()
        reason = self.supports(model)
        if reason is not None:
            raise ConfigError(f"algorithm '{self.name}' cannot train {type(model).__name__}: {reason}")
        self.model = model
        self.hp = self.Hyperparameters.from_dict(self.name, hyperparameters)
        self.optimizers: list[torch.optim.Optimizer] = []
        # Set by the distributed runtime for manual-update rules: all-reduces the given grads.
        self.grad_sync: Callable[[Sequence[torch.Tensor]], None] | None = None

    # ------------------------------------------------------------------ what a rule defines
    def compute_updates(self, x: torch.Tensor, y: torch.Tensor) -> StepResult:
        """Write ``θ.grad = -Δθ`` for every trainable tensor and report the loss."""
        raise NotImplementedError

    @torch.no_grad()
    def predict(self, x: torch.Tensor) -> torch.Tensor:
        """Class scores for ``x`` (energy-based rules relax here)."""
        return self.model(x)

    def after_step(self) -> None:
        """Runs after the optimizers stepped (mirror steps, EMA copies, ...)."""

    def epoch_diagnostics(self, x: torch.Tensor, y: torch.Tensor) -> dict[str, float]:
        """Figures the trainer adds to each epoch's metrics, computed on the epoch's last training
        batch (alignment angles, ...). Must leave the rule's state as it was; none by default."""
        return {}

    def random_streams(self) -> dict:
        """Random-number streams the rule keeps besides the global generators (which the trainer
        saves itself), for checkpoints: a copy, as tensors. None by default."""
        return {}

    def load_random_streams(self, streams: dict) -> None:
        """Restore what :meth:`random_streams` returned."""

    # ------------------------------------------------------------------ shared plumbing
    def backward_loss(self, output: torch.Tensor, y: torch.Tensor) -> StepResult:
        """Autograd backward of the loss through whatever backward pass the model's layers
        define: exact for BP, the feedback pathway for rewired layers (FA, DFA, KP, WM)."""
        loss = self.loss(output, y)
        loss.backward()
        return StepResult(loss.detach(), output.detach())

    def loss(self, output: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        if y.is_floating_point():  # regression targets: squared error whatever hp.loss says
            return 0.5 * (output - y).pow(2).sum(-1).mean()
        if output.dim() == 3:  # per-step scores [B, T, C], targets [B, T]: every step is a prediction
            output, y = output.flatten(0, 1), y.flatten()
        if self.hp.loss == "ce":
            return F.cross_entropy(output, y)
        # MSE against one-hot targets, summed over classes, averaged over the batch.
        target = F.one_hot(y, output.shape[-1]).to(output.dtype)
        return 0.5 * (output - target).pow(2).sum(-1).mean()

    def param_groups(self) -> list[dict]:
        """One parameter group per model block (so per-layer learning rates address blocks),
        then the trainable tensors outside the blocks (the rule's own, for instance).

        A group may carry ``lr`` (absolute), ``lr_scale`` or ``weight_decay``; the trainer fills
        in the rest from the run's configuration."""
        groups, seen = [], set()
        for i, block in enumerate(getattr(self.model, "blocks", [])):
            params = [p for p in block.parameters() if p.requires_grad]
            if params:
                groups.append({"name": f"blocks.{i}", "params": params})
                seen.update(id(p) for p in params)
        rest = [p for p in self.parameters() if p.requires_grad and id(p) not in seen]
        if rest:
            groups.append({"name": "other", "params": rest})
        return groups

    def configure_optimizers(self, make_optimizer: OptimizerFactory) -> list[torch.optim.Optimizer]:
        """Build the optimizers; layer-local rules return one per module."""
        self.optimizers = [make_optimizer(self.param_groups())]
        return self.optimizers

    def train_step(self, x: torch.Tensor, y: torch.Tensor) -> StepResult:
        """One update: clear grads, compute update directions, synchronise, step."""
        if not self.optimizers:
            raise RuntimeError("call configure_optimizers() before train_step()")
        for opt in self.optimizers:
            opt.zero_grad(set_to_none=True)
        result = self.compute_updates(x, y)
        if self.grad_sync is not None:
            self.grad_sync([p.grad for p in self.parameters() if p.grad is not None])
        for opt in self.optimizers:
            opt.step()
        self.after_step()
        return result

    @classmethod
    def describe(cls) -> str:
        return (cls.__doc__ or "").strip().splitlines()[0] if cls.__doc__ else ""
