"""Online expansion: more volumes (directories, buckets) for a tier while the node serves.

A `VolumeSet` is one `BlobStore` made of the store the settings name (the base, the oldest
volume) and the volumes listed in the ``blob_volumes`` table for its tier, which it re-reads
every few seconds, so a volume added by `add_volume` (from the CLI, in another process) is
used by every node within that interval, without a restart.

New blobs go to the most recently added writable volume: an old, full disk stops taking new
objects as soon as a new one is added, and stays readable. Reads try that volume first, then
the others from newest to oldest. Nothing is moved between volumes; a retired volume
(`set_writable` false) is only read and deleted from.
"""

from __future__ import annotations

import logging
import os
import secrets
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import urlparse

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from cloud.blob_replicas import ReplicatedBlobStore
from cloud.blobstore import BlobDamagedError, BlobStore, open_blob_store
from cloud.errors import ArchiveError, BackendUnavailableError, InstanceNotFoundError
from cloud.models import BlobVolume

logger = logging.getLogger(__name__)

TIERS = ("hot", "cold")
REFRESH_SECONDS = 5.0

VolumeRow = tuple[str, bool]  # (url, writable), oldest first
Loader = Callable[[], Sequence[VolumeRow]]
Opener = Callable[[str], BlobStore]


class VolumeError(ArchiveError):
    """A volume cannot be added or changed (bad URL, failed probe, duplicate, unknown)."""

    dimse_status = 0xC211
    http_status = 400
    title = "Volume refused"


def open_volume(url: str) -> BlobStore:
    """Open a volume's store, refusing a local directory that does not exist.

    `LocalBlobStore` creates its root; for a volume that would put blobs on the disk below an
    unmounted mount point, where no one looks for them. A volume's directory is made by the
    operator on the mounted disk, and a missing one is an unreachable volume.
    """
    parsed = urlparse(url)
    if parsed.scheme == "file" and not Path(parsed.path).is_dir():
        raise BackendUnavailableError(f"volume directory {parsed.path} does not exist")
    return open_blob_store(url)


def normalized_url(url: str) -> str:
    """``file://`` URLs with their path resolved (the form `LocalBlobStore.url` has)."""
    parsed = urlparse(url.strip())
    if parsed.scheme == "file":
        if parsed.netloc or not parsed.path.startswith("/"):
            raise VolumeError(f"{url!r}: a local volume is file:///absolute/path")
        return f"file://{Path(parsed.path).resolve()}"
    return url.strip()


class _Unreachable:
    """Stands in for a volume that could not be opened; retried at the next refresh."""

    def __init__(self, url: str, reason: str) -> None:
        self.url = url
        self.reason = reason

    def _fail(self) -> BackendUnavailableError:
        return BackendUnavailableError(f"volume {self.url} unavailable: {self.reason}")

    def put(self, key: str, data: bytes) -> None:  # noqa: ARG002 (BlobStore signature)
        raise self._fail()

    def get(self, key: str) -> bytes:  # noqa: ARG002
        raise self._fail()

    def exists(self, key: str) -> bool:  # noqa: ARG002
        raise self._fail()

    def delete(self, key: str) -> None:  # noqa: ARG002
        raise self._fail()

    def keys(self) -> Iterator[str]:
        raise self._fail()


@dataclass(frozen=True)
class _Layout:
    """One consistent view of the volumes: swapped whole, never edited."""

    write: tuple[str, BlobStore]
    reads: tuple[tuple[str, BlobStore], ...]  # the write target first, then newest to oldest


