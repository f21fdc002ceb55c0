"""Shared fixtures. Real benchmark data lives beside the repository in ``../shared/data`` (never committed);
tests that need it skip with a clear reason when it is absent. ``RECSYS_SHARED_DATA`` points elsewhere."""

from __future__ import annotations

import atexit
import functools
import os
import shutil
import tempfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def shared_data_dir() -> Path:
    return Path(os.environ.get("RECSYS_SHARED_DATA", REPO.parent / "shared" / "data")).resolve()


@functools.lru_cache(maxsize=1)
def fixture_data() -> Path:
    """``tests/data`` copied once to a temp folder, completed with the mini MovieLens ``u.genre``.

    The real ``u.genre`` is a MovieLens file, which must never be committed; the genre names it lists are
    already in ``features.movielens.ML100K_GENRES``, so the test copy writes the file from there."""
    from features.movielens import ML100K_GENRES

    root = Path(tempfile.mkdtemp(prefix="recsys-testdata-"))
    atexit.register(shutil.rmtree, root, ignore_errors=True)
    dst = root / "data"
    shutil.copytree(REPO / "tests" / "data", dst)
    lines = "".join(f"{name}|{code}\n" for code, name in enumerate(ML100K_GENRES))
    (dst / "ml100k_mini" / "u.genre").write_text(lines + "\n", encoding="latin-1")
    return dst


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


@pytest.fixture
def one_torch_thread():
    """Run a test with one torch thread (k-means and training tests that are slow with two contending
    threads), restoring the previous count afterwards."""
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)
