"""MLAAN: Multilaminar Leap Augmented Auxiliary Network (paper
``mlaan_leap_augmented_auxiliary_network.txt``), on top of DGL's or InfoPro's auxiliary networks
(``base = "dgl" | "infopro"``; the paper's "DGL*" and "InfoPro*"). The paper's equations (3)-(8)
were lost in extraction; this follows ALGORITHMS.md (last section), read from the text and code.

The backbone is split into K gradient-isolated modules ``f_θj`` as in DGL (:mod:`.dgl`). Two
additions:

**MLM, Multilaminar Local Modules.** Besides its *independent* auxiliary ``g_γj`` (the base's head,
eqs. (1)-(2)), module j is trained through *cascaded windows*: for each window of ``k`` consecutive
modules ending at ``n`` (stride 1, ``k = window = 3``), the window's output
``f_n ∘ ... ∘ f_{n-k+1}(sg(x_{n-k}))`` feeds a cascade auxiliary ``h_βn``, and its loss is
backpropagated through the whole window (and no further). Windows end at ``n = k-1 .. K-2``; the
last module is trained by the model's own classifier. The module's update mixes the two levels,

    Δθ_j ∝ a · ∇_θj L(g_γj) + (1 − a) · Σ_{windows n ∋ j} ∇_θj L(h_βn),   a = 0.001,

while each auxiliary network follows its own loss unweighted (eqs. (9), (11)). The weights are
applied where a loss enters the backbone (:func:`auxiliary.scale_grad`), so ``a`` does not slow
the heads. A network with ``K ≤ k`` modules uses windows of ``K − 1`` modules.

**LAM, Leap Augmented Modules.** An auxiliary that starts with copies of the backbone's own later
blocks, so the module is judged by the network's deeper structure rather than by a small head.
For the module whose last block is ``s``: an EMA copy of block ``s + M`` (``M`` = distance to the
first block of the next stage, 1 inside the last stage), updated after every step by

    γ ← μ γ + (1 − μ) θ_{s+M},   μ = 0.995                                         (10)

(parameters only; no gradient ever reaches it), then trainable copies of the first block of every
later stage, initialised from the backbone, then GAP + Linear. With InfoPro as the base, LAM
replaces the task head and the decoder stays. ``lam_head`` chooses where LAM sits: the
independent auxiliary (the paper's eqs. (9)-(10) put the EMA in ``γ_s``) or the cascade auxiliary
(the authors' code); ``"auto"`` is the cascade when MLM is on and the independent one otherwise.
``mlm`` and ``lam`` switch the two parts off for the ablation (Table 4); with both off the rule
is exactly its base (tested).

**Schedule, and what is shared.** The authors recompute every window from its detached input.
All forwards of one step use the same (pre-step) parameters, so a window's recomputation equals
the modules' own forward. Two schedules compute the same update (tested against each other and
against :meth:`reference_losses`, the authors' recomputing form, used by the tests as the oracle):

* ``recompute = false``: each module runs forward once and keeps its graph (with its input as a
  leaf) while a pending window still needs it; each window's error is carried down through its
  ``k`` modules by vector-Jacobian products with respect to the modules' inputs only
  (``backward(inputs=[input])``: no weight gradients), stopping at the window's first module.
  The errors that reach a module's output (its independent head's and every window's) are
  summed there, and the sum is pushed to the module's parameters once, when its last window has
  run: the same update, as the gradient is linear in the error. Memory holds ``k`` modules'
  graphs and summed errors instead of DGL's one graph; the cost is one forward, ``k − 1``
  input-only and one parameter backward pass per module (instead of ``k + 1`` full ones).
* ``recompute = true`` (activation recomputation, as the authors): a module's graph is freed by
  its independent loss's backward, as in DGL; only its detached input (and the random-number
  state its forward drew from, for dropout) is kept while a window containing it is pending. A
  window's backward rebuilds its modules one at a time from those inputs, last module first, so
  at most one module's graph is alive: the peak of autograd-saved memory is about DGL's. A
  rebuilt module's output replaces the held input of the module after it (they are equal), so
  the two copies are never alive together. The peak allocation is DGL's plus about ``k``
  activations, which the windows need and DGL does not: the ``k − 1`` module inputs held besides
  the pushed module's own (to rebuild the window's other modules and to start the next windows:
  with stride 1 every module starts one) and the error waiting on a residual block's identity
  branch while a push computes the error at the module's input (DGL never sends an error below a
  module). The rebuilt forward leaves BatchNorm's running statistics alone (the batch is counted
  once). Cost: ``k`` more module forwards per module, and each window's error goes to the
  parameters as it comes (``k + 1`` full backward passes per module): summing the errors first
  would hold ``k`` more activation-sized tensors, which is what this mode avoids.

A module's optimizer steps once the last window containing it has run. The default is
``recompute = false``: both give the same step, and on the CPU (where this project trains) the
rebuilt windows cost 1.8× the kept-graph step (ResNet-32 K=16, batch 128, 2-core EPYC,
``mlaan-speed-cpu-20261123-idle.md``) while memory is not what limits a run;
``recompute = true`` is for memory-bound runs and for the paper's memory comparison
(``benchmarks/mlaan_memory.py`` measures both).

Plausibility flags (ALGORITHMS.md criteria):

* C1 ✗: errors travel through the transposed weights of the auxiliaries and of the modules of a
  window.
* C2 ✗: a cascade window sends its error back through ``k`` modules (6 conv layers of a ResNet
  for k = 3): not a global error, but not local to a layer or module either.
* C3 ✗: forward and backward phases are separate, as for DGL.
"""

