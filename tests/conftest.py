"""Shared fixtures: the real corpora, a prepared tiny run directory, and a fresh copy of it."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
from run_helpers import DATA, TINY


@pytest.fixture(autouse=True)
def _data_root(monkeypatch):
    """Point ${MTCLI_DATA} at the shared corpora whatever the working directory."""
    monkeypatch.setenv("MTCLI_DATA", str(DATA))


@pytest.fixture(scope="session")
def data_dir() -> Path:
    """The shared corpora (../shared/data beside the checkout); in CI their absence is a failure."""
    if not DATA.is_dir():
        message = f"shared corpora not found at {DATA} (set MTCLI_DATA or put shared/ beside the checkout)"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    return DATA


@pytest.fixture(scope="session")
def prepared(tmp_path_factory, data_dir) -> Path:
    """A tiny run directory with prepared data (prepared once per session)."""
    from mtcli.config import load_config
    from mtcli.data.prepare import run_prepare

    run = tmp_path_factory.mktemp("prepared") / "run"
    os.environ["MTCLI_DATA"] = str(data_dir)
    run_prepare(load_config(TINY, [f"run_dir={run}"]))
    return run


@pytest.fixture
def run(prepared, tmp_path) -> Path:
    """A fresh copy of the prepared run directory under runs/ in tmp_path."""
    dest = tmp_path / "runs" / "tiny"
    shutil.copytree(prepared, dest, symlinks=True)
    return dest


@pytest.fixture(scope="session")
def trained_bundle(tmp_path_factory, data_dir) -> Path:
    """A tiny model trained long enough that its greedy outputs vary (the export tests' trained model)."""
    import subprocess
    import sys

    from run_helpers import REPO

    run = tmp_path_factory.mktemp("trained") / "runs" / "tiny"
    out = subprocess.run([sys.executable, "-m", "mtcli", "train", str(TINY), "--set", f"run_dir={run}",
                          "--set", "train.max_steps=250", "--set", "train.eval_every=1000",
                          "--set", "train.save_every=1000"], capture_output=True, text=True, cwd=REPO, timeout=900)  # fmt: skip
    assert out.returncode == 0, out.stderr
    return run / "model"
