"""Where recsys keeps its files: ``$RECSYS_HOME`` (default ``~/.cache/recsys``). The one definition, used by
the data layer (prepared datasets, downloads) and by ``recsys`` (runs, indexes, the default MLflow store)."""

from __future__ import annotations

import os
from pathlib import Path


def recsys_home() -> Path:
    return Path(os.environ.get("RECSYS_HOME", Path.home() / ".cache" / "recsys")).expanduser().resolve()