from __future__ import annotations

import copy
import numbers
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import get_device_states, set_device_states

from . import register_algorithm
from ..errors import ConfigError
from .auxiliary import (AuxHyperparameters, Auxiliary, AuxiliaryRule, Decoder, check_pair, dgl_head,
                        infopro_head, pooled_classifier, scale_grad, stage_starts)
from .base import Plausibility, StepResult
from .infopro import infopro_weights

BASES = ("dgl", "infopro")
LAM_HEADS = ("auto", "independent", "cascade")


@dataclass
class MLAANHyperparameters(AuxHyperparameters):
    base: str = "dgl"  # whose auxiliary networks: dgl | infopro
    mlm: bool = True  # cascaded windows (Multilaminar Local Modules)
    lam: bool = True  # EMA-augmented auxiliaries (Leap Augmented Modules)
    lam_head: str = "auto"  # where LAM sits: independent | cascade | auto
    window: int = 3  # k: modules per cascade window
    a: float = 0.001  # weight of the independent loss in the module's update; 1 − a for the windows
    ema_decay: float = 0.995  # μ of the EMA copy
    head_width: int | None = None  # the base head's hidden width; None: the base's default
    recon_weight: list = field(default_factory=lambda: [5.0, 0.2])  # InfoPro base: λ1 over modules
    task_weight: list = field(default_factory=lambda: [0.05, 0.5])  # InfoPro base: λ2 over modules
    decoder_width: int = 12  # InfoPro base: decoder channels
    recompute: bool = False  # rebuild window modules from held inputs: memory ≈ DGL's, k more forwards

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.base not in BASES:
            raise ConfigError(f"mlaan: unknown base '{self.base}'; options: {', '.join(BASES)}")
        if self.lam_head not in LAM_HEADS:
            raise ConfigError(f"mlaan: unknown lam_head '{self.lam_head}'; options: {', '.join(LAM_HEADS)}")
        for name in ("mlm", "lam", "recompute"):
            if not isinstance(getattr(self, name), bool):
                raise ConfigError(f"mlaan: '{name}' must be true or false, got {getattr(self, name)!r}")
        if self.lam_head == "cascade" and not self.mlm:
            raise ConfigError("mlaan: lam_head='cascade' needs mlm=true (without MLM there is no cascade auxiliary)")
        if isinstance(self.window, bool) or not isinstance(self.window, numbers.Integral) or self.window < 1:
            raise ConfigError(f"mlaan: 'window' must be a positive integer, got {self.window!r}")
        for name in ("a", "ema_decay"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, numbers.Real) or not 0 <= value <= 1:
                raise ConfigError(f"mlaan: '{name}' must be in [0, 1], got {value!r}")
        if self.head_width is not None and (isinstance(self.head_width, bool) or not isinstance(self.head_width, numbers.Integral)
                                            or self.head_width < 0):
            raise ConfigError(f"mlaan: 'head_width' must be a non-negative integer or null, got {self.head_width!r}")
        if self.base == "infopro" and self.head_width == 0:  # 0 means "the flattened width" for DGL's head only
            raise ConfigError("mlaan: 'head_width' 0 builds an InfoPro head with no hidden units; give a positive width or null")
        check_pair("mlaan", "recon_weight", self.recon_weight)
        check_pair("mlaan", "task_weight", self.task_weight)
        if isinstance(self.decoder_width, bool) or not isinstance(self.decoder_width, numbers.Integral) or self.decoder_width < 1:
            raise ConfigError(f"mlaan: 'decoder_width' must be a positive integer, got {self.decoder_width!r}")


