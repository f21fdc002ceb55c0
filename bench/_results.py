"""Writing benchmark result files: one helper, so that no driver can leave a torn or truncated file."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any


def write_json(path: Path, obj: Any, indent: int = 1) -> None:
    """Write ``obj`` as JSON to ``path`` through a temp file beside it, flushed to disk, then renamed into
    place: a crash at any point leaves the previous file whole, or the new one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "w", encoding="utf-8") as fh:
            fh.write(json.dumps(obj, indent=indent) + "\n")
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
