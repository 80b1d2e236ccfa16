"""Configuration: bad names and values give one clear message naming the key or value."""

from __future__ import annotations

import pytest

from bioplausible import TrainConfig, load_config, train
from bioplausible.errors import ConfigError


@pytest.mark.parametrize(
    "values, message",
    [
        ({"algo": "sgdx"}, "unknown algorithm 'sgdx'"),
        ({"model": "transformer9000"}, "unknown model 'transformer9000'"),
        ({"dataset": "imagenet22k"}, "unknown dataset 'imagenet22k'"),
        ({"lr": -0.1}, "'lr' must be positive, got -0.1"),
        ({"epochs": 0}, "'epochs' must be positive"),
        ({"batch_size": "big"}, "'batch_size' must be int, got 'big'"),
        ({"lrr": 0.1}, "unknown config key 'lrr'"),
        ({"optimizer": "lion"}, "'optimizer' must be one of sgd, adam, adamw"),
        ({"schedule": "cyclic"}, "'schedule' must be one of"),
        ({"val_split": 1.5}, "'val_split' must be in \\[0, 1\\)"),
        ({"augment": ["mixup"]}, "'augment' must be one of crop, flip"),
        ({"device": "tpu"}, "'device' must be cpu, cuda or cuda:N"),
    ],
)
def test_invalid_values_are_named(values, message):
    with pytest.raises(ConfigError, match=message):
        TrainConfig.from_dict(values)


def test_model_and_algorithm_options_are_checked(tmp_path):
    with pytest.raises(ConfigError, match="model 'mlp' has no option 'widths'"):
        train(model_args={"widths": [3]}, out=str(tmp_path / "r"), progress=False)
    with pytest.raises(ConfigError, match="algorithm 'wm' has no option 'mirror_rate'"):
        train(algo="wm", algo_args={"mirror_rate": 3}, out=str(tmp_path / "r"), progress=False)


def test_yaml_file_and_overrides_merge_in_order(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("algo: kp\nlr: 0.01\nmodel_args:\n  hidden: [64]\nalgo_args:\n  decay: 0.1\n")
    config = load_config(path, ["lr=1e-3", "model.activation=tanh", "algo.decay=0.2"], epochs=3)
    assert (config.algo, config.lr, config.epochs) == ("kp", 1e-3, 3)
    assert config.model_args == {"hidden": [64], "activation": "tanh"}
    assert config.algo_args == {"decay": 0.2}


@pytest.mark.parametrize(
    "text, message",
    [("algo: [unclosed", "is not valid YAML at line 1"), ("- just\n- a list\n", "must hold a mapping"),
     ("learning_rate: 0.1\n", "unknown config key 'learning_rate'")],
)
def test_malformed_config_files_are_named(tmp_path, text, message):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=message):
        load_config(path)


def test_missing_config_file_and_bad_override():
    with pytest.raises(ConfigError, match="config file 'nope.yaml' does not exist"):
        load_config("nope.yaml")
    with pytest.raises(ConfigError, match="--set expects key=value"):
        load_config(None, ["lr"])
    with pytest.raises(ConfigError, match="nested keys start with 'model.' or 'algo.'"):
        load_config(None, ["data.size=3"])


def test_exponent_numbers_are_floats_in_files_and_overrides(tmp_path):
    # PyYAML (YAML 1.1) reads "1e-5" as a string; the rules' options would then fail their checks.
    path = tmp_path / "c.yaml"
    path.write_text("algo: dll\nlr: 5e-05\nalgo_args:\n  theta_lr: 1e-6\n")
    config = load_config(path, ["algo.loss=mse", "weight_decay=1E-4"])
    assert config.lr == 5e-05 and config.weight_decay == 1e-4
    assert config.algo_args["theta_lr"] == 1e-6 and isinstance(config.algo_args["theta_lr"], float)
    config = load_config(None, ["algo=dll", "algo.theta_lr=1e-5"])
    assert config.algo_args == {"theta_lr": 1e-5}
    config.validate()  # the rule's own check accepts the float