def rng_state(x: torch.Tensor):
    """The random-number state a forward on ``x`` starts from (CPU and ``x``'s device)."""
    return torch.get_rng_state(), *get_device_states(x)


@contextmanager
def replayed(state, x: torch.Tensor):
    """Run with the random numbers of ``state`` (a recomputed forward redraws the same dropout
    masks), then give the generators back as they were."""
    cpu, devices, device_states = state
    with torch.random.fork_rng(devices=devices, device_type=x.device.type):
        torch.set_rng_state(cpu)
        set_device_states(devices, device_states, device_type=x.device.type)
        yield


@contextmanager
def running_stats_frozen(modules: list[nn.Module]):
    """BatchNorm layers normalise with the batch's statistics, as in training, without updating
    their running statistics or batch count: a recomputed forward must not count a batch twice.
    (With ``track_running_stats`` off, BatchNorm passes no running buffers in training mode and
    still uses them in eval mode, so eval is unchanged.)"""
    norms = [m for block in modules for m in block.modules()
             if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats]
    for m in norms:
        m.track_running_stats = False
    try:
        yield
    finally:
        for m in norms:
            m.track_running_stats = True


class ErrorRoot(torch.autograd.Function):
    """A scalar root whose gradient with respect to ``out`` is ``e``: backward passes ``e`` itself
    on (no product, no copy) and drops it. A saved tensor (``(out * e).sum()`` saves ``e``) would
    stay alive with the whole retained graph. Its value, 0, is never used; one backward only."""

    @staticmethod
    def forward(ctx, out: torch.Tensor, e: torch.Tensor) -> torch.Tensor:
        ctx.e = e
        return out.new_zeros(())

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        e, ctx.e = ctx.e, None  # the root's gradient is 1: e is ∂/∂out exactly
        return e, None


class LeapHead(nn.Module):
    """LAM's classifier: EMA copy of backbone block ``source``, trainable copies of later blocks,
    GAP + Linear. ``source`` is an index into ``model.blocks``, not a submodule, so the backbone's
    parameters are not counted twice."""

    def __init__(self, model: nn.Module, source: int, later: list[int], shape: tuple[int, ...]):
        super().__init__()
        self.source = source
        self.ema = copy.deepcopy(model.blocks[source]).requires_grad_(False)
        self.copies = nn.Sequential(*(copy.deepcopy(model.blocks[b]) for b in later))
        self.out = nn.Sequential(*pooled_classifier(shape, model.num_classes))

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.out(self.copies(self.ema(h)))


