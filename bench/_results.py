"""Writing benchmark result files: one helper, so that no driver can leave a torn or truncated file."""

from __future__ import annotations

import json
import os
import sys
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from recsys.atomic import atomic_write


def write_json(path: Path, obj: Any, indent: int = 1) -> None:
    """Write ``obj`` as JSON to ``path`` atomically (:func:`recsys.atomic.atomic_write`): a crash at any point
    leaves the previous file whole, or the new one."""
    atomic_write(Path(path), lambda fh: fh.write((json.dumps(obj, indent=indent) + "\n").encode()))


def machine() -> str:
    """The CPU model (Linux), core count and library versions: where the numbers were measured."""
    import lightgbm

    from recsys.tracking import cpu_model

    return f"{cpu_model()}, {os.cpu_count()} cores, lightgbm {lightgbm.__version__}"


def provenance() -> dict[str, str]:
    """The head of a results file: the command that wrote it, when (UTC) and on which machine."""
    return {
        "command": "python " + " ".join(sys.argv),
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": machine(),
    }
