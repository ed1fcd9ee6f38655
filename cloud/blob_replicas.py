"""One blob store made of several (two directories, or a directory and a bucket), verified.

Writes go to every replica and count only when all of them hold the blob; reads take the first
replica whose copy is intact, checked against the blob's content address; `repair` puts a good
copy back where one is missing or damaged (the scrub job calls it).
"""

from __future__ import annotations

import hashlib
import logging
import re
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from enum import StrEnum

from cloud.blobstore import BlobDamagedError, BlobStore, check_key
from cloud.errors import ArchiveError, BackendUnavailableError, InstanceNotFoundError

logger = logging.getLogger(__name__)

# cloud.ingest.blob_key_for: objects/<sha[:2]>/<sha[2:4]>/<sha256>.dcm
_CONTENT_ADDRESS = re.compile(r"^objects/([0-9a-f]{2})/([0-9a-f]{2})/(\1\2[0-9a-f]{60})\.dcm$")
_PART10_MARKER = (128, b"DICM")

Verifier = Callable[[str, bytes], bool | None]
"""Judges a copy: True intact, False damaged, None cannot tell (the copy is used as it is)."""


def content_address_verifier(key: str, data: bytes) -> bool | None:
    """Check a copy against the SHA-256 its key names.

    Only content-addressed keys of plaintext Part-10 objects can be checked: for any other key,
    and for bytes that are not a Part-10 object (a blob sealed with a data key, say), the
    answer is None. Pass another verifier to `ReplicatedBlobStore` to check those.
    """
    match = _CONTENT_ADDRESS.match(key)
    if match is None:
        return None
    if hashlib.sha256(data).hexdigest() == match.group(3):
        return True
    offset, marker = _PART10_MARKER
    if data[offset : offset + len(marker)] != marker:
        return None  # not stored as its plaintext (sealed): the address says nothing about it
    return False


class ReplicaState(StrEnum):
    """What one replica holds under a key."""

    GOOD = "good"  # verified against the content address
    UNVERIFIED = "unverified"  # present, but the verifier cannot tell
    MISSING = "missing"
    DAMAGED = "damaged"
    UNREACHABLE = "unreachable"


