"""Where the original bytes of every object live.

`BlobStore` is the interface; `LocalBlobStore` keeps blobs in a directory, `S3BlobStore`
(`cloud.blob_s3`) in an S3 bucket, and `ReplicatedBlobStore` (`cloud.blob_replicas`) on several
of those at once. Keys are chosen by the archive (never by a client), so a key can never climb
out of the store's root; `check_key` is a second line of defence. `open_blob_store` picks the
implementation from the URL scheme and imports the optional ones only when asked for.
"""

from __future__ import annotations

import os
import re
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Protocol
from urllib.parse import urlparse

from cloud.errors import ArchiveError, BackendUnavailableError, InstanceNotFoundError

_KEY = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*(/[A-Za-z0-9][A-Za-z0-9._-]*)*$")


class BlobDamagedError(ArchiveError):
    """A stored copy does not match its checksum (bit rot, a torn write, a bad disk)."""

    dimse_status = 0xC211  # Error: unable to process
    http_status = 500
    title = "Stored object damaged"


def check_key(key: str) -> str:
    """Return ``key`` if it is a well-formed relative blob key; raise `ValueError` otherwise."""
    if not _KEY.match(key) or ".." in key.split("/"):
        raise ValueError(f"invalid blob key {key!r}")
    return key


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
        self.url = f"file://{self.root}"

    def _path(self, key: str) -> Path:
        path = (self.root / check_key(key)).resolve()
        if not path.is_relative_to(self.root):
            raise ValueError(f"blob key {key!r} escapes the store")
        return path

    def put(self, key: str, data: bytes) -> None:
        path = self._path(key)
        # A vanished root is an unmounted or removed volume: never quietly recreate it on the
        # disk below (the blobs would land where no one looks for them).
        self._require_root()
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
            self._require_root()  # "not here" only if the volume itself is there
            raise InstanceNotFoundError(f"blob {key} is missing from the store") from exc
        except OSError as exc:
            raise BackendUnavailableError(f"cannot read blob {key}: {exc.strerror}") from exc

    def exists(self, key: str) -> bool:
        if self._path(key).is_file():
            return True
        self._require_root()
        return False

    def _require_root(self) -> None:
        if not self.root.is_dir():
            raise BackendUnavailableError(f"blob store root {self.root} is missing")

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


def open_blob_store(url: str, replicas: Sequence[str] = ()) -> BlobStore:
    """Build the blob store a URL names, replicated onto ``replicas`` if any are given.

    Parameters
    ----------
    url
        ``file:///path`` (a local directory) or ``s3://bucket/prefix?endpoint_url=…&region=…``
        (see `cloud.blob_s3.S3BlobStore.from_url`; credentials come from the standard AWS
        environment and configuration, never from the URL).
    replicas
        Further URLs of either kind. With any, the result is a `ReplicatedBlobStore` that
        writes every replica and reads the first good copy, ``url`` first.
    """
    if not replicas:
        return _open_one(url)
    from cloud.blob_replicas import ReplicatedBlobStore  # here: blob_replicas imports this module

    return ReplicatedBlobStore([_open_one(u) for u in (url, *replicas)])


def _open_one(url: str) -> BlobStore:
    parsed = urlparse(url)
    if parsed.scheme == "file":
        return LocalBlobStore(Path(parsed.path))
    if parsed.scheme == "s3":
        from cloud.blob_s3 import S3BlobStore  # here: boto3 only when S3 is used

        return S3BlobStore.from_url(url)
    raise ValueError(f"unsupported blob store URL scheme {parsed.scheme!r} in {url!r}")
