"""Self-Assembling Learning (Liao, Ziyin, Gan, Cheung, Harnett, Poggio 2024, "Self-assembly of a
biologically plausible learning circuit"), in the type-checked reading of ALGORITHMS.md (SAL).

Two pathways. The upstream one is the model: ``a^{l+1} = W^l h^l``, ``h^{l+1} = relu(a^{l+1})``
(linear at the top, level ``L``). The downstream one is owned by this rule: neurons ``h̄^l`` of
width ``d̄_l = r·d_l`` at every hidden level ``l = 1..L-1``, started by the output error

    h̄^L = e = -∇_ŷ F                                   (d̄_L = d_L, V^L = V̄^L = I)
    h̄^l = D_d(W̄^l h̄^{l+1})                             (eq. 2; W̄^l is [d̄_l, d̄_{l+1}])

and joined to the upstream one at each level by ``V^l`` (up → down, [d̄_l, d_l]) and ``V̄^l``
(down → up, [d_l, d̄_l]); ``t^l = V̄^l h̄^l`` is the teaching input of upstream level ``l``.
All four matrices are plastic, each from the activity at its two ends plus the input of a
neighbouring synapse (eqs. 5-8, indices as in the spec):

    ΔW^l  = η_W  t^{l+1} h^{lᵀ}         - γ W^l          (5)
    ΔV^l  = η_V  h̄^l h^{lᵀ}            - γ V^l          (6)
    ΔW̄^l = η_W̄ (V^l h^l) h̄^{l+1ᵀ}     - γ W̄^l         (7)
    ΔV̄^l = η_V̄ h^l h̄^{lᵀ}             - γ V̄^l          (8)

(6) and (8) share their Hebbian term, so ``V̄^l - V^{lᵀ}`` decays and the cross-stream wiring
becomes symmetric from random (Lemma 1: self-assembly). Biases are the weights of a constant
input: ``Δb^l = η_W t^{l+1}``, undecayed as in KP.

Special cases (the oracles): ``V = V̄ = I``, ``D_d = relu_of_Vh`` (= relu'(a^l) when V = I) and
``W̄^l = W^{lᵀ}`` frozen give SGD; ``W̄`` random frozen gives FA; ``W̄`` plastic gives KP.

Learning rates: the optimizer's ``lr`` is ``η_W``; ``η_W̄, η_V, η_V̄`` are it times the ratios
``wbar_lr_ratio, v_lr_ratio, vbar_lr_ratio`` (parameter groups with ``lr_scale``), so a
schedule scales all four together and the paper's "fixed ratios, tuned overall factor" is one
``lr``. The updates are written as ``θ.grad = -Δθ / η_θ`` (any torch optimizer applies them);
the decay ``γ`` is applied after the step, decoupled, as ``θ ← (1 - η_W γ) θ`` on every plastic
matrix: uniform across the four, as in the paper, and under SGD the formulas above to first
order (the decay also shrinks this step's change by the factor 1 - η_W γ), with the spec's ``γ``
equal to ``η_W γ`` here (``decay`` is per unit learning rate, like KP's).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from . import register_algorithm
from ..errors import ConfigError, require_non_negative, require_positive
from .base import DecoupledDecay, Hyperparameters, LearningRule, Plausibility, StepResult
from .feedback import angle_degrees

DOWNSTREAM_ACTIVATIONS = ("identity", "relu_of_Vh", "relu", "tanh")
CROSS_INITS = ("random", "identity")
KINDS = ("wbar", "v", "vbar")  # the rule's matrices at every hidden level


@dataclass
class SALHyperparameters(Hyperparameters):
    downstream_ratio: float = 1.0  # r: d̄_l = round(r·d_l) downstream neurons per hidden level
    downstream_activation: str = "identity"  # D_d (eq. 2); relu_of_Vh is diag(1[V^l h^l > 0]) (eq. 4)
    decay: float = 1e-3  # γ per unit learning rate, on W, W̄, V, V̄
    wbar_lr_ratio: float = 1.0  # η_W̄ / η_W
    v_lr_ratio: float = 1.0  # η_V / η_W
    vbar_lr_ratio: float = 1.0  # η_V̄ / η_W
    freeze_wbar: bool = False  # the paper's ablations (Figure 4): W is always plastic
    freeze_v: bool = False
    freeze_vbar: bool = False
    init_scale: float = 1.0  # V, V̄ ~ N(0, init_scale² / fan_in)
    cross_init: str = "random"  # or "identity": V = V̄ = I (needs downstream_ratio = 1)
    # Divide η_W̄, η_V, η_V̄ by the downstream ratio r. V, V̄ entries scale as 1/√(fan-in) while
    # their Hebbian updates do not, so at a fixed rate a wider downstream pathway changes them
    # relatively faster and the W̄ ↔ V loop diverges (measured: every r ≥ 2 at SGD lr 0.002,
    # momentum 0.9, on Fashion-MNIST; with rates / r, r = 5 trains). Not in the paper.
    width_scaled_rates: bool = False

    def __post_init__(self) -> None:
        super().__post_init__()
        require_positive("sal", downstream_ratio=self.downstream_ratio, wbar_lr_ratio=self.wbar_lr_ratio,
                         v_lr_ratio=self.v_lr_ratio, vbar_lr_ratio=self.vbar_lr_ratio, init_scale=self.init_scale)
        require_non_negative("sal", decay=self.decay)
        for key, value, choices in (("downstream_activation", self.downstream_activation, DOWNSTREAM_ACTIVATIONS),
                                    ("cross_init", self.cross_init, CROSS_INITS)):
            if value not in choices:
                raise ConfigError(f"sal: unknown {key} '{value}'; available: {', '.join(choices)}")
        for key in ("freeze_wbar", "freeze_v", "freeze_vbar", "width_scaled_rates"):
            if not isinstance(getattr(self, key), bool):
                raise ConfigError(f"sal: '{key}' must be true or false, got {getattr(self, key)!r}")
        if self.cross_init == "identity" and self.downstream_ratio != 1:
            raise ConfigError(f"sal: cross_init 'identity' needs downstream_ratio 1, got {self.downstream_ratio}")

    def lr_ratio(self, kind: str) -> float:
        ratio = getattr(self, f"{kind}_lr_ratio")
        return ratio / self.downstream_ratio if self.width_scaled_rates else ratio

    def frozen(self, kind: str) -> bool:
        return getattr(self, f"freeze_{kind}")


@dataclass
class Modulation:
    """Short-term modulation (section 2.3): the output after adding ``t^l = V̄^l h̄^l`` to the
    forward activities, and the batch loss before and after."""

    output: torch.Tensor
    loss_before: float
    loss_after: float


@register_algorithm("sal")
class SelfAssemblingLearning(LearningRule):
    """Self-assembling learning: a plastic downstream pathway and cross-stream wiring (W, W̄, V, V̄) that assemble from random."""

    name = "sal"
    # C1: the downstream pathway never reads W (tested). C2: every update is the product of the
    # activities at its synapse's two neurons, one of them possibly through the input of a
    # neighbouring synapse (eqs. 5-8); no derivative of an upstream neuron is used. C3: errors
    # live in separate (downstream) neurons, so forward activity is never replaced by an error
    # phase; the feedback can even modulate inference (section 2.3).
    flags = Plausibility(no_weight_transport=True, local_errors=True, no_separate_phases=True)
    # The rule writes every update itself (eqs. 5-8), no autograd through the model.
    update_kind = "manual"
    Hyperparameters = SALHyperparameters

    @classmethod
    def supports(cls, model: nn.Module) -> str | None:
        blocks = getattr(model, "blocks", None)
        if blocks is None:
            return "it has no 'blocks'; SAL's circuit is defined for the library's mlp"
        for i, block in enumerate(blocks):
            last = i == len(blocks) - 1
            layers = [m for m in block if not isinstance(m, nn.Flatten)] if isinstance(block, nn.Sequential) else []
            expected = [nn.Linear] if last else [nn.Linear, nn.ReLU]
            if [type(m) for m in layers] != expected:
                return (f"block {i} is not {' + '.join(t.__name__ for t in expected)}; SAL's circuit is defined "
                        "for MLPs with ReLU hidden layers and a linear output (the paper's D_u, eq. 3)")
        return None

    def __init__(self, model, **hyperparameters):
        super().__init__(model, **hyperparameters)
        self.linears: list[nn.Linear] = [next(m for m in block if isinstance(m, nn.Linear)) for block in model.blocks]
        widths = [self.linears[0].in_features] + [layer.out_features for layer in self.linears]  # d_0..d_L
        hidden = widths[1:-1]  # d_1..d_{L-1}
        down = [max(1, round(self.hp.downstream_ratio * d)) for d in hidden] + [widths[-1]]  # d̄_1..d̄_L
        weight = self.linears[0].weight
        # levels[l-1] holds W̄^l, V^l, V̄^l of hidden level l.
        self.levels = nn.ModuleList()
        for l, (d, d_bar) in enumerate(zip(hidden, down), start=1):
            level = nn.Module()
            tensors = {"wbar": self.init_wbar(d_bar, down[l], weight), **self.init_cross(d, d_bar, weight)}
            for kind, tensor in tensors.items():
                # A frozen matrix is a buffer, never a frozen parameter (DISTRIBUTED.md, pitfalls).
                if self.hp.frozen(kind):
                    level.register_buffer(kind, tensor)
                else:
                    level.register_parameter(kind, nn.Parameter(tensor))
            self.levels.append(level)

    # ------------------------------------------------------------------ initialisation
    @staticmethod
    def init_wbar(rows: int, cols: int, like: torch.Tensor) -> torch.Tensor:
        """W̄^l drawn like an nn.Linear(cols, rows) weight, independently of W (as FA's B)."""
        wbar = like.new_empty(rows, cols)
        nn.init.kaiming_uniform_(wbar, a=5**0.5)
        return wbar

    def init_cross(self, d: int, d_bar: int, like: torch.Tensor) -> dict[str, torch.Tensor]:
        """V^l [d̄, d] and V̄^l [d, d̄]: random (the paper's point) or, for the oracles, I.

        Gaussian with variance init_scale²/fan_in, so H = V̄V̄ᵀ ≈ init_scale²·I at any width."""
        if self.hp.cross_init == "identity":
            eye = torch.eye(d, dtype=like.dtype, device=like.device)
            return {"v": eye, "vbar": eye.clone()}
        s = self.hp.init_scale
        return {"v": like.new_empty(d_bar, d).normal_(0, s / math.sqrt(d)),
                "vbar": like.new_empty(d, d_bar).normal_(0, s / math.sqrt(d_bar))}

    # ------------------------------------------------------------------ the circuit
    def upstream(self, x: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor]:
        """Forward pass through the model's blocks: ``[h^0, ..., h^{L-1}]`` and the output ŷ."""
        self.model.check_input(x)
        hs, h = [x.flatten(1)], x
        for block in self.model.blocks:
            h = block(h)
            hs.append(h)
        return hs[:-1], h

    def output_error(self, output: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The batch-mean loss and the per-example errors ``e = -∇_ŷ F`` of each example's loss
        (the paper's error module): the downstream neurons carry an example's own error, so a
        nonlinear gate (``tanh``) sees the same input at any batch size."""
        with torch.enable_grad():
            out = output.detach().requires_grad_()
            loss = self.loss(out, y)
            (grad,) = torch.autograd.grad(loss, out)
        return loss.detach(), grad.mul_(-len(out))

    def downstream(self, hs: list[torch.Tensor], e: torch.Tensor) -> tuple[list, list]:
        """Feedback pass (eq. 2): ``h̄^l`` for ``l = 1..L`` and ``V^l h^l`` for the hidden levels,
        both indexed by level (entry 0 unused). Never reads W (C1)."""
        L = len(self.linears)
        hbars, vhs = [None] * (L + 1), [None] * L
        hbars[L] = e
        for l in range(L - 1, 0, -1):
            level = self.levels[l - 1]
            vhs[l] = hs[l] @ level.v.T
            hbars[l] = self.gate(hbars[l + 1] @ level.wbar.T, vhs[l])
        return hbars, vhs

    def gate(self, z: torch.Tensor, vh: torch.Tensor) -> torch.Tensor:
        """D_d applied to the downstream input ``z = W̄^l h̄^{l+1}``."""
        kind = self.hp.downstream_activation
        if kind == "relu_of_Vh":  # eq. 4: the indicator of the upstream input V^l h^l
            return z * (vh > 0)
        if kind == "relu":
            return F.relu(z)
        if kind == "tanh":
            return torch.tanh(z)
        return z

    def teaching(self, hbars: list, l: int) -> torch.Tensor:
        """``t^l = V̄^l h̄^l`` (V̄^L = I at the output)."""
        return hbars[l] if l == len(self.linears) else hbars[l] @ self.levels[l - 1].vbar.T

    def updates(self, hs: list, hbars: list, vhs: list) -> dict[nn.Parameter, torch.Tensor]:
        """The Hebbian parts of eqs. 5-8 per unit rate, as batch means of the per-example products."""
        deltas: dict[nn.Parameter, torch.Tensor] = {}
        for l, layer in enumerate(self.linears):
            t = self.teaching(hbars, l + 1)
            deltas[layer.weight] = t.T @ hs[l]  # (5)
            if layer.bias is not None:
                deltas[layer.bias] = t.sum(0)
        for l, level in enumerate(self.levels, start=1):
            hebb = hbars[l].T @ hs[l]  # h̄^l h^{lᵀ}, shared by (6) and (8)
            if not self.hp.freeze_v:
                deltas[level.v] = hebb  # (6)
            if not self.hp.freeze_vbar:
                deltas[level.vbar] = hebb.T.contiguous()  # (8)
            if not self.hp.freeze_wbar:
                deltas[level.wbar] = vhs[l].T @ hbars[l + 1]  # (7)
        batch = len(hs[0])
        return {param: delta / batch for param, delta in deltas.items()}

    @torch.no_grad()
    def compute_updates(self, x, y) -> StepResult:
        hs, output = self.upstream(x)
        loss, e = self.output_error(output, y)
        hbars, vhs = self.downstream(hs, e)
        for param, delta in self.updates(hs, hbars, vhs).items():
            param.grad = delta.neg()
        return StepResult(loss, output)

    # ------------------------------------------------------------------ optimisation
    def param_groups(self) -> list[dict]:
        """The model's blocks (η_W), then one group per plastic kind with its rate ratio."""
        groups = [g for g in super().param_groups() if g["name"].startswith("blocks.")]
        for kind in KINDS:
            params = [getattr(level, kind) for level in self.levels if not self.hp.frozen(kind)]
            if params:
                groups.append({"name": f"sal.{kind}", "params": params, "lr_scale": self.hp.lr_ratio(kind)})
        return groups

    def configure_optimizers(self, make_optimizer):
        optimizers = super().configure_optimizers(make_optimizer)
        decayed = [layer.weight for layer in self.linears] + [p for level in self.levels for p in level.parameters()]
        ratios = {f"sal.{kind}": self.hp.lr_ratio(kind) for kind in KINDS}
        # γ shrinks all four matrices uniformly: η_W = a group's lr divided by its rate ratio.
        self.decay = DecoupledDecay(optimizers, decayed, self.hp.decay, lambda group: ratios.get(group.get("name"), 1.0))
        return optimizers

    def after_step(self) -> None:
        self.decay()

    # ------------------------------------------------------------------ short-term modulation
    @torch.no_grad()
    def modulate(self, x: torch.Tensor, y: torch.Tensor, step: float = 1.0) -> Modulation:
        """Section 2.3: after one forward/feedback cycle, every hidden level receives its teaching
        input, ``h^l ← h^l + step·V̄^l h̄^l``, and the forward pass runs again from the modulated
        activities. The error is the per-example one (``-∇_ŷ F`` of each example's loss)."""
        hs, output = self.upstream(x)
        loss_before, e = self.output_error(output, y)
        hbars, _ = self.downstream(hs, e)
        h = x
        for l, block in enumerate(self.model.blocks, start=1):
            h = block(h)
            if l < len(self.linears):
                h = h + step * self.teaching(hbars, l)
        return Modulation(h, loss_before.item(), self.loss(h, y).item())

    # ------------------------------------------------------------------ diagnostics (Figure 3)
    @torch.no_grad()
    def diagnostics(self) -> dict[str, float]:
        """Per hidden level ``l``: the angle between V̄^l and V^{lᵀ} (Lemma 1), the angle between
        the effective feedback ``V̄^l W̄^l`` (how h̄^{l+1} reaches upstream level l) and what BP
        would deliver, ``W^{lᵀ} V̄^{l+1}``, and the effective rank of ``V̄^l V̄^{lᵀ}``; per layer, the
        effective rank of ``W^l W^{lᵀ}`` (Roy & Vetterli 2007)."""
        out: dict[str, float] = {}
        L = len(self.linears)
        for l, level in enumerate(self.levels, start=1):
            vbar_above = self.levels[l].vbar if l + 1 < L else None
            bp_feedback = self.linears[l].weight.T
            if vbar_above is not None:
                bp_feedback = bp_feedback @ vbar_above
            out[f"angle_vbar_vT/{l}"] = angle_degrees(level.vbar, level.v.T)
            out[f"angle_feedback_W/{l}"] = angle_degrees(level.vbar @ level.wbar, bp_feedback)
            out[f"erank_vbar/{l}"] = effective_rank(level.vbar)
        for l, layer in enumerate(self.linears):
            out[f"erank_W/{l}"] = effective_rank(layer.weight)
        return out

    def update_alignment(self, x: torch.Tensor, y: torch.Tensor) -> dict[str, float]:
        """Per layer, the angle between SAL's ΔW^l (eq. 5 without decay) and the SGD step -∇_W F."""
        with torch.no_grad():
            hs, output = self.upstream(x)
            _, e = self.output_error(output, y)
            deltas = self.updates(hs, *self.downstream(hs, e))
        with torch.enable_grad():
            weights = [layer.weight for layer in self.linears]
            grads = torch.autograd.grad(self.loss(self.model(x), y), weights)
        return {f"angle_update_grad/{l}": angle_degrees(deltas[w], -g) for l, (w, g) in enumerate(zip(weights, grads))}


def effective_rank(matrix: torch.Tensor) -> float:
    """Effective rank of ``A Aᵀ``: exp of the entropy of its normalised eigenvalues σ_i(A)²."""
    s2 = torch.linalg.svdvals(matrix.double()).pow(2)
    p = s2 / s2.sum()
    p = p[p > 0]
    return math.exp(-(p * p.log()).sum().item())


def plot_diagnostics(history: list[dict[str, float]], path: str | Path, title: str = "SAL") -> Path:
    """Plot per-epoch :meth:`SelfAssemblingLearning.diagnostics` (plus any ``angle_update_grad``
    entries) as one panel per quantity, one line per level; writes a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = {
        "angle_vbar_vT": "∠(V̄, Vᵀ) (°)",
        "angle_feedback_W": "∠(V̄W̄, WᵀV̄↑) (°)",
        "angle_update_grad": "∠(ΔW_SAL, -∇W F) (°)",
        "erank_W": "effective rank of WWᵀ",
        "erank_vbar": "effective rank of V̄V̄ᵀ",
    }
    panels = {k: v for k, v in panels.items() if any(key.startswith(k + "/") for key in history[0])}
    fig, axes = plt.subplots(1, len(panels), figsize=(4 * len(panels), 3.5), squeeze=False)
    epochs = range(len(history))
    for ax, (prefix, label) in zip(axes[0], panels.items()):
        for key in sorted(k for k in history[0] if k.startswith(prefix + "/")):
            ax.plot(epochs, [h[key] for h in history], label=f"level {key.split('/')[1]}")
        ax.set(xlabel="epoch", title=label)
        ax.legend(fontsize=7)
    fig.suptitle(title)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
