"""The MP4 inside a DICOM video object, extracted once and served by byte range.

A video's MP4 is the encapsulated Pixel Data (one fragment per stream, PS3.5 8.2.8; several are
concatenated) without the even-length pad byte. A playback is dozens of HTTP Range requests, so
re-reading and re-parsing the object for each of them is out of the question; and an
operating-room recording (1-4 GB) does not fit a memory cache either. Hence two tiers:

* small clips (at most ``memory_clip_bytes``) and thumbnails stay in a bounded in-memory LRU;
* larger clips are written once to a cache directory, bounded in total bytes, least recently
  used first out. The archive keeps studies encrypted at rest, so the cache must too: each file
  is AES-256-CTR under a random key that lives only in this process's memory, with a random
  initial counter per file. CTR is seekable, so a Range read decrypts only the bytes asked for.
  Files of an earlier process are unreadable without its key and are deleted when the cache
  opens; each process writes in a subdirectory of its own, held by a lock, so processes that
  share a data directory do not delete each other's live files. File names are a hash of
  (SOP Instance UID, blob key), never anything a client sent.

Limit: filling the cache reads the stored object whole once (the blob store returns bytes, and
sealed objects are AES-GCM-opened whole), so the first request for a video needs about its
size in memory (twice that for a sealed object, briefly). The fragments are written out from
that buffer without further copies and the buffer is released; every later request reads only
the bytes it serves (at most ``CHUNK`` at a time when streamed).
"""

from __future__ import annotations

import fcntl
import hashlib
import io
import os
import shutil
import tempfile
import threading
import weakref
from collections import OrderedDict
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from cryptography.hazmat.primitives.ciphers import Cipher, CipherContext, algorithms, modes
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.encaps import generate_fragments

from cloud.errors import InvalidDatasetError

CHUNK = 1024 * 1024  # bytes per piece of a streamed response
_BLOCK = 16  # AES block: the CTR counter advances once per 16 bytes
_PIXEL_DATA = b"\xe0\x7f\x10\x00"  # (7FE0,0010) little endian
_ITEM = b"\xfe\xff\x00\xe0"  # (FFFE,E000)
_SEQUENCE_END = b"\xfe\xff\xdd\xe0"  # (FFFE,E0DD)
_UNDEFINED = 0xFFFFFFFF

ClipKey = tuple[str, str]  # (SOP Instance UID, blob key)


# --- the MP4 out of the encapsulated Pixel Data ------------------------------------------------


class Mp4Fragments:
    """The Pixel Data fragments of a video as zero-copy views, read as one MP4."""

    def __init__(self, parts: list[memoryview]) -> None:
        self.parts = parts
        self.raw_length = sum(len(part) for part in parts)
        self.length = _mp4_length(self._read_at, self.raw_length)

    def _read_at(self, position: int, count: int) -> bytes:
        out = bytearray()
        for part in self.parts:
            if position >= len(part):
                position -= len(part)
                continue
            out += part[position : position + count - len(out)]
            position = 0
            if len(out) == count:
                break
        return bytes(out)

    def pieces(self, size: int = CHUNK) -> Iterator[memoryview]:
        """The MP4's bytes (pad byte left out), in views of at most ``size`` bytes."""
        left = self.length
        for part in self.parts:
            for start in range(0, len(part), size):
                if left <= 0:
                    return
                piece = part[start : start + min(size, left)]
                left -= len(piece)
                yield piece

    def join(self) -> bytes:
        return b"".join(self.pieces())


def _mp4_length(read_at: Callable[[int, int], bytes], total: int) -> int:
    """The length of the top-level ISO BMFF boxes, if they end one byte short of the data and
    that byte is the NUL pad; ``total`` otherwise."""
    position = 0
    while position + 8 <= total:
        header = read_at(position, 16)
        size = int.from_bytes(header[:4], "big")
        if size == 1 and position + 16 <= total:
            size = int.from_bytes(header[8:16], "big")
        if size < 8:
            return total  # box runs to the end (0), or not an MP4 we can walk
        position += size
    if total > 0 and position == total - 1 and read_at(total - 1, 1) == b"\x00":
        return position
    return total


