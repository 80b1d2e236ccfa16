"""The sequence tasks (``data/sequences.py``) and the task-specific metrics (``training/metrics.py``):

* the datasets load from the real files (``data_dir`` fixture: fails under CI without them), with
  the right shapes, chronological splits and no window crossing from training into test days;
* the metrics against closed forms (accuracy over every step, MSE/MAE over every value, best
  validation epoch by lowest MSE);
* learning: a few hundred steps of bp and dll through ``train(...)`` beat the trivial baseline
  (the most frequent character; predicting the training mean of each rate).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from bioplausible.data import load_dataset
from bioplausible.data.sequences import SERIES_WINDOW, TEXT_WINDOW
from bioplausible.training import train
from bioplausible.training.metrics import MetricTracker, best_val


def test_tinyshakespeare_windows_are_the_text_split_90_10(data_dir):
    splits = load_dataset("tinyshakespeare", data_dir)
    text = (data_dir / "text" / "tinyshakespeare.txt").read_text()
    vocab = sorted(set(text))
    decode = lambda codes: "".join(vocab[int(c)] for c in codes)  # noqa: E731
    assert splits.num_classes == len(vocab) == 65 and splits.input_shape == (TEXT_WINDOW,)
    (x_train, y_train), (x_test, _) = splits.train, splits.test
    assert x_train.dtype == y_train.dtype == torch.int64 and x_train.shape == y_train.shape
    assert x_train.shape[1] == TEXT_WINDOW and splits.task == "classification" and splits.val is None
    split = int(0.9 * len(text))
    assert decode(x_train[0]) == text[:TEXT_WINDOW] and decode(y_train[0]) == text[1:TEXT_WINDOW + 1]
    assert decode(x_train[5]) == text[5 * TEXT_WINDOW:6 * TEXT_WINDOW]  # non-overlapping windows
    assert decode(x_test[0]) == text[split:split + TEXT_WINDOW]
    assert len(x_train) * TEXT_WINDOW + 1 <= split  # the last training target lies before the test text
    assert len(x_test) == (len(text) - split - 1) // TEXT_WINDOW


def test_exchange_rate_is_lstnet_60_20_20_scaled_on_train(data_dir):
    splits = load_dataset("exchange_rate", data_dir)
    raw = np.loadtxt(data_dir / "timeseries" / "exchange_rate.txt.gz", delimiter=",")
    n, train_end, val_end = len(raw), int(0.6 * len(raw)), int(0.8 * len(raw))
    assert raw.shape == (7588, 8) and splits.task == "regression"
    assert splits.input_shape == (SERIES_WINDOW, 8) and splits.num_classes == 8
    scale = np.abs(raw[:train_end]).max(0)
    series = torch.from_numpy(raw / scale).float()
    first_target = {"train": SERIES_WINDOW, "val": train_end, "test": val_end}
    counts = {"train": train_end - SERIES_WINDOW, "val": val_end - train_end, "test": n - val_end}
    for name, (x, y) in (("train", splits.train), ("val", splits.val), ("test", splits.test)):
        assert x.shape == (counts[name], SERIES_WINDOW, 8) and y.shape == (counts[name], 8) and y.is_floating_point()
        for i in (0, counts[name] // 2, counts[name] - 1):  # x: the window of days before the target day
            t = first_target[name] + i
            torch.testing.assert_close(x[i], series[t - SERIES_WINDOW:t])
            torch.testing.assert_close(y[i], series[t])
    # No training window reaches a validation or test day: the last one ends at day train_end - 1.
    torch.testing.assert_close(splits.train[1][-1], series[train_end - 1])
    assert torch.all(splits.train[1].abs().amax(0) <= 1) and torch.allclose(
        torch.cat([splits.train[0][0], splits.train[1]]).abs().amax(0), torch.ones(8))


def test_classification_metrics_count_every_step():
    tracker = MetricTracker("classification")
    scores = torch.zeros(2, 3, 4)
    scores[..., 1] = 1  # predicts class 1 everywhere
    tracker.update(scores, torch.tensor([[1, 0, 1], [2, 1, 3]]))
    tracker.update(torch.eye(4)[[3]], torch.tensor([3]))  # a [B, C] batch: one prediction, right
    assert tracker.compute("test") == {"test_acc": pytest.approx(4 / 7)}


def test_regression_metrics_are_mse_and_mae_over_every_value():
    tracker = MetricTracker("regression")
    tracker.update(torch.tensor([[1.0, 2.0], [0.0, 0.0]]), torch.tensor([[0.0, 2.0], [3.0, -1.0]]))
    tracker.update(torch.tensor([[0.5, 0.5]]), torch.tensor([[0.0, 0.0]]))
    # errors 1, 0, -3, 1, 0.5, 0.5 over 6 values
    assert tracker.compute("val") == {"val_mse": pytest.approx((1 + 9 + 1 + 0.25 + 0.25) / 6),
                                      "val_mae": pytest.approx((1 + 3 + 1 + 0.5 + 0.5) / 6)}
    history = [{"epoch": e, "val_mse": v, "test_mse": 10 * v, "test_mae": v} for e, v in ((1, 0.3), (2, 0.1), (3, 0.2))]
    assert best_val(history) == {"epoch": 2, "val_mse": 0.1, "test_mse": 1.0, "test_mae": 0.1}


def run(algo, dataset, data_dir, tmp_path, **model_args):
    return train(algo=algo, model="elman_rnn", dataset=dataset, data_dir=str(data_dir), model_args=model_args,
                 algo_args={"loss": "mse"}, epochs=1, limit_train_batches=LEARNING_STEPS, batch_size=32,
                 lr=3e-3, num_threads=1, out=str(tmp_path / f"{algo}-{dataset}"), progress=False)


LEARNING_STEPS = 150


@pytest.mark.parametrize("algo", ["bp", "dll"])
def test_rnn_beats_the_most_frequent_character(algo, data_dir, tmp_path):
    splits = load_dataset("tinyshakespeare", data_dir)
    most_frequent = torch.bincount(splits.train[1].flatten()).argmax()
    baseline = (splits.test[1] == most_frequent).double().mean().item()  # about 0.15 (the space)
    result = run(algo, "tinyshakespeare", data_dir, tmp_path, hidden=64, readout="all")
    assert result.summary["final"]["test_acc"] > baseline + 0.05
    first_loss = result.history[0]["train_loss"]  # mean over the epoch, above the final test loss
    assert result.summary["final"]["test_loss"] < first_loss


@pytest.mark.parametrize("algo", ["bp", "dll"])
def test_rnn_forecasts_better_than_the_training_mean(algo, data_dir, tmp_path):
    splits = load_dataset("exchange_rate", data_dir)
    mean = splits.train[1].mean(0)
    baseline = (splits.test[1] - mean).pow(2).mean().item()
    result = run(algo, "exchange_rate", data_dir, tmp_path, hidden=64)
    final = result.summary["final"]
    assert final["test_mse"] < 0.7 * baseline and "test_acc" not in final
    assert set(result.summary["best_val"]) == {"epoch", "val_mse", "test_mse", "test_mae"}
