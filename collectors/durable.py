"""Write a file so that it survives a crash or power loss once the call returns."""

from __future__ import annotations

import os
from pathlib import Path


def write_durably(path: Path, data: bytes, temporary: Path | None = None) -> None:
    """Write ``data`` to ``temporary``, fsync it, rename it to ``path``, fsync the directory.

    Readers see the old file or the whole new one, never a part; ``temporary`` (default: a
    hidden name beside ``path``) must be on the same file system.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = temporary or path.with_name(f".{path.name}.tmp")
    with open(temporary, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(temporary, path)
    directory = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)
