"""Shared pytest fixtures."""

from __future__ import annotations

import os
from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def data_dir() -> Path:
    """The real-data folder: $SCIDIT_DATA_DIR, else ../shared/data beside the repository.

    Missing data fails the test with a message (never a silent skip).
    """
    path = Path(os.environ.get("SCIDIT_DATA_DIR") or Path(__file__).resolve().parents[1].parent / "shared" / "data")
    if not path.is_dir():
        pytest.fail(f"real data folder {path} not found: set SCIDIT_DATA_DIR (see data/README.md)")
    return path


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh processed-data cache for the test session (never the user's cache)."""
    return tmp_path_factory.mktemp("scidit_cache")
