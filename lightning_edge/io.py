"""Atomic file writes: a reader sees the old file or the whole new one, never a torn write."""
from __future__ import annotations

import json
import os
import tempfile
from typing import Any


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> str:
    """Write ``data`` to a temporary file beside ``path``, flush it to disk, then rename it over ``path``."""
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=directory, prefix=f".{os.path.basename(path)}.", suffix=".tmp")
    try:
        with os.fdopen(handle, "wb") as stream:
            stream.write(data)
            stream.flush()
            os.fsync(stream.fileno())
        os.replace(temporary, path)
    except BaseException:
        if os.path.exists(temporary):
            os.unlink(temporary)
        raise
    return path


def atomic_write_json(path: str | os.PathLike, payload: Any) -> str:
    """Write ``payload`` as indented JSON, atomically."""
    return atomic_write_bytes(path, (json.dumps(payload, indent=2, sort_keys=False) + "\n").encode())
