"""Sequence tasks for the Elman RNN (DLL paper, section 5 and Appendix D.2.3), on real data.

The paper's Harry Potter, Electricity, METR-LA and PEMS-BAY sets are not available on these
machines; these two are the stand-ins (``shared/datasets/README.md``):

``tinyshakespeare``  next-character prediction on ``text/tinyshakespeare.txt``. The first 90% of
    the characters train, the last 10% test (the usual split; no overlap: a training window's
    last target lies before the first test character). Non-overlapping windows of
    ``TEXT_WINDOW`` characters: ``x`` holds the character codes ``[N, T]`` (int64; the model
    one-hot encodes them, which keeps the data at 8 bytes a character instead of 260), ``y``
    the next character at every step ``[N, T]``. Accuracy is that of every predicted character.
``exchange_rate``    next-day forecasting of 8 exchange rates (LSTNet's preprocessed series,
    7,588 days): chronological 60/20/20 train/validation/test split of the *target* days, as in
    LSTNet; ``x`` is the ``SERIES_WINDOW`` days before the target day ``[N, T, 8]``, ``y`` the
    target day ``[N, 8]`` (float: ``task="regression"``). A validation or test window's inputs
    may reach back into the previous split (they are the past, as in LSTNet); no training window
    touches a validation or test day. Each column is divided by its maximum absolute value over
    the *training* days (LSTNet takes it over the whole series, which lets the test period leak
    into the scale).

The dataset registry takes no options, so the window lengths are fixed here: 64 characters
(char-rnn's usual range) and 32 days (the paper's Fig. 3c finds overly long or short sequences
hard for DLL; LSTNet's 168 would make each step 5x longer on CPU).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from ..errors import DatasetNotFoundError
from .datasets import DataSplits, register_dataset

TEXT_WINDOW = 64
SERIES_WINDOW = 32
TEXT_FILE = Path("text") / "tinyshakespeare.txt"
SERIES_FILE = Path("timeseries") / "exchange_rate.txt.gz"


def _find(data_dir: Path | None, relative: Path) -> Path:
    if data_dir is not None and (data_dir / relative).is_file():
        return data_dir / relative
    raise DatasetNotFoundError(
        f"'{relative}' not found in the data directory {data_dir} (set BIOPLAUSIBLE_DATA or data_dir); "
        "it is not downloadable"
    )


def text_windows(codes: torch.Tensor, window: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Non-overlapping windows: inputs ``codes[i:i+T]``, targets ``codes[i+1:i+T+1]``."""
    n = (len(codes) - 1) // window
    x = codes[: n * window].reshape(n, window)
    y = codes[1 : n * window + 1].reshape(n, window)
    return x, y


def series_windows(series: torch.Tensor, targets: range, window: int) -> tuple[torch.Tensor, torch.Tensor]:
    """For each target day ``t`` in ``targets``: inputs ``series[t-T:t]``, target ``series[t]``."""
    index = torch.tensor(list(targets)).unsqueeze(1) + torch.arange(-window, 0)
    return series[index], series[list(targets)]


@register_dataset("tinyshakespeare")
def _load_tinyshakespeare(data_dir: Path | None, root: Path) -> DataSplits:
    text = _find(data_dir, TEXT_FILE).read_text(encoding="ascii")
    vocab = sorted(set(text))
    lookup = {c: i for i, c in enumerate(vocab)}
    codes = torch.tensor([lookup[c] for c in text], dtype=torch.int64)
    split = int(0.9 * len(codes))
    # Train windows end at their last target, index < split; test windows start at split.
    return DataSplits(
        name="tinyshakespeare",
        train=text_windows(codes[:split], TEXT_WINDOW),
        test=text_windows(codes[split:], TEXT_WINDOW),
        val=None,
        input_shape=(TEXT_WINDOW,),
        num_classes=len(vocab),
    )


@register_dataset("exchange_rate")
def _load_exchange_rate(data_dir: Path | None, root: Path) -> DataSplits:
    raw = np.loadtxt(_find(data_dir, SERIES_FILE), delimiter=",")
    n = len(raw)
    train_end, val_end = int(0.6 * n), int(0.8 * n)
    scale = np.abs(raw[:train_end]).max(axis=0)
    series = torch.from_numpy(raw / scale).float()
    return DataSplits(
        name="exchange_rate",
        train=series_windows(series, range(SERIES_WINDOW, train_end), SERIES_WINDOW),
        val=series_windows(series, range(train_end, val_end), SERIES_WINDOW),
        test=series_windows(series, range(val_end, n), SERIES_WINDOW),
        input_shape=(SERIES_WINDOW, raw.shape[1]),
        num_classes=raw.shape[1],
        task="regression",
    )