def mp4_bytes(ds: Dataset) -> bytes:
    """The MPEG-4 file held in a parsed dataset's encapsulated Pixel Data, without the pad."""
    if "PixelData" not in ds or not ds["PixelData"].is_undefined_length:
        raise InvalidDatasetError("the video object has no encapsulated Pixel Data")
    items = list(generate_fragments(ds.PixelData))
    # items[0] is the Basic Offset Table (empty for video)
    return Mp4Fragments([memoryview(item) for item in items[1:]]).join()


def mp4_fragments(part10: bytes) -> Mp4Fragments:
    """The MP4 fragments of a Part-10 object, as views into ``part10`` (no copy of the video):
    the header is parsed up to Pixel Data, the encapsulated items are walked by hand."""
    stream = io.BytesIO(part10)  # shares the bytes' buffer until written to
    header = dcmread(stream, stop_before_pixels=True)
    syntax = header.file_meta.get("TransferSyntaxUID")
    if syntax is None or not syntax.is_little_endian or syntax.is_deflated:
        return Mp4Fragments([memoryview(mp4_bytes(dcmread(io.BytesIO(part10))))])
    view = memoryview(part10)
    position = stream.tell()
    if bytes(view[position : position + 4]) != _PIXEL_DATA:
        raise InvalidDatasetError("the video object has no encapsulated Pixel Data")
    if syntax.is_implicit_VR:
        length, position = _u32(view, position + 4), position + 8
    else:
        length, position = _u32(view, position + 8), position + 12
    if length != _UNDEFINED:
        raise InvalidDatasetError("the video object has no encapsulated Pixel Data")
    items: list[memoryview] = []
    while True:
        tag = bytes(view[position : position + 4])
        if tag == _SEQUENCE_END:
            break
        size = _u32(view, position + 4)
        if tag != _ITEM or position + 8 + size > len(view):
            raise InvalidDatasetError("the video's Pixel Data items are malformed")
        items.append(view[position + 8 : position + 8 + size])
        position += 8 + size
    return Mp4Fragments(items[1:])  # items[0] is the Basic Offset Table


def _u32(view: memoryview, position: int) -> int:
    if position + 4 > len(view):
        raise InvalidDatasetError("the video object ends inside its Pixel Data")
    return int.from_bytes(view[position : position + 4], "little")


# --- clips: what a response reads from ---------------------------------------------------------


class Clip(Protocol):
    """An MP4 that can be read by byte range without holding it whole."""

    length: int

    def read(self, first: int, last: int) -> bytes:
        """Bytes ``first`` to ``last`` inclusive."""

    def chunks(self, first: int, last: int, size: int = CHUNK) -> Iterator[bytes]:
        """Bytes ``first`` to ``last`` inclusive, ``size`` at a time; closes the clip at the end."""

    def close(self) -> None: ...


class MemoryClip:
    """A clip held in memory (small clips, or a large one when there is no disk tier)."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.length = len(data)

    def read(self, first: int, last: int) -> bytes:
        return self.data[first : last + 1]

    def chunks(self, first: int, last: int, size: int = CHUNK) -> Iterator[bytes]:
        for start in range(first, last + 1, size):
            yield self.data[start : min(start + size, last + 1)]

    def close(self) -> None:
        pass


class DiskClip:
    """A clip in an encrypted cache file, held open: eviction may unlink the file meanwhile
    and this reader still sees it (POSIX), so no request is cut short by another's fill."""

    def __init__(self, path: Path, key: bytes, nonce: bytes, length: int) -> None:
        self.length = length
        self._key, self._nonce = key, nonce
        self._fd = os.open(path, os.O_RDONLY)
        self._closer = weakref.finalize(self, os.close, self._fd)

    def read(self, first: int, last: int) -> bytes:
        skip = first % _BLOCK
        start, count = first - skip, last + 1 - first + skip
        data = bytearray()
        while len(data) < count:
            got = os.pread(self._fd, count - len(data), start + len(data))
            if not got:
                raise OSError("video cache file is shorter than its clip")
            data += got
        plain = _ctr(self._key, self._nonce, start).update(bytes(data))
        return plain[skip:]

    def chunks(self, first: int, last: int, size: int = CHUNK) -> Iterator[bytes]:
        try:
            for start in range(first, last + 1, size):
                yield self.read(start, min(start + size, last + 1) - 1)
        finally:
            self.close()

    def close(self) -> None:
        self._closer()


