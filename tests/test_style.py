"""The code passes the linter, is formatted (ruff) and type-checks (mypy), as configured in pyproject.toml."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _ruff() -> str:
    beside = Path(sys.executable).with_name("ruff")  # the venv's, which pyproject's dev extra pins
    found = str(beside) if beside.exists() else shutil.which("ruff")
    if found is None:
        pytest.skip("ruff is not installed (pip install -e '.[dev]')")
    return found


@pytest.mark.parametrize("command", [["check"], ["format", "--check"]], ids=["lint", "format"])
def test_ruff_finds_nothing(command):
    result = subprocess.run(
        [_ruff(), *command, "--no-cache", "."], cwd=ROOT, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]


def _mypy() -> str:
    beside = Path(sys.executable).with_name("mypy")  # the venv's, which pyproject's dev extra pins
    found = str(beside) if beside.exists() else shutil.which("mypy")
    if found is None:
        pytest.skip("mypy is not installed (pip install -e '.[dev]')")
    return found


def test_mypy_finds_nothing():
    # The packages and settings are pyproject's [tool.mypy]. --python-executable: the third-party imports
    # resolve in this interpreter's environment, also when the mypy found is installed elsewhere.
    result = subprocess.run(
        [_mypy(), "--python-executable", sys.executable],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
