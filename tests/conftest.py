"""Shared fixtures."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session")
def data_dir() -> Path:
    """The real datasets folder: $BIOPLAUSIBLE_DATA, else <repo>/../shared/datasets.

    Missing: a failure under CI=true (CI must exercise real data), a skip elsewhere.
    """
    env = os.environ.get("BIOPLAUSIBLE_DATA")
    path = Path(env) if env else REPO.parent / "shared" / "datasets"
    if not path.is_dir():
        message = f"real datasets directory {path} not found (set BIOPLAUSIBLE_DATA)"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    return path
