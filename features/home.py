"""Where recsys keeps its files: ``$RECSYS_HOME`` (default ``~/.cache/recsys``). The one definition, used by
the data layer (prepared datasets, downloads) and by ``recsys`` (runs, indexes, the default MLflow store)."""

from __future__ import annotations

import os
from pathlib import Path


def recsys_home() -> Path:
    """``$RECSYS_HOME``, or ``~/.cache/recsys`` when it is unset or empty (an empty value used to mean the
    current folder)."""
    return Path(os.environ.get("RECSYS_HOME") or Path.home() / ".cache" / "recsys").expanduser().resolve()
