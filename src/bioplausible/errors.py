"""Errors the library raises on bad input. Each names the offending key, value or file.

The CLI turns every :class:`BioplausibleError` into a one-line message and a non-zero exit.
"""


class BioplausibleError(Exception):
    """Base class of every error the library raises on purpose."""


class ConfigError(BioplausibleError, ValueError):
    """An unknown name, an invalid value or a malformed configuration."""


class ShapeError(BioplausibleError, ValueError):
    """An input tensor whose shape the model cannot take."""


class DatasetNotFoundError(BioplausibleError, FileNotFoundError):
    """A dataset that is neither in the data directory nor downloadable."""


class CheckpointError(BioplausibleError):
    """A checkpoint that is missing, corrupt or from an incompatible run."""


class DivergenceError(BioplausibleError, FloatingPointError):
    """Training produced a non-finite loss or weight."""


def require_positive(owner: str | None = None, **values: float) -> None:
    """Raise a ConfigError naming the first value that is not > 0 (and its owner, if any)."""
    for key, value in values.items():
        if not value > 0:
            raise ConfigError(f"{owner + ': ' if owner else ''}'{key}' must be positive, got {value}")


def require_non_negative(owner: str | None = None, **values: float) -> None:
    for key, value in values.items():
        if not value >= 0:
            raise ConfigError(f"{owner + ': ' if owner else ''}'{key}' must be non-negative, got {value}")
