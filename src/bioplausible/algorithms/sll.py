"""Stochastic Layer-wise Learning (SLL; "Stochastic layer-wise learning: scalable and efficient
alternative to backpropagation", paper ``sll_stochastic_layerwise_learning.txt``), in the reading
of ALGORITHMS.md, section SLL.

The network is cut at block boundaries into layers ("units" of ``block_size`` consecutive blocks;
``block_size > 1`` is the paper's blockwise SLL^{i+}, BP inside a unit). Layer ``i`` takes
``sg(h_{i-1})``, so no gradient crosses a layer, and owns a fixed random projection
``R_i ∈ R^{K×d'_i}`` (K classes, N(0, 1) entries, drawn once from ``seed``) that reads its
reduced features ``z_i`` (section 3.3, "Stochastic Random Projection"):

    v_i = (M_i ⊙ R_i) z_i / √d'_i,   M_i ~ Bernoulli(p)^{K×d'_i}   (training; eval: p R_i)
    q_i = softmax(v_i),   p_i = softmax(sg(v_{i-1}))                 (parent's own projection)
    L_BC(i) = -1/B Σ_b log Σ_k √(q_{i,k} p_{i,k})                    (Bhattacharyya surrogate)
    L_i = CE(v_i, y) + λ_i L_BC(i)                                   (eq. 5; no BC for i = 0)

Each layer's backward and optimizer step run right after its forward, and only its detached
output travels on, so the autograd graph of one layer is freed before the next layer runs: that
keeps training memory flat in depth (Figure 2a). Summing the losses before one backward gives
the same gradients (tested) but keeps every graph alive.

Choices the paper leaves open (ALGORITHMS.md: "make both configurable and record"):

* ``keep_prob`` p = 0.9: mild multiplicative dropout on R; it also applies to the last layer,
  whose R is only K×K when the model's own classifier is an SLL layer.
* ``head = "projection"`` (default): every block, the model's classifier included, is an SLL
  layer and the prediction is ``argmax v_L`` of the last one, as the spec says (the paper adds
  no trainable head). ``head = "model"``: the last unit is trained with plain CE on its output
  (the model's own head on its detached input) and predicts with ``model(x)``.
* Feature reduction ``z_i``: identity for ``[B, d]``; ``adaptive_avg_pool2d`` to at most
  ``pool_size × pool_size`` then flatten for conv maps ``[B, C, H, W]``; the class token
  (``token_pool = "cls"``) or the mean of all tokens (``"mean"``) for sequences ``[B, T, D]``.

Plausibility flags (ALGORITHMS.md criteria; DLL Table 1 has no SLL row):

* C1 ✓: the error reaching a layer comes from its own loss through its *fixed random* R_i and
  never crosses into another layer, so no forward weight of another layer is read (the C1 probe:
  perturbing W_{l+1} after the forward leaves the error at layer l unchanged). Unlike "local
  losses" (✗ in DLL Table 1) there is no learned auxiliary head whose transpose carries the
  error. Caveat: inside a unit of several weight layers (``block_size > 1``, a ViT or VGG block
  with BN) the error is backpropagated through those weights.
* C2 ✓: a layer's update uses its input, its output, the label and the parent layer's
  prediction -- quantities at the layer, no error sent back through many layers.
* C3 ✗: each layer still runs a forward phase, then a (one-layer) backward phase whose error
  must be kept apart from the forward activity, as for local losses in DLL Table 1.
"""

from __future__ import annotations

import json
import math
import numbers
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from . import register_algorithm
from ..errors import ConfigError, require_non_negative
from .base import Hyperparameters, Plausibility
from .layerwise import LayerwiseRule, split_blocks

HEADS = ("projection", "model")
TOKEN_POOLS = ("cls", "mean")


