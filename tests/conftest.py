"""Shared fixtures. Real benchmark data lives beside the repository in ``../shared/data`` (never committed);
tests that need it skip with a clear reason when it is absent. ``RECSYS_SHARED_DATA`` points elsewhere."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def shared_data_dir() -> Path:
    return Path(os.environ.get("RECSYS_SHARED_DATA", REPO.parent / "shared" / "data")).resolve()


@pytest.fixture(scope="session")
def shared_data() -> Path:
    root = shared_data_dir()
    if not (root / "README.md").exists():
        pytest.skip(f"real benchmark data not found at {root} (set RECSYS_SHARED_DATA to its folder)")
    return root


@pytest.fixture(autouse=True)
def _isolated_home(tmp_path, monkeypatch):
    """Every test gets its own RECSYS_HOME and MLflow store, so tests never touch the user's files."""
    home = tmp_path / "recsys_home"
    monkeypatch.setenv("RECSYS_HOME", str(home))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    return home
