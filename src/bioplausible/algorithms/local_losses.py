"""Local losses (Nøkland & Eidnes 2019, "Training neural networks with local error signals"), as
resolved in BASELINES.md section 1: ``local_pred``, ``local_sim`` and ``local_predsim``.

Every hidden block ``l`` of the model is a unit trained on the detached output of the block
below, ``h_l = block_l(sg(h̃_{l-1}))``, by its own loss through two single-layer sub-networks:

    pred:     ŷ_l = D_l pool(h_l) + c_l,   L_pred = CE(ŷ_l, y)
    sim:      L_sim = mean_{b,b'} (S(A_l h_l) - S(Y))²                       (Y one-hot labels)
    predsim:  L_l = (1 - β) L_pred + β L_sim,   β = 0.99

with the similarity matrix of a batch ``Z`` ([B, k]): centre each row over its features,
normalise it to unit length, ``S(Z) = clamp(Z̃ Z̃ᵀ, -1, 1)``. For one-hot ``Y`` this is exactly
1 on same-class pairs and ``-1/(C-1)`` elsewhere. ``A_l`` is learned: a d×d linear map without
bias on flat features, a 3×3 conv (stride 1, padding 1, no bias) on conv maps; a conv map with
more than 3 channels and more than one pixel is then reduced to each channel's spatial standard
deviation before ``S``. ``pool`` is the identity on flat features and, on conv maps, an average
pool whose kernel is doubled alternately in height and width until ``channels·H'·W'`` is at most
``dim_in_decoder``.

The model's last block (its linear output layer) is the last unit, trained with plain CE on
``sg(h_{L-1})``; for predsim that CE is multiplied by ``(1-β)`` as in the authors' code. It and
the heads ``D_l`` keep PyTorch's initialisation where the authors zero them (see
:class:`PredHead`). The
class scores are the model's own output, so :meth:`predict` is the plain forward pass.

If a block ends in Dropout, the local loss reads ``h_l`` before the dropout and the next block
receives ``h̃_l = dropout(h_l)``: the dropout is applied at the start of the next unit.

Each unit's backward and optimizer step run before the next unit's forward
(:class:`LayerwiseRule`), so memory stays flat in depth, and the parameters of unit ``l``
(``W_l``, BN, ``D_l``, ``A_l``) receive only ``∇L_l``.

Flags (DLL Table 1, "Local losses" ✗✓✗; BASELINES.md):

* C1 ✗: the error reaching ``h_l`` is backpropagated through the learned heads ``D_l`` and
  ``A_l``, which are forward weights of the auxiliary networks: their transposes carry it (the
  probe in ``tests/algorithms/test_local_losses.py`` perturbs ``D_l`` after its forward and the
  error at ``h_l`` changes). The paper's ``bio`` variant, without ``A_l`` and with feedback
  alignment for ``D_l``, would be ✓; it is not implemented here.
* C2 ✓: no error crosses a block; a block's update uses its input, its output and the one-step
  error from its own heads.
* C3 ✗: each block still runs a forward phase and then a separate (one-step) backward phase.
"""

from __future__ import annotations

import numbers
from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from . import register_algorithm
from ..errors import ConfigError
from .base import Hyperparameters, Plausibility
from .layerwise import LayerwiseRule


@dataclass
class LocalLossHyperparameters(Hyperparameters):
    beta: float = 0.99  # β: weight of L_sim in predsim (unused by local_pred and local_sim)
    dim_in_decoder: int = 4096  # largest input of the pred head D_l on conv maps (after pooling)

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.loss != "ce":
            raise ConfigError(f"local losses: the pred and output losses are cross-entropy; 'loss' must be 'ce', got '{self.loss}'")
        if isinstance(self.beta, bool) or not isinstance(self.beta, numbers.Real) or not 0 <= self.beta <= 1:
            raise ConfigError(f"local losses: 'beta' must be in [0, 1], got {self.beta!r}")
        if isinstance(self.dim_in_decoder, bool) or not isinstance(self.dim_in_decoder, numbers.Integral) \
                or self.dim_in_decoder < 1:
            raise ConfigError(f"local losses: 'dim_in_decoder' must be a positive integer, got {self.dim_in_decoder!r}")


