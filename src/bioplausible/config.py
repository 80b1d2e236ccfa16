"""Run configuration: one dataclass, loaded from YAML, ``--set key=value`` and keyword
arguments, validated before anything runs so that a typo costs a one-line error, not an hour.

Keys ``model.X`` and ``algo.X`` in ``--set`` (or ``model_args`` / ``algo_args`` in YAML) are
passed to the architecture and to the learning rule and checked against their options.
"""

from __future__ import annotations

import dataclasses
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import yaml

from .errors import ConfigError, require_non_negative, require_positive

OPTIMIZERS = ("sgd", "adam", "adamw")
SCHEDULES = ("constant", "step", "cosine", "linear")
AUGMENTATIONS = ("crop", "flip")


@dataclass
class TrainConfig:
    algo: str = "bp"
    model: str = "mlp"
    dataset: str = "digits"
    model_args: dict = field(default_factory=dict)
    algo_args: dict = field(default_factory=dict)
    epochs: int = 10
    batch_size: int = 32
    lr: float = 1e-3
    layer_lrs: Optional[list] = None  # one learning rate per model block with parameters
    optimizer: str = "adam"
    momentum: float = 0.9  # SGD only
    nesterov: bool = False
    weight_decay: float = 0.0
    schedule: str = "constant"
    warmup_epochs: int = 0
    milestones: list = field(default_factory=list)  # step schedule: epochs at which lr *= gamma
    gamma: float = 0.1
    seed: int = 0
    deterministic: bool = False
    device: str = "cpu"  # cpu | cuda | cuda:N
    num_threads: Optional[int] = None
    data_dir: Optional[str] = None
    val_split: float = 0.0
    augment: list = field(default_factory=list)  # any of: crop, flip
    crop_padding: int = 2
    limit_train_batches: Optional[int] = None  # cap on batches per epoch (quick runs)
    out: Optional[str] = None  # run directory; default runs/<algo>-<model>-<dataset>-s<seed>-<time>
    tensorboard: bool = False
    progress: bool = True
    check_finite_every: int = 1  # steps between non-finite-loss checks (each one syncs a GPU)
    # --- multi-process runs under torchrun (training/distributed.py, training/pipeline.py)
    data_parallel: str = "ddp"  # autograd rules: ddp (DistributedDataParallel) | allreduce (after backward)
    check_replicas: int = 0  # every K steps compare the rule state across ranks (0: never)
    layer_parallel: bool = False  # layer-local rules: one stage of units per rank instead of data parallelism
    pipeline_depth: int = 2  # layer-parallel: micro-batches in flight between two stages

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> "TrainConfig":
        known = {f.name: f for f in dataclasses.fields(cls)}
        kwargs = {}
        for key, value in values.items():
            if key not in known:
                raise ConfigError(f"unknown config key '{key}'; valid keys: {', '.join(known)}")
            kwargs[key] = _coerce(key, value, _field_type(known[key]))
        config = cls(**kwargs)
        config.validate()
        return config

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def replace(self, **changes) -> "TrainConfig":
        return TrainConfig.from_dict({**self.to_dict(), **changes})

    # ------------------------------------------------------------------ checks
    def with_overrides(self, overrides: list[str]) -> "TrainConfig":
        """This configuration with ``key=value`` strings applied (as ``--set`` applies them)."""
        merged = self.to_dict()
        for item in overrides:
            apply_override(merged, item)
        return TrainConfig.from_dict(merged)

    def validate(self) -> None:
        from .algorithms import ALGORITHMS
        from .data import DATASETS
        from .models import MODELS

        ALGORITHMS.get(self.algo)
        MODELS.get(self.model)
        DATASETS.get(self.dataset)
        require_positive(None, epochs=self.epochs, batch_size=self.batch_size, lr=self.lr, check_finite_every=self.check_finite_every)
        require_non_negative(None, weight_decay=self.weight_decay, momentum=self.momentum, warmup_epochs=self.warmup_epochs,
                      crop_padding=self.crop_padding)
        _choice("optimizer", self.optimizer, OPTIMIZERS)
        _choice("schedule", self.schedule, SCHEDULES)
        for name in self.augment:
            _choice("augment", name, AUGMENTATIONS)
        if not 0 <= self.val_split < 1:
            raise ConfigError(f"'val_split' must be in [0, 1), got {self.val_split}")
        if self.layer_lrs is not None:
            for lr in self.layer_lrs:
                if not isinstance(lr, (int, float)) or isinstance(lr, bool) or not lr > 0:
                    raise ConfigError(f"'layer_lrs' must be positive numbers, got {lr!r}")
        if self.limit_train_batches is not None:
            require_positive(None, limit_train_batches=self.limit_train_batches)
        if self.num_threads is not None:
            require_positive(None, num_threads=self.num_threads)
        _choice("data_parallel", self.data_parallel, ("ddp", "allreduce"))
        require_non_negative(None, check_replicas=self.check_replicas)
        require_positive(None, pipeline_depth=self.pipeline_depth)
        if not (self.device == "cpu" or self.device.startswith("cuda")):
            raise ConfigError(f"'device' must be cpu, cuda or cuda:N, got '{self.device}'")
        if self.warmup_epochs >= self.epochs and self.warmup_epochs > 0:
            raise ConfigError(f"'warmup_epochs' ({self.warmup_epochs}) must be below 'epochs' ({self.epochs})")