def _ctr(key: bytes, nonce: bytes, offset: int) -> CipherContext:
    """An AES-CTR context positioned at ``offset`` (a multiple of 16) of the file: the
    counter block is the file's initial counter plus the number of blocks before it."""
    counter = (int.from_bytes(nonce, "big") + offset // _BLOCK) % (1 << 128)
    cipher = Cipher(algorithms.AES(key), modes.CTR(counter.to_bytes(_BLOCK, "big")))
    return cipher.decryptor()  # CTR: decrypting and encrypting are the same operation


class ClipReader(io.RawIOBase):
    """A seekable read-only file over a clip, for PyAV (which needs read/seek/tell)."""

    def __init__(self, clip: Clip) -> None:
        self.clip = clip
        self.position = 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self.position

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self.position, io.SEEK_END: self.clip.length}
        self.position = max(0, base[whence] + offset)
        return self.position

    def readinto(self, buffer: memoryview) -> int:  # type: ignore[override]
        count = min(len(buffer), self.clip.length - self.position)
        if count <= 0:
            return 0
        data = self.clip.read(self.position, self.position + count - 1)
        buffer[: len(data)] = data
        self.position += len(data)
        return len(data)


# --- the cache ---------------------------------------------------------------------------------


@dataclass
class _DiskEntry:
    path: Path
    nonce: bytes
    length: int


@dataclass
class _Fill:
    lock: threading.Lock = field(default_factory=threading.Lock)
    users: int = 0