class ReplicatedBlobStore:
    """Every blob on every replica; reads verified, falling back replica by replica.

    Parameters
    ----------
    stores
        The replicas, in the order reads try them (the first is the primary).
    names
        How logs and `repair` name them; by default each store's ``url`` attribute.
    verify
        Judges a copy read back (default `content_address_verifier`).
    """

    def __init__(
        self,
        stores: Sequence[BlobStore],
        names: Sequence[str] | None = None,
        verify: Verifier = content_address_verifier,
    ) -> None:
        if len(stores) < 2:
            raise ValueError("replication needs at least two blob stores")
        if names is None:
            names = [str(getattr(store, "url", f"replica-{i}")) for i, store in enumerate(stores)]
        if len(names) != len(stores):
            raise ValueError("one name per replica")
        if len(set(names)) != len(names):
            raise ValueError(f"a blob store is named twice among the replicas: {list(names)}")
        self.replicas: tuple[tuple[str, BlobStore], ...] = tuple(zip(names, stores, strict=True))
        self.url = " + ".join(names)
        self._verify = verify
        self._writers = ThreadPoolExecutor(len(stores), thread_name_prefix="blob-replica")

    @property
    def names(self) -> list[str]:
        return [name for name, _ in self.replicas]

    def close(self) -> None:
        self._writers.shutdown(wait=True)
        for _, store in self.replicas:
            close = getattr(store, "close", None)
            if close is not None:
                close()

    # -- writing -------------------------------------------------------------------------

    def put(self, key: str, data: bytes) -> None:
        """Write every replica (in parallel); if one fails, undo the copies this call created
        (never a copy that was there before: under a content address it may be the only one
        an indexed instance has) and raise `BackendUnavailableError`."""
        check_key(key)
        futures = [
            (name, self._writers.submit(_put_one, store, key, data))
            for name, store in self.replicas
        ]
        created, failures = [], []
        for (name, future), (_, store) in zip(futures, self.replicas, strict=True):
            try:
                if future.result():
                    created.append((name, store))
            except Exception as exc:
                failures.append(f"{name}: {_detail(exc)}")
        if not failures:
            return
        for name, store in created:
            try:
                store.delete(key)
            except Exception:
                logger.exception("blob %s: could not undo the copy on replica %s", key, name)
        raise BackendUnavailableError(f"blob {key} not stored: " + "; ".join(failures))

    def delete(self, key: str) -> None:
        """Delete from every replica; raise once all were tried if any could not."""
        failures = []
        for name, store in self.replicas:
            try:
                store.delete(key)
            except Exception as exc:
                failures.append(f"{name}: {_detail(exc)}")
        if failures:
            raise BackendUnavailableError(
                f"blob {key} not deleted everywhere: " + "; ".join(failures)
            )

    # -- reading -------------------------------------------------------------------------

    def get(self, key: str, verify: Verifier | None = None) -> bytes:
        """The first intact copy, in replica order; a damaged one is logged and skipped.

        ``verify`` replaces the store's verifier for this read (e.g. a check that unseals a
        sealed blob, which its content address cannot judge).
        """
        damaged, unreachable = [], []
        for name, store in self.replicas:
            state, data = self._read(name, store, key, verify)
            if data is not None:
                return data
            if state is ReplicaState.DAMAGED:
                damaged.append(name)
            elif state is ReplicaState.UNREACHABLE:
                unreachable.append(name)
        if damaged:
            raise BlobDamagedError(f"every readable copy of blob {key} is damaged: {damaged}")
        if unreachable:  # it may well be on the replica we cannot reach
            raise BackendUnavailableError(f"blob {key}: replicas unreachable: {unreachable}")
        raise InstanceNotFoundError(f"blob {key} is missing from the store")

    def _read(
        self, name: str, store: BlobStore, key: str, verify: Verifier | None = None
    ) -> tuple[ReplicaState, bytes | None]:
        """One replica's copy, judged; the bytes only if they may be served."""
        try:
            data = store.get(key)
        except InstanceNotFoundError:
            return ReplicaState.MISSING, None
        except BlobDamagedError as exc:
            logger.warning("blob %s damaged on replica %s: %s", key, name, exc.detail)
            return ReplicaState.DAMAGED, None
        except Exception as exc:
            logger.warning("blob %s: replica %s unreadable: %s", key, name, _detail(exc))
            return ReplicaState.UNREACHABLE, None
        verdict = (verify or self._verify)(key, data)
        if verdict is False:
            logger.warning(
                "blob %s damaged on replica %s: %d bytes, sha256 %s, fails verification",
                key,
                name,
                len(data),
                hashlib.sha256(data).hexdigest(),
            )
            return ReplicaState.DAMAGED, None
        return (ReplicaState.GOOD if verdict else ReplicaState.UNVERIFIED), data

    def exists(self, key: str) -> bool:
        """Whether any replica holds the blob (a get can then be answered)."""
        unreachable = []
        for name, store in self.replicas:
            try:
                if store.exists(key):
                    return True
            except ArchiveError as exc:
                unreachable.append(f"{name}: {exc.detail}")
        if unreachable:
            raise BackendUnavailableError(f"blob {key}: " + "; ".join(unreachable))
        return False

    def keys(self) -> Iterator[str]:
        """Every key held by any replica, each once (the keys seen are kept in memory)."""
        seen: set[str] = set()
        for _, store in self.replicas:
            for key in store.keys():
                if key not in seen:
                    seen.add(key)
                    yield key

    # -- integrity -----------------------------------------------------------------------

    def inspect(self, key: str, verify: Verifier | None = None) -> dict[str, ReplicaState]:
        """The state of ``key`` on every replica, read and judged by ``verify`` (default: the
        store's verifier)."""
        return {name: self._read(name, store, key, verify)[0] for name, store in self.replicas}

    def repair(self, key: str, verify: Verifier | None = None) -> list[str]:
        """Copy an intact copy onto the replicas that lack the blob or hold a damaged one.

        ``verify`` replaces the store's verifier for this call: a scrub that knows more about
        the blob than its key (a sealed blob's data key and SOP Instance UID, say) passes a
        check that can tell a good copy from a damaged one where the content address cannot.

        Returns the names of the replicas repaired (empty when all were fine). Raises
        `InstanceNotFoundError` if no replica holds the blob, `BlobDamagedError` if no copy
        can be trusted (all damaged, or unverifiable copies that differ), and
        `BackendUnavailableError` if a replica could not be written. Unreachable replicas are
        left alone (logged): their state is unknown.
        """
        states: dict[str, ReplicaState] = {}
        copies: dict[str, bytes] = {}
        for name, store in self.replicas:
            state, data = self._read(name, store, key, verify)
            states[name] = state
            if data is not None:
                copies[name] = data
        source = _trusted_copy(key, states, copies)
        targets = [
            (name, store)
            for name, store in self.replicas
            if states[name] in (ReplicaState.MISSING, ReplicaState.DAMAGED)
        ]
        repaired, failures = [], []
        for name, store in targets:
            try:
                store.put(key, source)
                repaired.append(name)
                logger.info("blob %s repaired on replica %s (was %s)", key, name, states[name])
            except Exception as exc:
                failures.append(f"{name}: {_detail(exc)}")
        if failures:
            raise BackendUnavailableError(f"blob {key} not repaired on: " + "; ".join(failures))
        return repaired


def _trusted_copy(key: str, states: dict[str, ReplicaState], copies: dict[str, bytes]) -> bytes:
    """The copy a repair may spread: a verified one, else unverified ones that all agree."""
    for name, data in copies.items():
        if states[name] is ReplicaState.GOOD:
            return data
    if copies:
        distinct = set(copies.values())
        if len(distinct) == 1:
            return distinct.pop()
        raise BlobDamagedError(
            f"blob {key}: replicas {sorted(copies)} hold different copies and none can be "
            "verified; not repairing"
        )
    if ReplicaState.DAMAGED in states.values():
        raise BlobDamagedError(f"every readable copy of blob {key} is damaged")
    if ReplicaState.UNREACHABLE in states.values():
        raise BackendUnavailableError(f"blob {key}: no reachable replica holds it")
    raise InstanceNotFoundError(f"blob {key} is missing from every replica")


def _put_one(store: BlobStore, key: str, data: bytes) -> bool:
    """Write one replica; tell whether this call created the blob there."""
    existed = store.exists(key)
    store.put(key, data)
    return not existed


def _detail(exc: BaseException) -> str:
    return exc.detail if isinstance(exc, ArchiveError) else f"{type(exc).__name__}: {exc}"