def load_config(
    path: str | Path | None = None,
    overrides: list[str] | None = None,
    **values: Any,
) -> TrainConfig:
    """Merge, in increasing priority: defaults, a YAML file, keyword values, ``key=value`` strings."""
    merged: dict[str, Any] = {}
    if path is not None:
        merged.update(read_yaml(path))
    merged.update({k: v for k, v in values.items() if v is not None})
    for item in overrides or []:
        apply_override(merged, item)
    return TrainConfig.from_dict(merged)


class YamlLoader(yaml.SafeLoader):
    """PyYAML's safe loader, reading ``1e-3`` as a float as YAML 1.2 does (PyYAML follows YAML 1.1,
    whose floats need a dot, so ``lr: 1e-3`` or ``--set algo.theta_lr=1e-5`` would arrive as strings)."""


YamlLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
                  |[-+]?[0-9][0-9_]*[eE][-+]?[0-9]+
                  |\.[0-9_]+(?:[eE][-+]?[0-9]+)?
                  |[-+]?\.(?:inf|Inf|INF)
                  |\.(?:nan|NaN|NAN))$""", re.X),
    list("-+0123456789."))


def load_yaml(text: str) -> Any:
    return yaml.load(text, Loader=YamlLoader)


def read_yaml(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    try:
        data = load_yaml(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"config file '{path}' does not exist") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        raise ConfigError(f"config file '{path}' is not valid YAML{where}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"config file '{path}' must hold a mapping of keys to values")
    return data


def apply_override(merged: dict[str, Any], item: str) -> None:
    """``lr=0.1``, ``model.hidden=[256,128]``, ``algo.decay=1e-3`` (values parsed as YAML)."""
    key, sep, raw = item.partition("=")
    key = key.strip()
    if not sep or not key:
        raise ConfigError(f"--set expects key=value, got '{item}'")
    try:
        value = load_yaml(raw) if raw.strip() else None
    except yaml.YAMLError:
        raise ConfigError(f"--set {key}: cannot parse value '{raw}'") from None
    head, dot, rest = key.partition(".")
    if dot:
        if head not in ("model", "algo") or not rest:
            raise ConfigError(f"unknown config key '{key}'; nested keys start with 'model.' or 'algo.'")
        merged.setdefault(f"{head}_args", {})
        merged[f"{head}_args"] = {**merged[f"{head}_args"], rest: value}
    else:
        merged[key] = value


# ---------------------------------------------------------------------- helpers
def _field_type(f: dataclasses.Field) -> Any:
    return typing.get_type_hints(TrainConfig)[f.name]


def _coerce(key: str, value: Any, annotation: Any) -> Any:
    """Check a value against a field's declared type, allowing YAML's int-for-float."""
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        if value is None:
            return None
        annotation = next(a for a in typing.get_args(annotation) if a is not type(None))
        origin = typing.get_origin(annotation)
    expected = origin or annotation
    if expected is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if expected is float and isinstance(value, str):
        try:
            return float(value)  # YAML reads "1e-3" as a string
        except ValueError:
            pass
    if expected is list and isinstance(value, (str, tuple)):
        value = [v for v in str(value).split(",") if v] if isinstance(value, str) else list(value)
    if not isinstance(value, expected) or (expected is int and isinstance(value, bool)):
        raise ConfigError(f"'{key}' must be {expected.__name__}, got {value!r}")
    return value


def _choice(key: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ConfigError(f"'{key}' must be one of {', '.join(choices)}, got '{value}'")