@register_algorithm("mlaan")
class MLAAN(AuxiliaryRule):
    """MLAAN: DGL/InfoPro modules plus cascaded windows (MLM) and EMA-augmented auxiliaries (LAM)."""

    name = "mlaan"
    flags = Plausibility(no_weight_transport=False, local_errors=False, no_separate_phases=False)
    Hyperparameters = MLAANHyperparameters

    def __init__(self, model, **hyperparameters):
        super().__init__(model, **hyperparameters)
        hp = self.hp
        param = next(model.parameters())
        n_aux = len(self.units) - 1
        self.k = min(hp.window, n_aux) if hp.mlm else 0
        self.window_ends = list(range(self.k - 1, n_aux)) if self.k else []
        lam_at = None
        if hp.lam:
            lam_at = hp.lam_head if hp.lam_head != "auto" else ("cascade" if hp.mlm else "independent")
        self.lam_at = lam_at
        self.aux = nn.ModuleList(self.auxiliary(j, lam_at == "independent") for j in range(n_aux)).to(param)
        self.cascade = nn.ModuleDict(
            {str(n): self.auxiliary(n, lam_at == "cascade") for n in self.window_ends}).to(param)

        # Module j's graph (or, with recompute, its input) is needed until the last window containing
        # it has run; then it steps.
        self.last_use = [max([j, *[n for n in self.window_ends if n - self.k + 1 <= j <= n]])
                         for j in range(len(self.units))]
        # Module t's input needs a gradient when a window holds both t-1 and t.
        self.chained = [any(n - self.k + 1 <= t - 1 and t <= n for n in self.window_ends) for t in range(len(self.units))]

    # ------------------------------------------------------------------ construction
    def auxiliary(self, j: int, leap: bool) -> Auxiliary:
        """Module j's auxiliary network: the base's head, or LAM's, plus InfoPro's decoder."""
        shape, hp, classes = self.module_shape(j), self.hp, self.model.num_classes
        if leap:
            classifier = self.leap_head(j)
        elif hp.base == "dgl":
            classifier = dgl_head(shape, classes, 0 if hp.head_width is None else hp.head_width)
        else:
            classifier = infopro_head(shape, classes, 128 if hp.head_width is None else hp.head_width)
        decoder = Decoder(shape, self.model.input_shape, hp.decoder_width) if hp.base == "infopro" else None
        return Auxiliary(classifier, decoder)

    def leap_head(self, j: int) -> LeapHead:
        s = self.last_block[j]
        starts = stage_starts(self.model, self.shapes)
        later_stages = [b for b in starts if b > s]
        source = later_stages[0] if later_stages else s + 1  # block s + M
        copies = [b for b in starts if b > source]  # first block of every later stage
        return LeapHead(self.model, source, copies, self.shapes[copies[-1] if copies else source])

    def leap_heads(self) -> list[LeapHead]:
        return [m for m in self.modules() if isinstance(m, LeapHead)]

    def unit_modules(self, i: int) -> list[nn.Module]:
        return [*super().unit_modules(i), *([self.cascade[str(i)]] if str(i) in self.cascade else [])]

    def loss_weights(self, i: int) -> tuple[float, float]:
        return infopro_weights(self, i) if self.hp.base == "infopro" else (0.0, 1.0)

    @property
    def independent_scale(self) -> float:
        return self.hp.a if self.hp.mlm else 1.0

    # ------------------------------------------------------------------ one training step
    def _params(self, j: int) -> list[torch.Tensor]:
        return [p for b in self.units[j] for p in b.parameters() if p.requires_grad]

    def _push(self, out: torch.Tensor, error: list, j: int, inp: torch.Tensor | None, retain: bool,
              params: bool = True) -> None:
        """Vector-Jacobian product through module j of the error ``e``, the one element of ``error``:
        accumulate ``eᵀ ∂out/∂θ_j`` into θ_j's ``.grad`` (unless ``params`` is false: autograd then
        skips the weight gradients) and, when ``inp`` is given, put ``eᵀ ∂out/∂inp`` into ``error``
        (the next push's error). ``retain`` keeps module j's graph for a later pass; the last pass
        through it frees it."""
        inputs = (self._params(j) if params else []) + ([inp] if inp is not None else [])
        e = error.pop()
        if not inputs or not out.requires_grad:
            return
        # ``error`` gives up its reference and the root hands e over once, so autograd frees it
        # once module j's last layer has used it (as DGL's head error), also when the module's
        # graph is retained; ``out.backward(e)`` would hold it through the whole pass, one
        # activation more at the peak.
        root = ErrorRoot.apply(out, e)
        del e
        root.backward(inputs=inputs, retain_graph=retain)
        if inp is not None:
            error.append(inp.grad)
            inp.grad = None  # a kept input leaf is pushed through again by later windows

    def _recomputed(self, j: int, inp: torch.Tensor, rng, needs_input_grad: bool):
        """Module j's forward rebuilt from its held input, as it ran in this step: the same random
        numbers, BatchNorm's running statistics left as they are. Returns (input leaf, output)."""
        inp = inp.detach().requires_grad_(needs_input_grad)
        with replayed(rng, inp), running_stats_frozen(self.units[j]):
            return inp, self.forward_unit(j, inp)

    def _window_push(self, j: int, error: list, live: dict, to_input: bool) -> None:
        """A window's error through module j, from its kept graph or (``recompute``) one rebuilt
        from its held input; leaves the error at module j's input in ``error`` if ``to_input``."""
        if not self.hp.recompute:
            # Kept graphs: θ_j's gradient is linear in the error, so the errors of every window
            # through module j are summed at its output and pushed to θ_j once, by
            # ``train_step`` when the last of them has arrived; here a window's error only goes
            # on to module j's input, without weight gradients. Half the backward convolutions
            # of pushing each window's error to θ_j as it comes, for k held errors (one per
            # module of a window: 3 activations more at the peak for k = 3, measured).
            inp, out, summed = live[j]
            summed.add_(error[-1])
            if to_input:
                self._push(out, error, j, inp, retain=True, params=False)
            else:
                error.pop()
            return
        inp, out = self._recomputed(j, *live[j], to_input)
        # The rebuilt output equals the held input of module j + 1 (same input, parameters and
        # random numbers) and the graph keeps it: it replaces the held copy, whose storage is
        # freed here (nothing else refers to it), so the two are never alive together. The
        # rebuilt graph dies with this push, before the next module is rebuilt.
        live[j + 1][0] = out.detach()
        self._push(out, error, j, inp if to_input else None, retain=False)

    def train_module(self, t: int, carry, y: torch.Tensor, live: dict):
        """Module t's forward and losses: the model's own classifier for the last module, else the
        independent auxiliary and, if a window ends here, the cascade auxiliary, whose gradient
        goes down through the window's modules. ``live`` holds, per module whose input is still
        needed, ``[input, output, summed error at the output]`` (graph kept) or, with
        ``recompute``, ``[input, random-number state]`` to rebuild the graph from; module t's
        entry has its input, and this adds module t + 1's. Returns the module's loss and scores."""
        recompute, last = self.hp.recompute, t == len(self.units) - 1
        held = live[t]
        with self.unit_rng(t):  # the draws (dropout) of run_unit, which a pipeline stage runs
            if recompute and not last:
                held[1] = rng_state(held[0])  # the unit's stream before its forward draws
            out = self.forward_unit(t, held[0])
        if last:  # the model's own classifier, plain CE
            loss = F.cross_entropy(out, y)
            loss.backward(inputs=self._params(t) or None)
            return loss.detach(), out.detach()
        live[t + 1] = [out.detach().requires_grad_(self.chained[t + 1] and not recompute), None]
        z = out.detach().requires_grad_()  # the heads' input: their backward stops here
        loss, scores = self.aux_loss(t, self.aux[t], z, carry, y)
        loss.backward()  # γ_t's update (9); z.grad is the error the head sends to module t
        # Detached: their graphs' nodes would keep z, hence module t's output, alive.
        loss, scores = loss.detach(), scores.detach()
        error = [z.grad.mul_(self.independent_scale)]  # in place: no second activation-sized copy
        z.grad = None
        if recompute:
            self._push(out, error, t, None, retain=False)
        else:  # the first term of module t's summed error; train_step pushes the sum to θ_t
            held[1:] = [out, error.pop()]
        if t in self.window_ends:
            self.aux_loss(t, self.cascade[str(t)], z, carry, y)[0].backward()  # β_t's update (11)
            error = [z.grad.mul_(1 - self.hp.a)]
            z.grad = None
            # From here module t's output is needed only as module t + 1's input, held in
            # live[t + 1]: these references must go for a rebuilt copy to replace it.
            del out, z
            first = t - self.k + 1
            for j in range(t, first - 1, -1):
                self._window_push(j, error, live, j > first)
        return loss, scores

    def train_unit(self, i: int, h, carry, y):
        """One module alone (layer-parallel stages) is only MLAAN without MLM and LAM: a cascade
        window's backward crosses ``k`` modules, and LAM's EMA copy follows block s + M of a later
        module, which another stage trains; neither is one stage's work."""
        if self.window_ends:
            raise ConfigError("mlaan with mlm=true cannot be trained one module at a time (a cascade window "
                              f"backpropagates through {self.k} modules); use mlm=false or the plain train_step")
        if self.leap_heads():
            raise ConfigError("mlaan with lam=true cannot be trained one module at a time (LAM's EMA copies follow "
                              "backbone blocks of later modules, which other stages train); use lam=false or the "
                              "plain train_step")
        return super().train_unit(i, h, carry, y)

    def train_step(self, x: torch.Tensor, y: torch.Tensor) -> StepResult:
        if not self.optimizers:
            raise RuntimeError("call configure_optimizers() before train_step()")
        self.model.check_input(x)
        for opt in self.optimizers:
            opt.zero_grad(set_to_none=True)
        carry, live = self.initial_carry(x), {0: [x.detach(), None]}
        for t in range(len(self.units)):
            loss, scores = self.train_module(t, carry, y, live)
            for j in range(t + 1):
                if self.last_use[j] == t:  # no window needs module j any more
                    self._finish_module(j, live.pop(j))
        self.after_step()
        return StepResult(loss, scores)

    def _finish_module(self, j: int, held: list) -> None:
        """Module j's last pass and step: with a kept graph, the errors summed at its output go to
        θ_j (and the graph is freed; the last module ran its own backward); what ``held`` refers to
        dies on return."""
        if not self.hp.recompute and j < len(self.units) - 1:
            self._push(held[1], [held.pop()], j, None, retain=False)
        if self.unit_optimizers[j] is not None:
            self.unit_optimizers[j].step()

    @torch.no_grad()
    def after_step(self) -> None:
        """LAM's EMA (10): every EMA copy moves towards its backbone block, every step."""
        mu = self.hp.ema_decay
        for head in self.leap_heads():
            ema = list(head.ema.parameters())
            source = list(self.model.blocks[head.source].parameters())
            torch._foreach_mul_(ema, mu)
            torch._foreach_add_(ema, source, alpha=1 - mu)

    # ------------------------------------------------------------------ the oracle
    def reference_losses(self, x: torch.Tensor, y: torch.Tensor) -> dict[tuple[str, int], torch.Tensor]:
        """Every loss of one step in the authors' recomputing form, each already weighted where it
        enters the backbone: ``("independent", j)``, ``("cascade", n)`` (window recomputed from
        ``sg(x_{n-k})``) and ``("output", K-1)``. The gradient of their sum is one step's update
        (for tests; it keeps every graph alive)."""
        xs, h = [x], x
        for t in range(len(self.units)):
            h = self.forward_unit(t, h.detach())
            xs.append(h)
        carry, losses, last = self.initial_carry(x), {}, len(self.units) - 1
        losses[("output", last)] = F.cross_entropy(xs[-1], y)
        for j in range(last):
            losses[("independent", j)] = self.aux_loss(j, self.aux[j], scale_grad(xs[j + 1], self.independent_scale),
                                                       carry, y)[0]
        for n in self.window_ends:
            h = xs[n - self.k + 1].detach()
            for t in range(n - self.k + 1, n + 1):
                h = self.forward_unit(t, h)
            losses[("cascade", n)] = self.aux_loss(n, self.cascade[str(n)], scale_grad(h, 1 - self.hp.a), carry, y)[0]
        return losses