class VideoClips:
    """Extracted MP4s by (SOP Instance UID, blob key): small ones and thumbnails in a memory
    LRU, large ones in an encrypted, bounded disk LRU under ``cache_dir`` (none: large clips
    are served from memory and not kept). Each clip is extracted once even when many
    requests ask for it together: they wait for the first one's fill."""

    def __init__(
        self,
        cache_dir: Path | None = None,
        *,
        memory_bytes: int = 256 * 1024**2,
        memory_clip_bytes: int = 64 * 1024**2,
        disk_bytes: int = 8 * 1024**3,
    ) -> None:
        self.max_bytes = memory_bytes
        self.memory_clip_bytes = min(memory_clip_bytes, memory_bytes)
        self.disk_bytes = disk_bytes
        self.cache_dir = cache_dir
        self.misses = 0
        self._items: OrderedDict[tuple[str, str, str], bytes] = OrderedDict()
        self._size = 0
        self._disk: OrderedDict[ClipKey, _DiskEntry] = OrderedDict()
        self._disk_size = 0
        self._fills: dict[ClipKey, _Fill] = {}
        self._lock = threading.Lock()
        self._key = os.urandom(32)  # only in this process's memory
        self.files_dir: Path | None = None
        self._closer: Callable[[], object] | None = None
        if cache_dir is not None:
            self.files_dir, lock = _claim_directory(cache_dir)
            self._closer = weakref.finalize(self, _release, self.files_dir, lock)

    def close(self) -> None:
        """Delete this cache's files (they are unreadable once the process ends anyway)."""
        if self._closer is not None:
            self._closer()

    # memory tier: any bytes (MP4s, thumbnails) by (uid, blob key, kind)

    def get(self, key: tuple[str, str, str]) -> bytes | None:
        with self._lock:
            value = self._items.get(key)
            if value is not None:
                self._items.move_to_end(key)
            return value

    def put(self, key: tuple[str, str, str], value: bytes) -> None:
        if len(value) > self.max_bytes:
            return
        with self._lock:
            old = self._items.pop(key, None)
            self._size += len(value) - (len(old) if old else 0)
            self._items[key] = value
            while self._size > self.max_bytes:
                _, dropped = self._items.popitem(last=False)
                self._size -= len(dropped)

    @property
    def disk_size(self) -> int:
        """Bytes of the cache files currently indexed."""
        return self._disk_size

    # clips

    def clip(self, sop_uid: str, blob_key: str, load: Callable[[], bytes]) -> Clip:
        """The MP4 of this stored object; ``load`` gives its Part-10 bytes on a miss."""
        key: ClipKey = (sop_uid, blob_key)
        found = self._cached(key)
        if found is not None:
            return found
        with self._filling(key):
            found = self._cached(key)
            if found is not None:
                return found
            with self._lock:
                self.misses += 1
            fragments = mp4_fragments(load())
            if fragments.length <= self.memory_clip_bytes or self.files_dir is None:
                data = fragments.join()
                del fragments  # the Part-10 bytes go with the views
                self.put((*key, "mp4"), data)
                return MemoryClip(data)
            return self._write(key, fragments)

    def _cached(self, key: ClipKey) -> Clip | None:
        data = self.get((*key, "mp4"))
        if data is not None:
            return MemoryClip(data)
        with self._lock:
            entry = self._disk.get(key)
            if entry is None:
                return None
            self._disk.move_to_end(key)
            try:
                return DiskClip(entry.path, self._key, entry.nonce, entry.length)
            except FileNotFoundError:  # removed behind our back: forget it, fill again
                self._disk.pop(key)
                self._disk_size -= entry.length
                return None

    @contextmanager
    def _filling(self, key: ClipKey) -> Iterator[None]:
        with self._lock:
            fill = self._fills.setdefault(key, _Fill())
            fill.users += 1
        try:
            with fill.lock:
                yield
        finally:
            with self._lock:
                fill.users -= 1
                if fill.users == 0:
                    del self._fills[key]

    def _write(self, key: ClipKey, fragments: Mp4Fragments) -> Clip:
        assert self.files_dir is not None
        name = hashlib.sha256("\0".join(key).encode()).hexdigest()
        path = self.files_dir / f"{name}.mp4.enc"
        partial = self.files_dir / f"{name}.{threading.get_ident()}.part"
        nonce = os.urandom(_BLOCK)
        encryptor = _ctr(self._key, nonce, 0)
        length = fragments.length
        try:
            with partial.open("wb") as out:
                for piece in fragments.pieces():
                    out.write(encryptor.update(piece))
                out.write(encryptor.finalize())
            os.replace(partial, path)
        finally:
            with suppress(FileNotFoundError):
                partial.unlink()
        clip = DiskClip(path, self._key, nonce, length)  # opened before any eviction
        with self._lock:
            if length > self.disk_bytes:  # never fits: serve this once from the open file
                path.unlink()
                return clip
            self._disk[key] = _DiskEntry(path, nonce, length)
            self._disk_size += length
            while self._disk_size > self.disk_bytes:
                _, dropped = self._disk.popitem(last=False)
                self._disk_size -= dropped.length
                with suppress(FileNotFoundError):
                    dropped.path.unlink()
        return clip


def _claim_directory(root: Path) -> tuple[Path, int]:
    """A fresh directory of this process's own under ``root``, held by an exclusive lock
    (flock) for the life of the cache, after deleting what earlier processes left: their
    directories whose lock nobody holds any more (a live process sharing the data directory
    keeps its files) and any loose file. ``root/.lock`` makes claiming and clearing one step."""
    root.mkdir(parents=True, exist_ok=True)
    guard = os.open(root / ".lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(guard, fcntl.LOCK_EX)
        for old in root.iterdir():
            if old.name == ".lock":
                continue
            if not old.is_dir() or old.is_symlink():
                with suppress(FileNotFoundError):
                    old.unlink()
            elif _unclaimed(old):
                shutil.rmtree(old, ignore_errors=True)
        own = Path(tempfile.mkdtemp(prefix="process-", dir=root))
        lock = os.open(own / ".lock", os.O_RDWR | os.O_CREAT, 0o600)
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return own, lock
    finally:
        os.close(guard)  # releases the root lock


def _unclaimed(directory: Path) -> bool:
    try:
        lock = os.open(directory / ".lock", os.O_RDWR)
    except FileNotFoundError:
        return True
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False  # another live process's cache
    finally:
        os.close(lock)
    return True


def _release(directory: Path, lock: int) -> None:
    shutil.rmtree(directory, ignore_errors=True)
    os.close(lock)