def similarity(z: torch.Tensor) -> torch.Tensor:
    """``S(Z) = clamp(Z̃ Z̃ᵀ, -1, 1)``: rows of ``Z`` ([B, ...], flattened) centred over their
    features and normalised to unit length."""
    z = z.flatten(1)
    z = F.normalize(z - z.mean(dim=1, keepdim=True), dim=1)
    return (z @ z.T).clamp(-1, 1)


def similarity_target(y: torch.Tensor, num_classes: int, dtype: torch.dtype) -> torch.Tensor:
    """``S(Y)`` of the one-hot labels: 1 for same-class pairs, ``-1/(C-1)`` otherwise."""
    return similarity(F.one_hot(y, num_classes).to(dtype))


def split_trailing_dropout(block: nn.Module) -> tuple[list[nn.Module], nn.Dropout | None]:
    """A block's modules without a final Dropout, and that Dropout (or None)."""
    modules = list(block) if isinstance(block, nn.Sequential) else [block]
    if modules and isinstance(modules[-1], nn.Dropout):
        return modules[:-1], modules[-1]
    return modules, None


class PredHead(nn.Module):
    """``ŷ = D pool(h) + c``. Deviation: the authors zero ``D`` at initialisation; here it keeps
    ``nn.Linear``'s initialisation, because with ``D = 0`` the first step gives the block under
    ``local_pred`` no update (its error ``Dᵀ ∂L/∂ŷ`` is zero), which breaks the library's
    contract that one step updates every trainable tensor; after one step the two agree in kind."""

    def __init__(self, shape: tuple[int, ...], num_classes: int, dim_in_decoder: int):
        super().__init__()
        self.pooled = None
        if len(shape) == 3:  # conv map: double the pooling kernel alternately in H and W
            c, h, w = shape
            kh = kw = 1
            while c * -(-h // kh) * -(-w // kw) > dim_in_decoder and (kh < h or kw < w):
                if kh < h and (kh <= kw or kw >= w):
                    kh *= 2
                else:
                    kw *= 2
            self.pooled = (-(-h // kh), -(-w // kw))
            features = c * self.pooled[0] * self.pooled[1]
        else:
            features = shape[0]
        self.decoder = nn.Linear(features, num_classes)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        if self.pooled is not None:
            h = F.adaptive_avg_pool2d(h, self.pooled)
        return self.decoder(h.flatten(1))


class SimHead(nn.Module):
    """``A_l``: the learned map whose output's similarity matrix is matched to the labels'."""

    def __init__(self, shape: tuple[int, ...]):
        super().__init__()
        if len(shape) == 3:
            self.map = nn.Conv2d(shape[0], shape[0], 3, stride=1, padding=1, bias=False)
        else:
            self.map = nn.Linear(shape[0], shape[0], bias=False)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        z = self.map(h)
        if z.dim() == 4 and z.shape[1] > 3 and z.shape[2] * z.shape[3] > 1:
            z = z.flatten(2).std(dim=2)  # each channel replaced by its spatial standard deviation
        return z


class LocalLosses(LayerwiseRule):
    """Base of the three variants; a subclass sets :attr:`mode`."""

    mode: ClassVar[str]
    flags = Plausibility(no_weight_transport=False, local_errors=True, no_separate_phases=False)
    Hyperparameters = LocalLossHyperparameters

    @classmethod
    def supports(cls, model: nn.Module) -> str | None:
        reason = super().supports(model)
        if reason is not None:
            return reason
        for i, block in enumerate(model.blocks):
            if isinstance(block, nn.Sequential) and any(isinstance(m, nn.Dropout) for m in list(block)[:-1]):
                return f"block {i} has a Dropout that is not its last module; the local loss must read the activity before dropout"
        return None

    def __init__(self, model, **hyperparameters):
        super().__init__(model, **hyperparameters)
        self.units = [[block] for block in model.blocks]
        shapes = self._hidden_shapes()
        C = model.num_classes
        uses_pred, uses_sim = self.mode in ("pred", "predsim"), self.mode in ("sim", "predsim")
        param = next(model.parameters())
        self.pred_heads = nn.ModuleList(PredHead(s, C, self.hp.dim_in_decoder) for s in shapes) if uses_pred else None
        self.sim_heads = nn.ModuleList(SimHead(s) for s in shapes) if uses_sim else None
        self.to(device=param.device, dtype=param.dtype)

    @torch.no_grad()
    def _hidden_shapes(self) -> list[tuple[int, ...]]:
        """The output shape of every hidden block (one dry forward in eval mode)."""
        was_training = self.model.training
        param = next(self.model.parameters())
        h = torch.zeros(2, *self.model.input_shape, device=param.device, dtype=param.dtype)
        shapes = []
        try:
            self.model.eval()
            for block in self.model.blocks[:-1]:
                h = block(h)
                if h.dim() not in (2, 4):
                    raise ConfigError(f"{self.name}: cannot attach local heads to block outputs of shape "
                                      f"[B, {', '.join(map(str, h.shape[1:]))}]")
                shapes.append(tuple(h.shape[1:]))
        finally:
            self.model.train(was_training)
        return shapes

    def unit_modules(self, i: int) -> list[nn.Module]:
        heads = [self.pred_heads, self.sim_heads]
        return [h[i] for h in heads if h is not None and i < len(h)]

    def forward_unit(self, i: int, h: torch.Tensor) -> torch.Tensor:
        """``h_l`` before the block's own trailing dropout; the dropout of block ``l-1`` is applied
        here, to the input, so the loss of block ``l-1`` read its activity before dropout."""
        if i > 0:
            _, dropout = split_trailing_dropout(self.units[i - 1][0])
            if dropout is not None:
                h = dropout(h)
        modules, _ = split_trailing_dropout(self.units[i][0])
        for m in modules:
            h = m(h)
        return h

    def block_loss(self, i: int, h: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``L_l`` of hidden block ``i`` and the pred head's class scores (None for sim)."""
        scores = self.pred_heads[i](h) if self.pred_heads is not None else None
        if self.mode == "pred":
            return F.cross_entropy(scores, y), scores
        sim = F.mse_loss(similarity(self.sim_heads[i](h)), similarity_target(y, self.model.num_classes, h.dtype))
        if self.mode == "sim":
            return sim, None
        return (1 - self.hp.beta) * F.cross_entropy(scores, y) + self.hp.beta * sim, scores

    def unit_loss(self, i: int, h: torch.Tensor, carry, y: torch.Tensor):
        if i == len(self.units) - 1:  # the output layer: plain CE on sg(h_{L-1})
            scale = 1 - self.hp.beta if self.mode == "predsim" else 1.0
            return scale * F.cross_entropy(h, y), None, h
        loss, scores = self.block_loss(i, h, y)
        return loss, None, scores


@register_algorithm("local_pred")
class LocalPred(LocalLosses):
    """Local losses, pred: every block trained by CE through its own linear classifier head."""

    name = "local_pred"
    mode = "pred"


@register_algorithm("local_sim")
class LocalSim(LocalLosses):
    """Local losses, sim: every block trained to match its similarity matrix to the labels'."""

    name = "local_sim"
    mode = "sim"


@register_algorithm("local_predsim")
class LocalPredSim(LocalLosses):
    """Local losses, predsim: (1-β) pred + β sim per block (Nøkland & Eidnes 2019's best variant)."""

    name = "local_predsim"
    mode = "predsim"
