"""The study data keys: one random 256-bit key per study, kept only wrapped by a KEK.

A key is made when the first instance of its study is sealed, and cached unwrapped in memory
(bounded LRU, entries expire) because every image read needs it. `StudyKeys.destroy` is the
crypto-shredding hook: the wrapped key is erased and a tombstone kept, so the study's blobs,
wherever copies of them are, can never be read again and the study is never re-created.
`StudyKeys.rewrap` moves every key to the current KEK after a rotation.

In a node of several processes, each caches keys for up to ``cache_seconds``; a key destroyed
by one process is refused by the others within that time (and at once by this one).
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import delete, func, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session, sessionmaker

from cloud.crypto import KeyDestroyedError, KeyEncryptionKeys, SealedBlobError, new_data_key
from cloud.models import Instance, InstanceMetadata, Series, Study, StudyKey

logger = logging.getLogger(__name__)

Progress = Callable[[int, int], None]  # (done, total)


@dataclass(frozen=True)
class RewrapReport:
    current_kek_id: str
    rewrapped: int


@dataclass(frozen=True)
class KeyStatus:
    current_kek_id: str
    kek_ids: list[str]  # every KEK still held, oldest first
    keys_by_kek: dict[str, int]  # live (not destroyed) study keys per KEK id
    destroyed: int
    instances_by_encryption: dict[str, int] = field(default_factory=dict)

    @property
    def unused_old_keks(self) -> list[str]:
        return [k for k in self.kek_ids if k != self.current_kek_id and not self.keys_by_kek.get(k)]


class _KeyCache:
    """Study UID -> unwrapped data key, least recently used out, each entry for ``seconds``."""

    def __init__(self, size: int, seconds: float) -> None:
        self._items: OrderedDict[str, tuple[float, bytes]] = OrderedDict()
        self._lock = threading.Lock()
        self._size, self._seconds = size, seconds

    def get(self, study_uid: str) -> bytes | None:
        with self._lock:
            item = self._items.get(study_uid)
            if item is None:
                return None
            if item[0] < time.monotonic():
                del self._items[study_uid]
                return None
            self._items.move_to_end(study_uid)
            return item[1]

    def put(self, study_uid: str, key: bytes) -> None:
        with self._lock:
            self._items[study_uid] = (time.monotonic() + self._seconds, key)
            self._items.move_to_end(study_uid)
            while len(self._items) > self._size:
                self._items.popitem(last=False)

    def drop(self, study_uid: str) -> None:
        with self._lock:
            self._items.pop(study_uid, None)

    def clear(self) -> None:
        with self._lock:
            self._items.clear()


class StudyKeys:
    """The `study_keys` table and the KEKs its keys are wrapped with; safe between threads."""

    def __init__(
        self,
        sessions: sessionmaker[Session],
        keks: KeyEncryptionKeys,
        *,
        cache_size: int = 4096,
        cache_seconds: float = 60.0,
    ) -> None:
        self._sessions = sessions
        self.keks = keks
        self._cache = _KeyCache(cache_size, cache_seconds)
        self._live = _KeyCache(cache_size, cache_seconds)  # studies known not destroyed

    def data_key(self, study_instance_uid: str, *, create: bool = False) -> bytes:
        """The study's data key, made (when ``create``) for its first sealed instance.

        Raises `KeyDestroyedError` if the key was destroyed, `SealedBlobError` if there is
        none and ``create`` is false (sealed blobs without a key: the index is damaged).
        """
        cached = self._cache.get(study_instance_uid)
        if cached is not None:
            return cached
        with self._sessions() as session:
            row = session.get(StudyKey, study_instance_uid)
            if row is None and create:
                row = self._create(session, study_instance_uid)
            if row is None:
                raise SealedBlobError(f"study {study_instance_uid} has no data key")
            kek_id, wrapped = row.kek_id, row.wrapped_key
        if wrapped is None:
            raise _destroyed(study_instance_uid)
        key = self.keks.unwrap(kek_id, wrapped)
        self._cache.put(study_instance_uid, key)
        return key

    def check_not_destroyed(self, study_instance_uid: str) -> None:
        """Refuse (`KeyDestroyedError`) a study whose key was destroyed, keyed or not."""
        if self._cache.get(study_instance_uid) is not None:
            return
        if self._live.get(study_instance_uid) is not None:
            return
        with self._sessions() as session:
            destroyed = session.scalar(
                select(StudyKey.destroyed_at).where(
                    StudyKey.study_instance_uid == study_instance_uid
                )
            )
        if destroyed is not None:
            raise _destroyed(study_instance_uid)
        self._live.put(study_instance_uid, b"")

    def _create(self, session: Session, study_instance_uid: str) -> StudyKey:
        key = new_data_key()
        kek_id, wrapped = self.keks.wrap(key)
        now = datetime.now(UTC)
        values = {
            "study_instance_uid": study_instance_uid,
            "kek_id": kek_id,
            "wrapped_key": wrapped,
            "created_at": now,
        }
        _insert_ignore(session, values)
        session.commit()
        # A rotation may have made another KEK current between our wrap and our commit, and
        # its re-wrap pass may already have passed: move our key ourselves, so the old KEK
        # can be retired safely. (A concurrent first instance's key may have won the insert.)
        current = self.keks.current_id()
        if current != kek_id:
            new_kek, rewrapped = self.keks.wrap(key)
            session.execute(
                update(StudyKey)
                .where(
                    StudyKey.study_instance_uid == study_instance_uid,
                    StudyKey.kek_id == kek_id,
                    StudyKey.wrapped_key == wrapped,
                )
                .values(kek_id=new_kek, wrapped_key=rewrapped, rewrapped_at=now)
            )
            session.commit()
        row = session.get(StudyKey, study_instance_uid, populate_existing=True)
        if row is None:
            raise SealedBlobError(f"data key of study {study_instance_uid} vanished")
        return row

    def destroy(self, study_instance_uid: str) -> bool:
        """Crypto-shred a study: erase its wrapped data key, keep a tombstone, drop the cached
        metadata of its instances. True if a live key was destroyed; False if the study had
        no key (unsealed data: deleting its blobs is what destroys it) or it was destroyed
        already. Afterwards reads raise `KeyDestroyedError` and ingest refuses the study."""
        now = datetime.now(UTC)
        with self._sessions() as session:
            tombstone = {
                "study_instance_uid": study_instance_uid,
                "kek_id": "",
                "wrapped_key": None,
                "created_at": now,
                "destroyed_at": now,
            }
            destroyed = False
            if not _insert_ignore(session, tombstone):  # a key (or tombstone) exists
                row = session.get(StudyKey, study_instance_uid, with_for_update=True)
                if row is not None:
                    destroyed = row.wrapped_key is not None
                    row.wrapped_key = None
                    row.destroyed_at = row.destroyed_at or now
            instances = (
                select(Instance.pk)
                .join(Series, Instance.series_pk == Series.pk)
                .join(Study, Series.study_pk == Study.pk)
                .where(Study.study_instance_uid == study_instance_uid)
            )
            # The DICOM JSON cache is a plaintext copy of the objects' headers.
            session.execute(
                delete(InstanceMetadata).where(InstanceMetadata.instance_pk.in_(instances))
            )
            session.commit()
        self._cache.drop(study_instance_uid)
        self._live.drop(study_instance_uid)
        logger.info(
            "study data key destroyed",
            extra={"study_instance_uid": study_instance_uid, "had_key": destroyed},
        )
        return destroyed

    def is_destroyed(self, study_instance_uid: str) -> bool:
        with self._sessions() as session:
            return (
                session.scalar(
                    select(StudyKey.destroyed_at).where(
                        StudyKey.study_instance_uid == study_instance_uid
                    )
                )
                is not None
            )

    def rewrap(self, batch_size: int = 500, progress: Progress | None = None) -> RewrapReport:
        """Re-wrap every live key not under the current KEK with it, a batch per transaction.

        Safe to interrupt and to run again: what is left is still under its old KEK, which
        stays until `retire_unused` finds no key using it. No blob is rewritten.
        """
        total = self._count_not_under(self.keks.current_id())
        done = 0
        if progress:
            progress(done, total)
        while True:
            current = self.keks.current_id()
            with self._sessions() as session:
                rows = session.execute(
                    select(StudyKey.study_instance_uid, StudyKey.kek_id, StudyKey.wrapped_key)
                    .where(StudyKey.kek_id != current, StudyKey.wrapped_key.is_not(None))
                    .order_by(StudyKey.study_instance_uid)
                    .limit(batch_size)
                ).all()
                if not rows:
                    break
                now = datetime.now(UTC)
                for study_uid, old_kek, wrapped in rows:
                    if wrapped is None:  # the query excludes them; for the type checker
                        continue
                    new_kek, rewrapped = self.keks.wrap(self.keks.unwrap(old_kek, wrapped))
                    session.execute(
                        update(StudyKey)
                        .where(
                            StudyKey.study_instance_uid == study_uid,
                            StudyKey.kek_id == old_kek,
                            StudyKey.wrapped_key.is_not(None),  # not destroyed meanwhile
                        )
                        .values(kek_id=new_kek, wrapped_key=rewrapped, rewrapped_at=now)
                    )
                session.commit()
            done += len(rows)
            if progress:
                progress(done, max(total, done))
        return RewrapReport(self.keks.current_id(), done)

    def retire_unused(
        self, needed_elsewhere: Mapping[str, int] | None = None
    ) -> tuple[list[str], dict[str, int]]:
        """Destroy every old KEK no live key is wrapped with: (retired ids, ids still in use
        with their key counts). ``needed_elsewhere`` are KEKs something else still needs
        (kept index backups: `cloud.index_backup.IndexBackups.kek_ids`), with a count."""
        current = self.keks.current_id()
        retired: list[str] = []
        in_use: dict[str, int] = {}
        for kek_id in self.keks.known_ids():
            if kek_id == current:
                continue
            using = self._count_under(kek_id) + (needed_elsewhere or {}).get(kek_id, 0)
            if using:
                in_use[kek_id] = using
                continue
            self.keks.retire(kek_id)
            retired.append(kek_id)
        return retired, in_use

    def status(self) -> KeyStatus:
        with self._sessions() as session:
            by_kek = session.execute(
                select(StudyKey.kek_id, func.count())
                .where(StudyKey.wrapped_key.is_not(None))
                .group_by(StudyKey.kek_id)
            ).all()
            destroyed = session.scalar(
                select(func.count()).select_from(StudyKey).where(StudyKey.wrapped_key.is_(None))
            )
            by_encryption = session.execute(
                select(Instance.encryption, func.count()).group_by(Instance.encryption)
            ).all()
        return KeyStatus(
            current_kek_id=self.keks.current_id(),
            kek_ids=self.keks.known_ids(),
            keys_by_kek={str(k): int(n) for k, n in by_kek},
            destroyed=int(destroyed or 0),
            instances_by_encryption={str(k): int(n) for k, n in by_encryption},
        )

    def forget_cached(self) -> None:
        self._cache.clear()
        self._live.clear()

    def _count_not_under(self, kek_id: str) -> int:
        with self._sessions() as session:
            return int(
                session.scalar(
                    select(func.count())
                    .select_from(StudyKey)
                    .where(StudyKey.kek_id != kek_id, StudyKey.wrapped_key.is_not(None))
                )
                or 0
            )

    def _count_under(self, kek_id: str) -> int:
        with self._sessions() as session:
            return int(
                session.scalar(
                    select(func.count())
                    .select_from(StudyKey)
                    .where(StudyKey.kek_id == kek_id, StudyKey.wrapped_key.is_not(None))
                )
                or 0
            )


def _insert_ignore(session: Session, values: dict[str, Any]) -> bool:
    """INSERT a study_keys row unless its study has one; whether it was inserted."""
    dialect: Any = postgresql if session.get_bind().dialect.name == "postgresql" else sqlite
    statement = dialect.insert(StudyKey).values(**values).on_conflict_do_nothing()
    # RETURNING, not rowcount: psycopg reports -1 for INSERT .. ON CONFLICT DO NOTHING.
    inserted = session.execute(statement.returning(StudyKey.study_instance_uid)).scalar()
    return inserted is not None


def _destroyed(study_instance_uid: str) -> KeyDestroyedError:
    return KeyDestroyedError(
        f"study {study_instance_uid} was destroyed (its data key was erased); "
        "its objects cannot be read or added to"
    )
