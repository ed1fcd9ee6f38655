"""The file format of index backups: a zstd stream, sealed in authenticated segments.

Sealed like blobs: a fresh data key per backup, AES-256-GCM, the data key wrapped by the
current KEK. Layout (integers big-endian)::

    header    b"ICB1", version 1, 16-byte backup id,
              1-byte length + KEK id (ASCII), 2-byte length + the wrapped data key
    segments  4-byte length + `cloud.crypto.seal_bytes` of up to 1 MiB of the zstd stream

A segment's associated data is magic, version, backup id, segment number and a last-segment
flag, so no segment can be altered, reordered, dropped, moved to another backup or cut off at
the end unnoticed (a changed header just fails to decrypt).
"""

from __future__ import annotations

import secrets
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import IO, cast

import zstandard

from cloud.crypto import (
    KEY_BYTES,
    NONCE_BYTES,
    TAG_BYTES,
    KeyEncryptionKeys,
    SealedBlobError,
    new_data_key,
    seal_bytes,
    unseal_bytes,
)
from cloud.errors import ArchiveError

MAGIC = b"ICB1"
VERSION = 1
SEGMENT_BYTES = 1 << 20  # read at each write, so tests may shrink it
_ID_BYTES = 16
_ZSTD_LEVEL = 3


class IndexBackupError(ArchiveError):
    """A backup cannot be made, read or restored; a restore target is left as it was."""

    # Here, in the lowest of the backup modules, so that `cloud.pg_tools` can raise it too;
    # `cloud.index_backup` re-exports it.
    title = "Index backup failed"


@contextmanager
def sealed_writer(out: IO[bytes], keks: KeyEncryptionKeys) -> Iterator[SealedWriter]:
    """Compress and seal what is written to the yielded writer into ``out``.

    The last segment is written only when the block ends without an error, so an interrupted
    backup never reads as complete.
    """
    data_key = new_data_key()
    kek_id, wrapped = keks.wrap(data_key)
    segments = _SegmentWriter(out, data_key, _header(kek_id, wrapped))
    compressor = zstandard.ZstdCompressor(level=_ZSTD_LEVEL)
    # zstd needs only write and flush of its output, which _SegmentWriter has.
    with compressor.stream_writer(cast(IO[bytes], segments), closefd=False) as zstd:
        yield SealedWriter(kek_id, zstd.write)
    segments.finish()


@dataclass(frozen=True)
class SealedWriter:
    """What `sealed_writer` yields: the KEK the data key is wrapped with, and ``write``."""

    kek_id: str
    write: Callable[[bytes], object]


def read_sealed(handle: IO[bytes], keks: KeyEncryptionKeys, name: str) -> Iterator[bytes]:
    """The plaintext of the backup file ``name`` open in ``handle``, authenticated segment by
    segment as it is read; `IndexBackupError` as soon as something does not fit."""
    decompressor = zstandard.ZstdDecompressor().decompressobj()
    try:
        for segment in _open_segments(handle, keks, name):
            chunk = decompressor.decompress(segment)
            if chunk:
                yield chunk
    except (SealedBlobError, zstandard.ZstdError) as exc:
        raise IndexBackupError(f"backup {name} is damaged or altered: {exc}") from exc
    if not decompressor.eof:
        raise IndexBackupError(f"backup {name} ends early")


class _SegmentWriter:
    """Takes the zstd stream and writes it as sealed segments."""

    def __init__(self, out: IO[bytes], data_key: bytes, header: bytes) -> None:
        self._out, self._key, self._id = out, data_key, _header_id(header)
        self._buffer, self._index = bytearray(), 0
        out.write(header)

    def write(self, data: bytes) -> int:
        self._buffer += data
        while len(self._buffer) > SEGMENT_BYTES:  # keep a remainder: the last is sealed apart
            self._emit(bytes(self._buffer[:SEGMENT_BYTES]), last=False)
            del self._buffer[:SEGMENT_BYTES]
        return len(data)

    def flush(self) -> None:
        """Nothing to do: segments are written whole."""

    def finish(self) -> None:
        self._emit(bytes(self._buffer), last=True)
        self._buffer.clear()

    def _emit(self, chunk: bytes, *, last: bool) -> None:
        sealed = seal_bytes(self._key, chunk, _segment_aad(self._id, self._index, last))
        self._out.write(len(sealed).to_bytes(4, "big") + sealed)
        self._index += 1


def _header(kek_id: str, wrapped: bytes) -> bytes:
    backup_id, kek = secrets.token_bytes(_ID_BYTES), kek_id.encode("ascii")
    sizes = (bytes([len(kek)]), len(wrapped).to_bytes(2, "big"))
    return b"".join((MAGIC, bytes([VERSION]), backup_id, sizes[0], kek, sizes[1], wrapped))


def _header_id(header: bytes) -> bytes:
    return header[len(MAGIC) + 1 : len(MAGIC) + 1 + _ID_BYTES]


def _read_header(handle: IO[bytes], what: str) -> tuple[bytes, str, bytes]:
    fixed = handle.read(len(MAGIC) + 1 + _ID_BYTES + 1)
    if len(fixed) < len(MAGIC) + 2 + _ID_BYTES or fixed[: len(MAGIC)] != MAGIC:
        raise IndexBackupError(f"{what} is not an index backup")
    if fixed[len(MAGIC)] != VERSION:
        raise IndexBackupError(f"{what} has unknown format version {fixed[len(MAGIC)]}")
    kek = handle.read(fixed[-1])
    wrapped = handle.read(int.from_bytes(handle.read(2), "big"))
    if len(kek) != fixed[-1] or len(wrapped) < KEY_BYTES:
        raise IndexBackupError(f"the header of {what} is truncated")
    return _header_id(fixed), kek.decode("ascii", errors="replace"), wrapped


def _segment_aad(backup_id: bytes, index: int, last: bool) -> bytes:
    return MAGIC + bytes([VERSION]) + backup_id + index.to_bytes(8, "big") + bytes([last])


def _open_segments(handle: IO[bytes], keks: KeyEncryptionKeys, what: str) -> Iterator[bytes]:
    backup_id, kek_id, wrapped = _read_header(handle, what)
    data_key = keks.unwrap(kek_id, wrapped)
    index, pending = 0, _read_segment(handle, what)
    if pending is None:
        raise IndexBackupError(f"{what} holds no data")
    while pending is not None:
        following = _read_segment(handle, what)  # end of file: this one must be the last
        aad = _segment_aad(backup_id, index, following is None)
        yield unseal_bytes(data_key, pending, aad, f"segment {index} of {what}")
        index, pending = index + 1, following


def _read_segment(handle: IO[bytes], what: str) -> bytes | None:
    prefix = handle.read(4)
    if not prefix:
        return None
    length = int.from_bytes(prefix, "big")
    # A bound, so that a damaged length cannot make us read (and hold) a huge "segment".
    if len(prefix) < 4 or not NONCE_BYTES + TAG_BYTES <= length <= SEGMENT_BYTES + 64:
        raise IndexBackupError(f"{what} is damaged (bad segment length)")
    sealed = handle.read(length)
    if len(sealed) < length:
        raise IndexBackupError(f"{what} is truncated")
    return sealed
