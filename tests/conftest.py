"""Shared fixtures: paths to the real corpora and small helpers."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("MTCLI_DATA", REPO.parent / "shared" / "data")).resolve()


@pytest.fixture(autouse=True)
def _data_root(monkeypatch):
    """Point ${MTCLI_DATA} at the shared corpora whatever the working directory."""
    monkeypatch.setenv("MTCLI_DATA", str(DATA))


@pytest.fixture(scope="session")
def data_dir() -> Path:
    """The shared corpora (../shared/data beside the checkout)."""
    if not DATA.is_dir():
        pytest.skip(f"shared corpora not found at {DATA}")
    return DATA