@dataclass
class SLLHyperparameters(Hyperparameters):
    keep_prob: float = 0.9  # p: keep probability of the Bernoulli mask on R
    bc_weight: float | list = 1.0  # λ_i: one float, or one per layer that has a parent
    local_loss_only: bool = False  # ablation: λ = 0, plain layer-wise CE through random heads
    block_size: int = 1  # consecutive blocks per layer (SLL^{i+} with i = block_size)
    pool_size: int = 4  # conv maps are average-pooled to at most pool_size × pool_size
    token_pool: str = "cls"  # token sequences: class token or mean of all tokens
    head: str = "projection"  # prediction from the last v, or from the model's own head
    seed: int = 0  # seeds the generator of the projections R_i, and nothing else

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.loss != "ce":
            raise ConfigError(f"sll: the local loss is cross-entropy (eq. 5); 'loss' must be 'ce', got '{self.loss}'")
        if not 0 < self.keep_prob <= 1:
            raise ConfigError(f"sll: 'keep_prob' must be in (0, 1], got {self.keep_prob}")
        for name in ("block_size", "pool_size"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
                raise ConfigError(f"sll: '{name}' must be a positive integer, got {value!r}")
        if self.head not in HEADS:
            raise ConfigError(f"sll: unknown head '{self.head}'; options: {', '.join(HEADS)}")
        if self.token_pool not in TOKEN_POOLS:
            raise ConfigError(f"sll: unknown token_pool '{self.token_pool}'; options: {', '.join(TOKEN_POOLS)}")
        weights = self.bc_weight if isinstance(self.bc_weight, (list, tuple)) else [self.bc_weight]
        for w in weights:
            if isinstance(w, bool) or not isinstance(w, numbers.Real):
                raise ConfigError(f"sll: 'bc_weight' must be a number or a list of numbers, got {self.bc_weight!r}")
            require_non_negative("sll", bc_weight=w)


def reduce_features(h: torch.Tensor, pool_size: int, token_pool: str) -> torch.Tensor:
    """``z_i``: what the projection reads from a layer's output ``h_i`` (one row per example)."""
    if h.dim() == 2:  # flat features (MLP layers, classifiers)
        return h
    if h.dim() == 3:  # token sequence [B, T, D] (ViT): the paper's "class token or mean"
        return h[:, 0] if token_pool == "cls" else h.mean(dim=1)
    if h.dim() == 4:  # conv map [B, C, H, W]: pooled so d'_i does not scale with the image
        size = (min(pool_size, h.shape[2]), min(pool_size, h.shape[3]))
        return F.adaptive_avg_pool2d(h, size).flatten(1)
    raise ConfigError(f"sll: cannot project block outputs of shape [B, {', '.join(map(str, h.shape[1:]))}]")


def bhattacharyya_loss(v: torch.Tensor, parent: torch.Tensor) -> torch.Tensor:
    """``-1/B Σ_b log Σ_k √(q_k p_k)`` with ``q = softmax(v)``, ``p = softmax(sg(parent))``.

    Computed in log space, ``log Σ_k exp((log q_k + log p_k) / 2)``, so it stays finite when
    probabilities underflow."""
    log_q = F.log_softmax(v, dim=-1)
    log_p = F.log_softmax(parent.detach(), dim=-1)
    return -torch.logsumexp(0.5 * (log_q + log_p), dim=-1).mean()


class RandomProjection(nn.Module):
    """A fixed ``R ∈ R^{K×d'}`` (a buffer: never updated) with a fresh Bernoulli(p) mask per
    training forward and the expectation ``p R`` in evaluation."""

    def __init__(self, weight: torch.Tensor, keep_prob: float):
        super().__init__()
        self.register_buffer("weight", weight)
        self.keep_prob = keep_prob

    def mask(self) -> torch.Tensor:
        # The global RNG, which the layer-wise schedule points at this layer's own stream while
        # the layer trains (LayerwiseRule.unit_rng): the same masks in one process and in a
        # pipeline stage, restored from checkpoints on resume.
        return torch.bernoulli(torch.full_like(self.weight, self.keep_prob))

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        r = self.weight * self.mask() if self.training else self.keep_prob * self.weight
        return z @ r.T / math.sqrt(self.weight.shape[1])  # v = (M ⊙ R) z / √d'


@register_algorithm("sll")
class StochasticLayerwiseLearning(LayerwiseRule):
    """Stochastic layer-wise learning: per-layer CE + Bhattacharyya loss through fixed random projections."""

    name = "sll"
    flags = Plausibility(no_weight_transport=True, local_errors=True, no_separate_phases=False)
    Hyperparameters = SLLHyperparameters

    def __init__(self, model, **hyperparameters):
        super().__init__(model, **hyperparameters)
        hp = self.hp
        self.units = split_blocks(model.blocks, hp.block_size)
        if hp.head == "model" and len(self.units) < 2:
            raise ConfigError(f"sll: head='model' with block_size {hp.block_size} leaves no SLL layer "
                              f"in {len(model.blocks)} blocks; use a smaller block_size")
        projected = len(self.units) - (hp.head == "model")  # layers that own an R_i
        self.bc_weights = self._bc_weights(projected)
        dims = self._feature_dims(projected)
        generator = torch.Generator().manual_seed(hp.seed)  # R_i independent of any other draw
        param = next(model.parameters())
        self.projections = nn.ModuleList(
            RandomProjection(torch.randn(model.num_classes, d, generator=generator).to(param), hp.keep_prob)
            for d in dims
        )
        # Training losses of the current epoch per projected layer: sums of (CE, BC) and a count.
        self.register_buffer("loss_sums", torch.zeros(projected, 2, dtype=torch.float64), persistent=False)
        self.loss_count = 0

    def _bc_weights(self, projected: int) -> list[float]:
        """λ_i for the layers 1..projected-1 (layer 0 has no parent)."""
        if self.hp.local_loss_only:
            return [0.0] * max(projected - 1, 0)
        if not isinstance(self.hp.bc_weight, (list, tuple)):
            return [float(self.hp.bc_weight)] * max(projected - 1, 0)
        if len(self.hp.bc_weight) != projected - 1:
            raise ConfigError(f"sll: 'bc_weight' has {len(self.hp.bc_weight)} entries but this model has "
                              f"{projected - 1} layers with a parent (one λ_i each; layer 0 has none)")
        return [float(w) for w in self.hp.bc_weight]

    @torch.no_grad()
    def _feature_dims(self, projected: int) -> list[int]:
        """``d'_i`` of every projected layer, from one dry forward pass in eval mode (BatchNorm
        cannot take a training batch of one)."""
        was_training = self.model.training
        param = next(self.model.parameters())
        h = torch.zeros(2, *self.model.input_shape, device=param.device, dtype=param.dtype)
        dims = []
        try:
            self.model.eval()
            for i in range(projected):
                h = self.forward_unit(i, h)
                dims.append(reduce_features(h, self.hp.pool_size, self.hp.token_pool).shape[1])
        finally:
            self.model.train(was_training)
        return dims

    # ------------------------------------------------------------------ the local losses
    def project(self, i: int, h: torch.Tensor) -> torch.Tensor:
        """``v_i`` of layer ``i`` from its output ``h_i``."""
        return self.projections[i](reduce_features(h, self.hp.pool_size, self.hp.token_pool))

    def layer_loss(self, i: int, v: torch.Tensor, parent: torch.Tensor | None, y: torch.Tensor):
        """``L_i = CE(v_i, y) + λ_i L_BC(i)`` (eq. 5), with its two terms (detached)."""
        ce = F.cross_entropy(v, y)
        if parent is None or self.bc_weights[i - 1] == 0:
            return ce, ce.detach(), torch.zeros_like(ce).detach()
        bc = bhattacharyya_loss(v, parent)
        return ce + self.bc_weights[i - 1] * bc, ce.detach(), bc.detach()

    def local_losses(self, x: torch.Tensor, y: torch.Tensor) -> list[torch.Tensor]:
        """Every layer's loss, each on the detached output of the layer below, drawing from each
        layer's own stream as :meth:`train_step` does (one graph per layer, all kept alive: for
        tests and for the sum-vs-separate locality check)."""
        losses, h, parent = [], x, None
        for i in range(len(self.units)):
            with self.unit_rng(i):
                h = self.forward_unit(i, h.detach())
                if i == len(self.projections):  # head="model": the model's own head, plain CE
                    losses.append(F.cross_entropy(h, y))
                    break
                v = self.project(i, h)
            losses.append(self.layer_loss(i, v, parent, y)[0])
            parent = v.detach()
        return losses

    # ------------------------------------------------------------------ training
    def unit_loss(self, i: int, h: torch.Tensor, parent: torch.Tensor | None, y: torch.Tensor):
        """Layer ``i``'s loss; its projection ``v_i`` is the carry, the next layer's parent."""
        if i == len(self.projections):  # head="model": CE on the model's output
            return F.cross_entropy(h, y), None, h
        v = self.project(i, h)
        loss, ce, bc = self.layer_loss(i, v, parent, y)
        self.loss_sums[i] += torch.stack([ce, bc]).to(self.loss_sums)
        return loss, v.detach(), v

    def after_step(self) -> None:
        self.loss_count += 1

    @torch.no_grad()
    def predict(self, x: torch.Tensor) -> torch.Tensor:
        if self.hp.head == "model":
            return self.model(x)
        self.model.check_input(x)
        for i in range(len(self.units)):
            x = self.forward_unit(i, x)
        return self.project(len(self.projections) - 1, x)

    # ------------------------------------------------------------------ diagnostics
    @torch.no_grad()
    def codes(self, x: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """``(z_i, v_i)`` of every projected layer for ``x``, in the current mode."""
        out, h = [], x
        for i in range(len(self.projections)):
            h = self.forward_unit(i, h)
            z = reduce_features(h, self.hp.pool_size, self.hp.token_pool)
            out.append((z, self.projections[i](z)))
        return out

    @torch.no_grad()
    def eval_codes(self, x: torch.Tensor):
        """:meth:`codes` in evaluation mode (expected projections, no dropout), restoring the mode."""
        was_training = self.training
        self.eval()
        try:
            return self.codes(x)
        finally:
            self.train(was_training)

    @torch.no_grad()
    def diagnostics(self, x: torch.Tensor, y: torch.Tensor) -> list[dict]:
        """Per projected layer, on a held-out batch in eval mode: CE, BC against the parent, the
        accuracy of ``argmax v_i`` and of a linear probe on ``v_i`` (fit on the first half of the
        batch, scored on the second; the paper's Figure 3b), plus this epoch's mean training CE
        and BC so far."""
        from sklearn.linear_model import LogisticRegression

        codes = self.eval_codes(x)
        half = len(y) // 2
        y_np = y.cpu().numpy()
        train_means = (self.loss_sums / max(self.loss_count, 1)).tolist()
        rows, parent = [], None
        for i, (_, v) in enumerate(codes):
            v_np = v.double().cpu().numpy()
            probe = LogisticRegression(max_iter=1000).fit(v_np[:half], y_np[:half])
            rows.append({
                "layer": i,
                "ce": F.cross_entropy(v, y).item(),
                "bc": bhattacharyya_loss(v, parent).item() if parent is not None else 0.0,
                "readout_acc": (v.argmax(-1) == y).double().mean().item(),
                "probe_acc": float(probe.score(v_np[half:], y_np[half:])),
                "train_ce": train_means[i][0],
                "train_bc": train_means[i][1],
            })
            parent = v
        return rows

    def reset_epoch_losses(self) -> None:
        self.loss_sums.zero_()
        self.loss_count = 0

    def epoch_callback(self, x: torch.Tensor, y: torch.Tensor, tsne: bool = False):
        """A trainer callback that appends this epoch's :meth:`diagnostics` on ``(x, y)`` to
        ``<run dir>/sll_diagnostics.jsonl`` (and, with ``tsne``, writes t-SNE plots)."""

        def callback(trainer, metrics: dict) -> None:
            x_dev, y_dev = x.to(trainer.device), y.to(trainer.device)
            rows = self.diagnostics(x_dev, y_dev)
            with open(Path(trainer.out_dir) / "sll_diagnostics.jsonl", "a") as f:
                f.write(json.dumps({"epoch": metrics["epoch"], "layers": rows}) + "\n")
            if tsne:
                self.dump_tsne(x_dev, y_dev, Path(trainer.out_dir) / f"tsne-epoch{metrics['epoch']:03d}.png")
            self.reset_epoch_losses()

        return callback

    @torch.no_grad()
    def dump_tsne(self, x: torch.Tensor, y: torch.Tensor, path: str | Path) -> None:
        """t-SNE of ``h_i`` (as reduced, ``z_i``) and ``v_i`` for every layer (Figure 3a)."""
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        from sklearn.manifold import TSNE

        codes = self.eval_codes(x)
        n = len(codes)
        fig, axes = plt.subplots(2, n, figsize=(3 * n, 6), squeeze=False)
        labels = y.cpu().numpy()
        for i, (z, v) in enumerate(codes):
            for row, (what, t) in enumerate((("h", z), ("v", v))):
                points = TSNE(perplexity=min(30, len(y) - 1), init="pca", random_state=0).fit_transform(t.double().cpu().numpy())
                axes[row][i].scatter(points[:, 0], points[:, 1], c=labels, s=4, cmap="tab10")
                axes[row][i].set_title(f"{what}_{i}")
                axes[row][i].set_xticks([])
                axes[row][i].set_yticks([])
        fig.tight_layout()
        fig.savefig(path, dpi=100)
        plt.close(fig)