class VolumeSet:
    """A tier's volumes as one `BlobStore`; safe to share between threads.

    Parameters
    ----------
    base
        The store the settings name; the oldest volume, written only while no volume of the
        table is writable.
    load
        Returns the tier's volumes from the table, oldest first, as (url, writable)
        (`table_loader`).
    opener
        Opens a volume's URL (default `open_volume`). A volume that cannot be opened counts
        as unreachable and is opened again at the next refresh.
    refresh_seconds
        How often ``load`` is called again (on the first use after the interval).
    clock
        Monotonic seconds (tests pass their own).
    """

    def __init__(
        self,
        base: BlobStore,
        load: Loader,
        opener: Opener = open_volume,
        refresh_seconds: float = REFRESH_SECONDS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.base = base
        self.base_name = str(getattr(base, "url", "base"))
        self.url = self.base_name
        self._load = load
        self._opener = opener
        self._refresh_seconds = refresh_seconds
        self._clock = clock
        self._opened: dict[str, BlobStore] = {}  # url -> store, kept across refreshes
        self._refreshing = threading.Lock()
        self._layout = _Layout((self.base_name, base), ((self.base_name, base),))
        self._next_refresh = 0.0
        self.refresh()

    # -- the volume list -----------------------------------------------------------------

    def refresh(self) -> bool:
        """Re-read the volume list now; True if it was read (else the old one is kept)."""
        with self._refreshing:
            return self._refresh_locked()

    def _refresh_locked(self) -> bool:
        self._next_refresh = self._clock() + self._refresh_seconds
        try:
            rows = [(normalized_url(url), bool(writable)) for url, writable in self._load()]
        except Exception:
            logger.exception("could not read the volume list; keeping the previous one")
            return False
        volumes = [(self.base_name, self.base, True)]
        for url, writable in rows:
            if url == self.base_name:  # the base listed in the table: only its flag counts
                volumes[0] = (url, self.base, writable)
                continue
            volumes.append((url, self._open(url), writable))
        writers = [(url, store) for url, store, writable in volumes if writable]
        write = writers[-1] if writers else (self.base_name, self.base)
        newest_first = [(url, store) for url, store, _ in reversed(volumes)]
        reads = (write, *[entry for entry in newest_first if entry[0] != write[0]])
        if self._layout.write[0] != write[0]:
            logger.info("new blobs go to volume %s (was %s)", write[0], self._layout.write[0])
        self._layout = _Layout(write, reads)
        return True

    def _open(self, url: str) -> BlobStore:
        store = self._opened.get(url)
        if store is not None and not isinstance(store, _Unreachable):
            return store
        try:
            store = self._opener(url)
        except Exception as exc:
            reason = exc.detail if isinstance(exc, ArchiveError) else f"{exc}"
            if not isinstance(self._opened.get(url), _Unreachable):
                logger.error("volume %s cannot be opened: %s", url, reason)
            store = _Unreachable(url, reason)
        self._opened[url] = store
        return store

    def _current(self) -> _Layout:
        if self._clock() >= self._next_refresh and self._refreshing.acquire(blocking=False):
            # One thread refreshes; the others go on with the list they have.
            try:
                if self._clock() >= self._next_refresh:
                    self._refresh_locked()
            finally:
                self._refreshing.release()
        return self._layout

    def volumes(self) -> list[tuple[str, BlobStore]]:
        """The volumes as (name, store), in the order reads try them (the write target
        first); an unreachable one is there too, raising `BackendUnavailableError`."""
        return list(self._current().reads)

    @property
    def writing_to(self) -> str:
        """The name (URL) of the volume new blobs go to."""
        return self._current().write[0]

    def close(self) -> None:
        for store in (self.base, *self._opened.values()):
            close = getattr(store, "close", None)
            if close is not None:
                close()

    # -- BlobStore -----------------------------------------------------------------------

    def put(self, key: str, data: bytes) -> None:
        """Write to the newest writable volume (never a fallback: a full or missing new
        volume is an error, not a reason to fill an old disk)."""
        self._current().write[1].put(key, data)

    def get(self, key: str) -> bytes:
        """The blob from the first volume that has it; `InstanceNotFoundError` only if every
        volume answered that it has not."""
        unreachable, damaged = [], []
        for name, store in self._current().reads:
            try:
                return store.get(key)
            except InstanceNotFoundError:
                continue
            except BlobDamagedError as exc:
                damaged.append(f"{name}: {exc.detail}")
            except ArchiveError as exc:
                logger.warning("blob %s: volume %s unreadable: %s", key, name, exc.detail)
                unreachable.append(f"{name}: {exc.detail}")
        if damaged:
            raise BlobDamagedError(f"blob {key} damaged on " + "; ".join(damaged))
        if unreachable:  # it may well be on the volume we cannot reach
            raise BackendUnavailableError(f"blob {key}: " + "; ".join(unreachable))
        raise InstanceNotFoundError(f"blob {key} is missing from the store")

    def exists(self, key: str) -> bool:
        unreachable = []
        for name, store in self._current().reads:
            try:
                if store.exists(key):
                    return True
            except ArchiveError as exc:
                unreachable.append(f"{name}: {exc.detail}")
        if unreachable:
            raise BackendUnavailableError(f"blob {key}: " + "; ".join(unreachable))
        return False

    def delete(self, key: str) -> None:
        """Delete from every volume; raise once all were tried if any could not."""
        failures = []
        for name, store in self._current().reads:
            try:
                store.delete(key)
            except Exception as exc:
                detail = exc.detail if isinstance(exc, ArchiveError) else f"{exc}"
                failures.append(f"{name}: {detail}")
        if failures:
            raise BackendUnavailableError(
                f"blob {key} not deleted everywhere: " + "; ".join(failures)
            )

    def keys(self) -> Iterator[str]:
        """Every key of every volume, each once (the keys seen are kept in memory)."""
        seen: set[str] = set()
        for _, store in self._current().reads:
            for key in store.keys():
                if key not in seen:
                    seen.add(key)
                    yield key


# --- the blob_volumes table ---------------------------------------------------------------


@dataclass(frozen=True)
class VolumeInfo:
    """A row of the ``blob_volumes`` table."""

    pk: int
    url: str
    tier: str
    writable: bool
    added_at: datetime
    added_by: str


def _info(row: BlobVolume) -> VolumeInfo:
    return VolumeInfo(row.pk, row.url, row.tier, row.writable, row.added_at, row.added_by)


def table_loader(sessions: sessionmaker[Session], tier: str) -> Loader:
    """The ``load`` of a `VolumeSet` for ``tier``: its volumes, oldest first."""
    _check_tier(tier)

    def load() -> list[VolumeRow]:
        with sessions() as session:
            rows = session.execute(
                select(BlobVolume.url, BlobVolume.writable)
                .where(BlobVolume.tier == tier)
                .order_by(BlobVolume.added_at, BlobVolume.pk)
            )
            return [(url, bool(writable)) for url, writable in rows]

    return load


def list_volumes(sessions: sessionmaker[Session], tier: str | None = None) -> list[VolumeInfo]:
    """The volumes added online (of ``tier``, or all), oldest first."""
    statement = select(BlobVolume).order_by(BlobVolume.added_at, BlobVolume.pk)
    if tier is not None:
        statement = statement.where(BlobVolume.tier == _check_tier(tier))
    with sessions() as session:
        return [_info(row) for row in session.scalars(statement)]


def add_volume(
    sessions: sessionmaker[Session],
    url: str,
    tier: str,
    added_by: str,
    *,
    in_use: Iterable[str] = (),
    opener: Opener = open_volume,
) -> VolumeInfo:
    """Add a volume to ``tier``; it takes the tier's new blobs within a refresh interval.

    The URL is checked first: it must be new (not in the table, not one of ``in_use``, the
    stores the settings name) and, for a directory, neither inside nor around another local
    volume (the one would list the other's blobs as its own). Then a probe blob is written,
    read back and deleted.

    Raises
    ------
    VolumeError
        With the reason, if any check fails; nothing is recorded then.
    """
    _check_tier(tier)
    url = normalized_url(url)
    known = [volume.url for volume in list_volumes(sessions)]
    others = [*known, *(normalized_url(other) for other in in_use)]
    if url in others:
        raise VolumeError(f"volume {url} is already in use")
    _refuse_nested(url, others)
    probe(url, opener)
    now = datetime.now(UTC)
    row = BlobVolume(url=url, tier=tier, writable=True, added_at=now, added_by=added_by[:128])
    with sessions() as session:
        session.add(row)
        try:
            session.commit()
        except IntegrityError:
            raise VolumeError(f"volume {url} is already in use") from None
        info = _info(row)
    logger.info("volume %s added to the %s tier by %s", url, tier, added_by)
    return info


def set_writable(sessions: sessionmaker[Session], url: str, writable: bool) -> VolumeInfo:
    """Let a volume take new blobs again, or retire it (it stays readable)."""
    url = normalized_url(url)
    with sessions() as session:
        row = session.scalar(select(BlobVolume).where(BlobVolume.url == url))
        if row is None:
            raise VolumeError(f"{url} is not a volume added online (see `lifecycle volumes`)")
        row.writable = writable
        session.commit()
        info = _info(row)
    logger.info("volume %s %s", url, "takes new blobs" if writable else "retired from writes")
    return info


def probe(url: str, opener: Opener = open_volume) -> None:
    """Write, read back and delete a probe blob on ``url``; `VolumeError` if any step fails."""
    key = f"volume-{secrets.token_hex(8)}.probe"
    payload = secrets.token_bytes(64)
    try:
        store = opener(url)
    except (ArchiveError, ValueError, OSError) as exc:
        raise VolumeError(f"volume {url} cannot be opened: {_detail(exc)}") from exc
    try:
        store.put(key, payload)
        if store.get(key) != payload:
            raise VolumeError(f"volume {url} returned other bytes than were written")
        store.delete(key)
        if store.exists(key):
            raise VolumeError(f"volume {url} still holds a deleted blob")
    except VolumeError:
        raise
    except (ArchiveError, ValueError, OSError) as exc:
        raise VolumeError(f"volume {url} failed its probe: {_detail(exc)}") from exc
    finally:
        close = getattr(store, "close", None)
        if close is not None:
            close()


def store_urls(store: BlobStore) -> list[str]:
    """The URL of every directory or bucket behind ``store`` (its replicas, its volumes)."""
    if isinstance(store, VolumeSet):
        inner = [store.base, *(volume for _, volume in store.volumes())]
        return list(dict.fromkeys(url for part in inner for url in store_urls(part)))
    if isinstance(store, ReplicatedBlobStore):
        return [url for _, replica in store.replicas for url in store_urls(replica)]
    url = getattr(store, "url", None)
    return [str(url)] if url else []


def local_path(url: str) -> Path | None:
    """The directory of a ``file://`` volume, else None."""
    parsed = urlparse(url)
    return Path(parsed.path) if parsed.scheme == "file" else None


def same_disk_as(url: str, others: Iterable[str]) -> list[str]:
    """The local volumes among ``others`` on the same filesystem as ``url`` (adding those
    adds no space)."""
    path = local_path(url)
    if path is None or not path.is_dir():
        return []
    device = os.stat(path).st_dev
    found = []
    for other in others:
        other_path = local_path(other)
        if other_path is not None and other_path.is_dir() and os.stat(other_path).st_dev == device:
            found.append(other)
    return found


def _refuse_nested(url: str, others: Iterable[str]) -> None:
    path = local_path(url)
    if path is None:
        return
    for other in others:
        other_path = local_path(other)
        if other_path is None:
            continue
        if path.is_relative_to(other_path) or other_path.is_relative_to(path):
            raise VolumeError(f"volume {url} overlaps the volume {other}")


def _check_tier(tier: str) -> str:
    if tier not in TIERS:
        raise VolumeError(f"unknown tier {tier!r}: one of {', '.join(TIERS)}")
    return tier


def _detail(exc: BaseException) -> str:
    return exc.detail if isinstance(exc, ArchiveError) else f"{type(exc).__name__}: {exc}"
