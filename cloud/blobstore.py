"""Where the original bytes of every object live.

`BlobStore` is the interface; `LocalBlobStore` keeps blobs in a directory. Keys are chosen by
the archive (never by a client), so a key can never climb out of the store's root; the check
in `_path` is a second line of defence. S3, tiers and encryption plug in behind the same calls.
"""

from __future__ import annotations

import os
import re
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Protocol
from urllib.parse import urlparse

from cloud.errors import BackendUnavailableError, InstanceNotFoundError

_KEY = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*(/[A-Za-z0-9][A-Za-z0-9._-]*)*$")


class BlobStore(Protocol):
    """Durable, immutable storage of byte strings under archive-chosen keys."""

    def put(self, key: str, data: bytes) -> None:
        """Store ``data`` under ``key`` durably; return only once it survives a crash."""

    def get(self, key: str) -> bytes:
        """Return the bytes under ``key``; raise `InstanceNotFoundError` if absent."""

    def exists(self, key: str) -> bool:
        """Tell whether ``key`` holds a blob."""

    def delete(self, key: str) -> None:
        """Remove the blob under ``key`` if present."""

    def keys(self) -> Iterator[str]:
        """Yield every key in the store."""


class LocalBlobStore:
    """Blobs as files below a root directory, written with write-temp, fsync, rename, fsync-dir."""

    def __init__(self, root: Path) -> None:
        self.root = root.resolve()
        self.root.mkdir(parents=True, exist_ok=True)

    def _path(self, key: str) -> Path:
        if not _KEY.match(key) or ".." in key.split("/"):
            raise ValueError(f"invalid blob key {key!r}")
        path = (self.root / key).resolve()
        if not path.is_relative_to(self.root):
            raise ValueError(f"blob key {key!r} escapes the store")
        return path

    def put(self, key: str, data: bytes) -> None:
        path = self._path(key)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=".incoming-")
            try:
                with os.fdopen(fd, "wb") as handle:
                    handle.write(data)
                    handle.flush()
                    os.fsync(handle.fileno())
                os.replace(tmp_name, path)
            except BaseException:
                Path(tmp_name).unlink(missing_ok=True)
                raise
            _fsync_directory(path.parent)
        except OSError as exc:
            raise BackendUnavailableError(f"cannot write blob: {exc.strerror}") from exc

    def get(self, key: str) -> bytes:
        try:
            return self._path(key).read_bytes()
        except FileNotFoundError as exc:
            raise InstanceNotFoundError(f"blob {key} is missing from the store") from exc

    def exists(self, key: str) -> bool:
        return self._path(key).is_file()

    def delete(self, key: str) -> None:
        self._path(key).unlink(missing_ok=True)

    def keys(self) -> Iterator[str]:
        for path in self.root.rglob("*"):
            if path.is_file() and not path.name.startswith(".incoming-"):
                yield path.relative_to(self.root).as_posix()


def _fsync_directory(directory: Path) -> None:
    """Make the rename itself durable (POSIX needs the directory entry flushed too)."""
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def open_blob_store(url: str) -> BlobStore:
    """Build the blob store a URL names: ``file:///path`` (more schemes arrive with tiers)."""
    parsed = urlparse(url)
    if parsed.scheme == "file":
        return LocalBlobStore(Path(parsed.path))
    raise ValueError(f"unsupported blob store URL scheme {parsed.scheme!r} in {url!r}")
