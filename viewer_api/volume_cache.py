"""Assembled volumes by series: an in-process LRU bounded by bytes, or Redis shared by processes.

A key names one series *as it is now*: its Series Instance UID and a digest of its SOP Instance
UIDs (see `volume_key`), so an instance arriving later makes a new key and the stale volume is
never served; it simply ages out.

`Volumes` adds what every caller needs on top of a cache: concurrent first requests for one key
assemble the volume once, and a series that cannot form a volume is remembered with its reason
instead of being read again on every request.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterable
from typing import Any, Protocol

import numpy as np
import redis

from mpr.volume import Volume
from mpr.window import Window
from viewer_api.etag import instances_digest

logger = logging.getLogger(__name__)

DEFAULT_MAX_BYTES = 1024**3
REDIS_TTL_SECONDS = 3600
# Redis refuses values over 512 MB; volumes travel in pieces well below that.
REDIS_CHUNK_BYTES = 32 * 1024**2
_FORMAT = 1


def volume_key(series_instance_uid: str, sop_instance_uids: Iterable[str]) -> str:
    """The cache key of a series with exactly these instances."""
    return f"{series_instance_uid}:{instances_digest(sop_instance_uids)}"


class VolumeCache(Protocol):
    """Where assembled volumes are kept between requests."""

    def get(self, key: str) -> Volume | None: ...

    def put(self, key: str, volume: Volume) -> None: ...


class MemoryVolumeCache:
    """Least-recently-used volumes of this process, bounded by the bytes of their voxels."""

    def __init__(self, max_bytes: int = DEFAULT_MAX_BYTES) -> None:
        if max_bytes < 0:
            raise ValueError(f"max_bytes must be >= 0, got {max_bytes}")
        self.max_bytes = max_bytes
        self._entries: OrderedDict[str, Volume] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()

    @property
    def nbytes(self) -> int:
        """Voxel bytes held now."""
        return self._bytes

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, key: object) -> bool:
        return key in self._entries

    def get(self, key: str) -> Volume | None:
        with self._lock:
            volume = self._entries.get(key)
            if volume is not None:
                self._entries.move_to_end(key)
            return volume

    def put(self, key: str, volume: Volume) -> None:
        size = int(volume.voxels.nbytes)
        with self._lock:
            old = self._entries.pop(key, None)
            if old is not None:
                self._bytes -= int(old.voxels.nbytes)
            if size > self.max_bytes:
                return  # larger than the whole cache: keeping it would evict everything else
            self._entries[key] = volume
            self._bytes += size
            while self._bytes > self.max_bytes:
                _, evicted = self._entries.popitem(last=False)
                self._bytes -= int(evicted.voxels.nbytes)


def _encode(value: Any) -> Any:
    """A Volume attribute as JSON, keeping the types that JSON would lose."""
    if isinstance(value, np.ndarray):
        return {"$ndarray": value.tolist(), "dtype": str(value.dtype)}
    if isinstance(value, Window):
        return {"$window": [value.center, value.width, value.function]}
    if isinstance(value, tuple):
        return {"$tuple": [_encode(v) for v in value]}
    if isinstance(value, np.generic):
        return value.item()
    if value is None or isinstance(value, str | int | float | bool):
        return value
    raise TypeError(f"cannot store a {type(value).__name__} in the volume cache")


def _decode(value: Any) -> Any:
    if isinstance(value, dict):
        if "$ndarray" in value:
            return np.asarray(value["$ndarray"], dtype=value["dtype"])
        if "$window" in value:
            center, width, function = value["$window"]
            return Window(center, width, function)
        if "$tuple" in value:
            return tuple(_decode(v) for v in value["$tuple"])
    return value


class RedisVolumeCache:
    """Volumes in Redis for every process of the node, with a small LRU in front.

    Each volume is a metadata key (JSON: shape, dtype and the other Volume attributes) and
    the raw voxel bytes in chunks, written in one transaction and expiring after
    ``ttl_seconds`` (refreshed on every read). Redis being down or slow degrades to a miss,
    never to a failed request.
    """

    def __init__(
        self,
        url: str,
        *,
        ttl_seconds: int = REDIS_TTL_SECONDS,
        front_bytes: int = DEFAULT_MAX_BYTES // 4,
        prefix: str = "imaging-cloud:volume:",
        chunk_bytes: int = REDIS_CHUNK_BYTES,
    ) -> None:
        self.client: redis.Redis = redis.Redis.from_url(
            url, socket_timeout=30, socket_connect_timeout=5
        )
        self.ttl_seconds = ttl_seconds
        self.front = MemoryVolumeCache(front_bytes)
        self.prefix = prefix
        self.chunk_bytes = chunk_bytes

    def _meta_key(self, key: str) -> str:
        return f"{self.prefix}{key}:meta"

    def _chunk_keys(self, key: str, count: int) -> list[str]:
        return [f"{self.prefix}{key}:voxels:{i}" for i in range(count)]

    def get(self, key: str) -> Volume | None:
        volume = self.front.get(key)
        if volume is not None:
            return volume
        try:
            volume = self._fetch(key)
        except (redis.RedisError, ValueError, TypeError, KeyError) as exc:
            logger.warning("volume cache read of %s failed: %s", key, exc)
            return None
        if volume is not None:
            self.front.put(key, volume)
        return volume

    def _fetch(self, key: str) -> Volume | None:
        raw = self.client.get(self._meta_key(key))
        if raw is None:
            return None
        meta = json.loads(raw)
        if meta.get("format") != _FORMAT:
            return None
        chunk_keys = self._chunk_keys(key, int(meta["chunks"]))
        chunks = self.client.mget(chunk_keys) if chunk_keys else []
        present = [chunk for chunk in chunks if isinstance(chunk, bytes)]
        if len(present) != len(chunks):
            return None  # expired between the two reads
        pipe = self.client.pipeline(transaction=False)
        for name in [self._meta_key(key), *chunk_keys]:
            pipe.expire(name, self.ttl_seconds)
        pipe.execute()
        voxels = np.frombuffer(b"".join(present), dtype=np.dtype(meta["dtype"]))
        voxels = voxels.reshape(tuple(meta["shape"]))
        fields = {name: _decode(value) for name, value in meta["fields"].items()}
        return Volume(voxels=voxels, **fields)

    def put(self, key: str, volume: Volume) -> None:
        self.front.put(key, volume)
        voxels = np.ascontiguousarray(volume.voxels)
        data = voxels.reshape(-1).view(np.uint8)
        chunks = [data[i : i + self.chunk_bytes] for i in range(0, data.size, self.chunk_bytes)]
        fields = {
            f.name: _encode(getattr(volume, f.name))
            for f in dataclasses.fields(volume)
            if f.name != "voxels"
        }
        meta = {
            "format": _FORMAT,
            "dtype": voxels.dtype.str,
            "shape": list(voxels.shape),
            "chunks": len(chunks),
            "fields": fields,
        }
        try:
            pipe = self.client.pipeline(transaction=True)
            for name, chunk in zip(self._chunk_keys(key, len(chunks)), chunks, strict=True):
                pipe.set(name, chunk.tobytes(), ex=self.ttl_seconds)
            pipe.set(self._meta_key(key), json.dumps(meta), ex=self.ttl_seconds)
            pipe.execute()
        except redis.RedisError as exc:
            logger.warning("volume cache write of %s failed: %s", key, exc)


def open_volume_cache(max_bytes: int = DEFAULT_MAX_BYTES, url: str = "") -> VolumeCache:
    """Redis when ``url`` (redis://...) is given, else an in-process LRU of ``max_bytes``."""
    if url:
        return RedisVolumeCache(url, front_bytes=max_bytes // 4)
    return MemoryVolumeCache(max_bytes)


class Volumes:
    """A volume cache with one assembly per key at a time and remembered failures."""

    def __init__(
        self,
        cache: VolumeCache,
        *,
        remember: tuple[type[Exception], ...] = (ValueError,),
        max_failures: int = 1024,
    ) -> None:
        self.cache = cache
        self._remember = remember
        self._max_failures = max_failures
        self._failures: OrderedDict[str, Exception] = OrderedDict()
        self._locks: dict[str, tuple[threading.Lock, int]] = {}
        self._guard = threading.Lock()

    def failure(self, key: str) -> Exception | None:
        """The remembered reason this key could not be built, if any."""
        with self._guard:
            return self._failures.get(key)

    def get_or_build(self, key: str, build: Callable[[], Volume]) -> Volume:
        """The cached volume of ``key``, built (once, however many callers wait) on a miss.

        Raises what ``build`` raises; exceptions of the ``remember`` types are raised again for
        the same key without calling ``build``.
        """
        volume = self.cache.get(key)
        if volume is not None:
            return volume
        lock = self._acquire(key)
        try:
            with lock:
                volume = self.cache.get(key)  # built by whoever held the lock before us
                if volume is not None:
                    return volume
                known = self.failure(key)
                if known is not None:
                    raise type(known)(*known.args)
                try:
                    volume = build()
                except self._remember as exc:
                    with self._guard:
                        self._failures[key] = exc
                        while len(self._failures) > self._max_failures:
                            self._failures.popitem(last=False)
                    raise
                self.cache.put(key, volume)
                return volume
        finally:
            self._release(key)

    def _acquire(self, key: str) -> threading.Lock:
        with self._guard:
            lock, users = self._locks.get(key, (threading.Lock(), 0))
            self._locks[key] = (lock, users + 1)
            return lock

    def _release(self, key: str) -> None:
        with self._guard:
            lock, users = self._locks[key]
            if users <= 1:
                del self._locks[key]
            else:
                self._locks[key] = (lock, users - 1)
