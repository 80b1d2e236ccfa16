"""Elman recurrent network (Elman 1990), in the form DLL trains it.

``h_t = f(W_h h_{t-1} + W_x x_t + b)``, ``y_t = W_y h_t`` with ``h_0 = 0``: DLL, Appendix B
(eqs. 10-30) and D.2.3 (DLL-RNNs). ``W_x`` (carrying ``b``), ``W_h`` (no bias) and ``W_y`` are
plain ``nn.Linear`` modules so that rules which rewire linear layers, and DLL's per-step errors,
can reach each of them by name.

Inputs are ``[B, T, D]`` sequences, images read row by row, or ``[B, T]`` integer tokens
(``input_shape == (T,)``), one-hot encoded over ``num_classes`` symbols inside the model: in
next-symbol prediction the input and output alphabets are the same, and the data stays at one
integer per character.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ConfigError, ShapeError
from . import register_model
from .base import Network, make_activation
from .mlp import check_input_shape, check_num_classes, positive_int

READOUTS = ("last", "all")


class ElmanCell(nn.Module):
    """The whole recurrent computation as one module: sequence in, readout out.

    It is the single block of :class:`ElmanRNN`, so ``model.blocks[0](x) == model(x)`` still holds
    (there is no block boundary inside the time loop to split at).
    """

    def __init__(
        self,
        input_shape: tuple[int, ...],
        hidden: int,
        num_classes: int,
        activation: str = "tanh",
        readout: Literal["last", "all"] = "last",
        output_bias: bool = False,
    ):
        super().__init__()
        self.input_shape = input_shape
        self.hidden_size = hidden
        self.readout = readout
        if len(input_shape) == 1:  # (T,): tokens, one-hot over the output alphabet
            steps, features = input_shape[0], num_classes
        elif len(input_shape) == 2:  # (T, D)
            steps, features = input_shape
        else:  # (C, H, W): one image row per step
            c, steps, w = input_shape
            features = c * w
        self.steps, self.input_size = steps, features
        self.W_x = nn.Linear(features, hidden)  # its bias is b
        self.W_h = nn.Linear(hidden, hidden, bias=False)
        self.W_y = nn.Linear(hidden, num_classes, bias=output_bias)
        self.act = make_activation(activation)

    def to_sequence(self, x: torch.Tensor) -> torch.Tensor:
        """``[B, T, D]`` from a batch of ``input_shape`` examples (images row by row, tokens one-hot)."""
        if not x.is_floating_point():
            return F.one_hot(x, self.input_size).to(self.W_x.weight.dtype)
        if x.dim() == 4:  # [B, C, H, W] -> [B, H, C*W]: step t sees row t of every channel
            return x.permute(0, 2, 1, 3).reshape(x.shape[0], self.steps, self.input_size)
        return x

    def step(self, x_t: torch.Tensor, h_prev: torch.Tensor) -> torch.Tensor:
        """One step: ``h_t = f(W_h h_{t-1} + W_x x_t + b)``."""
        return self.act(self.W_h(h_prev) + self.W_x(x_t))

    def run(self, seq: torch.Tensor, h0: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Hidden states ``[B, T, H]`` and outputs ``[B, T, classes]`` for a ``[B, T, D]`` sequence."""
        h = seq.new_zeros(seq.shape[0], self.hidden_size) if h0 is None else h0
        hs = []
        for t in range(seq.shape[1]):
            h = self.step(seq[:, t], h)
            hs.append(h)
        states = torch.stack(hs, dim=1)
        return states, self.W_y(states)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        seq = self.to_sequence(x)
        if self.readout == "last":
            states, _ = self.run(seq)
            return self.W_y(states[:, -1])
        return self.run(seq)[1]


class ElmanRNN(Network):
    """An Elman RNN wrapped as a :class:`Network` with a single block (the :class:`ElmanCell`).

    ``readout="last"`` returns ``[B, classes]`` from the last step (sequence classification, e.g.
    row-by-row MNIST); ``"all"`` returns ``[B, T, classes]`` (DLL's next-character prediction and
    forecasting tasks).
    """

    def __init__(self, cell: ElmanCell, input_shape: tuple[int, ...], num_classes: int):
        super().__init__([cell], input_shape, num_classes)

    @property
    def cell(self) -> ElmanCell:
        return self.blocks[0]  # type: ignore[return-value]

    @property
    def readout(self) -> str:
        return self.cell.readout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.check_input(x)
        return self.cell(x)

    def hidden_states(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(h [B, T, H], y [B, T, classes])`` for every step, whatever the readout."""
        self.check_input(x)
        return self.cell.run(self.cell.to_sequence(x))


@register_model("elman_rnn")
def elman_rnn(
    input_shape, num_classes, hidden=128, activation="tanh", readout="last", output_bias=False
) -> ElmanRNN:
    """Elman RNN ``h_t = f(W_h h_{t-1} + W_x x_t + b)``, ``y_t = W_y h_t`` (DLL, Appendix B, D.2.3).

    ``input_shape`` is ``(T, D)`` (inputs ``[B, T, D]``), ``(T,)`` (integer tokens ``[B, T]``,
    one-hot over ``num_classes`` symbols) or an image ``(C, H, W)`` read as ``H`` steps of
    ``C*W`` features. ``hidden=324`` is the paper's size for text (D.2.3). ``W_y`` has no bias by default, as in DLL's equations;
    ``output_bias=True`` adds one.
    """
    shape = check_input_shape(input_shape, "elman_rnn")
    if len(shape) not in (1, 2, 3):
        raise ShapeError(
            f"elman_rnn expects input_shape (T,) tokens, (T, D) or an image (C, H, W), got {tuple(shape)}"
        )
    num_classes = check_num_classes(num_classes)
    hidden = positive_int(hidden, "elman_rnn: hidden")
    if readout not in READOUTS:
        raise ConfigError(f"elman_rnn: unknown readout {readout!r}; options: {', '.join(READOUTS)}")
    cell = ElmanCell(shape, hidden, num_classes, activation, readout, bool(output_bias))
    return ElmanRNN(cell, shape, num_classes)
