"""Hot and cold tiers: series not read for a while move to the cold store as one bundle each.

Hot = read (or received) within ``cold_after`` (a year by default, Chongqing spec); cold =
older. `Tiering.tier_series` packs a series into a `cloud.cold_bundle` (zstd, sealed with the
study key when its objects are), stores it, checks the stored copy, marks the instances cold in
one transaction and only then deletes their hot blobs. `Tiering.restore_series` is the reverse,
every object checked against the index's SHA-256 before its hot blob is written, so a restore
is byte-exact or fails. Access statistics (`SeriesTier.last_access_at`) are written by
`AccessTracker` when a series is located for reading, at most once an hour per series and
process, so the policy follows real use at negligible cost.
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import exists, func, select, update
from sqlalchemy.exc import IntegrityError, OperationalError
from sqlalchemy.orm import Session, aliased, sessionmaker

from cloud.blobstore import BlobStore
from cloud.cold_bundle import BundleDamagedError, bundle_key, pack, unpack
from cloud.crypto import AES256GCM, seal, unseal
from cloud.errors import ArchiveError, InstanceNotFoundError
from cloud.models import Instance, Series, SeriesTier, Study
from cloud.study_keys import StudyKeys

logger = logging.getLogger(__name__)

HOT, COLD = "hot", "cold"
Progress = Callable[[int, int], None]


class TieringError(ArchiveError):
    """A series could not be moved between tiers; nothing was lost (its old tier is intact)."""

    http_status = 500
    title = "Tiering failed"


@dataclass(frozen=True)
class DueSeries:
    series_pk: int
    study_instance_uid: str
    series_instance_uid: str
    last_access_at: datetime


@dataclass(frozen=True)
class Moved:
    """One series moved between tiers."""

    study_instance_uid: str
    series_instance_uid: str
    instances: int
    plain_bytes: int
    cold_bytes: int
    seconds: float

    def as_dict(self) -> dict[str, Any]:
        return {
            "study": self.study_instance_uid,
            "series": self.series_instance_uid,
            "instances": self.instances,
            "plainBytes": self.plain_bytes,
            "coldBytes": self.cold_bytes,
            "seconds": round(self.seconds, 3),
        }


@dataclass(frozen=True)
class _Member:
    pk: int
    sop_instance_uid: str
    blob_key: str
    encryption: str
    sha256: str
    size_bytes: int


class AccessTracker:
    """Records that series were read: one row update per series and ``interval`` per process."""

    def __init__(self, sessions: sessionmaker[Session], interval_seconds: float = 3600.0) -> None:
        self._sessions = sessions
        self._interval = interval_seconds
        self._written: dict[int, float] = {}
        self._lock = threading.Lock()

    def touch(self, series_pks: set[int]) -> None:
        now = time.monotonic()
        with self._lock:
            due = [pk for pk in series_pks if now - self._written.get(pk, -1e18) >= self._interval]
            for pk in due:
                self._written[pk] = now
        if due:
            try:
                record_access(self._sessions, due)
            except OperationalError:  # statistics must never fail a read
                logger.warning("could not record series access", exc_info=True)


def record_access(
    sessions: sessionmaker[Session], series_pks: list[int], at: datetime | None = None
) -> None:
    """Set the series' last access to ``at`` (now) and count one more access."""
    at = at or datetime.now(UTC)
    with sessions() as session:
        for pk in series_pks:
            changed = session.execute(
                update(SeriesTier)
                .where(SeriesTier.series_pk == pk)
                .values(last_access_at=at, access_count=SeriesTier.access_count + 1)
            ).rowcount  # type: ignore[attr-defined]
            if not changed:
                try:
                    with session.begin_nested():
                        session.add(_new_tier_row(pk, last_access_at=at, access_count=1))
                except IntegrityError:
                    pass  # another process created it (or the series is gone): fine either way
        session.commit()


def _new_tier_row(series_pk: int, **values: Any) -> SeriesTier:
    row = SeriesTier(
        series_pk=series_pk,
        access_count=0,
        cold_key="",
        cold_sha256="",
        cold_bytes=0,
        plain_bytes=0,
        cold_instances=0,
    )
    for name, value in values.items():
        setattr(row, name, value)
    return row


class Tiering:
    """Moves series between the hot store and the cold store."""

    def __init__(
        self,
        sessions: sessionmaker[Session],
        hot: BlobStore,
        cold: BlobStore,
        keys: StudyKeys,
    ) -> None:
        self._sessions = sessions
        self.hot = hot
        self.cold = cold
        self._keys = keys

    # -- policy ----------------------------------------------------------------------------

    def due(
        self, cold_after: timedelta, now: datetime | None = None, limit: int | None = None
    ) -> list[DueSeries]:
        """Series all hot and neither read nor received within ``cold_after``, oldest first."""
        cutoff = (now or datetime.now(UTC)) - cold_after
        last_used = func.coalesce(SeriesTier.last_access_at, Series.created_at)
        hot_instance, cold_instance = aliased(Instance), aliased(Instance)
        statement = (
            select(Series.pk, Study.study_instance_uid, Series.series_instance_uid, last_used)
            .join(Study, Series.study_pk == Study.pk)
            .outerjoin(SeriesTier, SeriesTier.series_pk == Series.pk)
            .where(last_used < cutoff)
            .where(
                exists().where(hot_instance.series_pk == Series.pk, hot_instance.tier == HOT),
                ~exists().where(cold_instance.series_pk == Series.pk, cold_instance.tier == COLD),
            )
            .order_by(last_used, Series.pk)
        )
        if limit is not None:
            statement = statement.limit(limit)
        with self._sessions() as session:
            return [DueSeries(*row) for row in session.execute(statement)]

    def cold_series(self, study_instance_uid: str) -> list[int]:
        """The series of a study with instances in the cold tier."""
        statement = (
            select(Series.pk)
            .join(Study, Series.study_pk == Study.pk)
            .where(Study.study_instance_uid == study_instance_uid)
            .where(exists().where(Instance.series_pk == Series.pk, Instance.tier == COLD))
            .order_by(Series.pk)
        )
        with self._sessions() as session:
            return list(session.scalars(statement))

    # -- hot -> cold -----------------------------------------------------------------------

    def tier_series(self, series_pk: int) -> Moved | None:
        """Move one series to the cold store; None if it has nothing hot or is mixed."""
        started = time.monotonic()
        study_uid, series_uid, members = self._members(series_pk, HOT)
        if not members or self._has(series_pk, COLD):
            return None
        sealed = any(m.encryption for m in members)
        data_key = self._keys.data_key(study_uid) if sealed else None
        bundle = pack(
            self._plaintexts(study_uid, members, data_key),
            data_key=data_key,
            series_uid=series_uid,
        )
        key = bundle_key(study_uid, series_uid, sealed=sealed)
        digest = hashlib.sha256(bundle).hexdigest()
        self.cold.put(key, bundle)
        self._check_stored(key, digest, members, data_key, series_uid)
        with self._sessions() as session:
            moved = session.execute(
                update(Instance)
                .where(Instance.pk.in_([m.pk for m in members]), Instance.tier == HOT)
                .values(tier=COLD)
            ).rowcount  # type: ignore[attr-defined]
            if moved != len(members):
                session.rollback()  # changed under us (deleted, say): leave it hot
                self.cold.delete(key)
                return None
            values = {
                "cold_key": key,
                "cold_sha256": digest,
                "cold_bytes": len(bundle),
                "plain_bytes": sum(m.size_bytes for m in members),
                "cold_instances": len(members),
                "tiered_at": datetime.now(UTC),
            }
            self._upsert_tier(session, series_pk, values)
            session.commit()
        self._delete_hot(members)  # after the commit: a crash leaves orphans, never a loss
        return Moved(
            study_uid,
            series_uid,
            len(members),
            sum(m.size_bytes for m in members),
            len(bundle),
            time.monotonic() - started,
        )

    def tier_due(
        self,
        cold_after: timedelta,
        progress: Progress | None = None,
        now: datetime | None = None,
        limit: int | None = None,
    ) -> list[Moved]:
        due = self.due(cold_after, now, limit)
        moved: list[Moved] = []
        for done, series in enumerate(due, start=1):
            try:
                outcome = self.tier_series(series.series_pk)
            except InstanceNotFoundError:
                outcome = None  # deleted meanwhile
            if outcome is not None:
                moved.append(outcome)
            if progress:
                progress(done, len(due))
        return moved

    # -- cold -> hot -----------------------------------------------------------------------

    def restore_series(self, series_pk: int) -> Moved | None:
        """Bring one series back to the hot store; None if nothing of it is cold."""
        started = time.monotonic()
        study_uid, series_uid, members = self._members(series_pk, COLD)
        if not members:
            return None
        with self._sessions() as session:
            tier = session.get(SeriesTier, series_pk)
            key, digest = (tier.cold_key, tier.cold_sha256) if tier else ("", "")
        if not key:
            raise TieringError(f"series {series_uid} is marked cold but has no cold bundle")
        try:
            bundle = self.cold.get(key)
        except InstanceNotFoundError:
            if not self._members(series_pk, COLD)[2]:
                return None  # a concurrent restore finished (and removed the bundle) first
            raise
        if hashlib.sha256(bundle).hexdigest() != digest:
            raise BundleDamagedError(f"cold bundle {key} does not match its checksum")
        sealed = key.endswith(".ice")
        data_key = self._keys.data_key(study_uid) if sealed else None
        wanted = {m.sop_instance_uid: m for m in members}
        written: set[str] = set()
        for sop_uid, data in unpack(bundle, data_key=data_key, series_uid=series_uid):
            member = wanted.get(sop_uid)
            if member is None:
                continue  # deleted from the index since it was tiered
            if hashlib.sha256(data).hexdigest() != member.sha256:
                raise BundleDamagedError(f"{sop_uid} in bundle {key} does not match the index")
            if member.encryption == AES256GCM:
                data = seal(self._keys.data_key(study_uid), data, sop_uid)
            self.hot.put(member.blob_key, data)
            written.add(sop_uid)
        missing = set(wanted) - written
        if missing:
            raise BundleDamagedError(f"bundle {key} lacks {len(missing)} instance(s)")
        now = datetime.now(UTC)
        with self._sessions() as session:
            session.execute(
                update(Instance).where(Instance.pk.in_([m.pk for m in members])).values(tier=HOT)
            )
            values = {
                "cold_key": "",
                "cold_sha256": "",
                "cold_bytes": 0,
                "plain_bytes": 0,
                "cold_instances": 0,
                "restored_at": now,
                "last_access_at": now,  # restored because someone wants it: hot for a while
            }
            self._upsert_tier(session, series_pk, values)
            session.commit()
        self.cold.delete(key)
        return Moved(
            study_uid,
            series_uid,
            len(members),
            sum(m.size_bytes for m in members),
            len(bundle),
            time.monotonic() - started,
        )

    def restore_study(
        self, study_instance_uid: str, progress: Progress | None = None
    ) -> list[Moved]:
        """Restore every cold series of a study (the restore job)."""
        series = self.cold_series(study_instance_uid)
        moved: list[Moved] = []
        for done, series_pk in enumerate(series, start=1):
            outcome = self.restore_series(series_pk)
            if outcome is not None:
                moved.append(outcome)
            if progress:
                progress(done, len(series))
        return moved

    def cold_keys(self, study_instance_uid: str) -> list[str]:
        """The cold bundles of a study (deletion and destruction remove them too)."""
        statement = (
            select(SeriesTier.cold_key)
            .join(Series, SeriesTier.series_pk == Series.pk)
            .join(Study, Series.study_pk == Study.pk)
            .where(Study.study_instance_uid == study_instance_uid, SeriesTier.cold_key != "")
        )
        with self._sessions() as session:
            return list(session.scalars(statement))

    # -- helpers ---------------------------------------------------------------------------

    def _members(self, series_pk: int, tier: str) -> tuple[str, str, list[_Member]]:
        with self._sessions() as session:
            found = session.execute(
                select(Study.study_instance_uid, Series.series_instance_uid)
                .join(Study, Series.study_pk == Study.pk)
                .where(Series.pk == series_pk)
            ).first()
            if found is None:
                raise InstanceNotFoundError(f"series {series_pk} is not in the archive")
            rows = session.execute(
                select(
                    Instance.pk,
                    Instance.sop_instance_uid,
                    Instance.blob_key,
                    Instance.encryption,
                    Instance.sha256,
                    Instance.size_bytes,
                )
                .where(Instance.series_pk == series_pk, Instance.tier == tier)
                .order_by(Instance.instance_number, Instance.pk)
            )
            return found[0], found[1], [_Member(*row) for row in rows]

    def _has(self, series_pk: int, tier: str) -> bool:
        with self._sessions() as session:
            return bool(
                session.scalar(
                    select(exists().where(Instance.series_pk == series_pk, Instance.tier == tier))
                )
            )

    def _plaintexts(
        self, study_uid: str, members: list[_Member], data_key: bytes | None
    ) -> Iterator[tuple[str, bytes]]:
        for member in members:
            data = self.hot.get(member.blob_key)
            if member.encryption:
                if data_key is None or member.encryption != AES256GCM:
                    raise TieringError(f"{member.sop_instance_uid}: cannot open its blob")
                data = unseal(data_key, data, member.sop_instance_uid)
            if hashlib.sha256(data).hexdigest() != member.sha256:
                # Never bury a damaged copy in the cold store: the scrub repairs it first.
                raise TieringError(
                    f"{member.sop_instance_uid} of study {study_uid} does not match its "
                    "checksum; run `imaging-cloud lifecycle scrub` before tiering it"
                )
            yield member.sop_instance_uid, data

    def _check_stored(
        self,
        key: str,
        digest: str,
        members: list[_Member],
        data_key: bytes | None,
        series_uid: str,
    ) -> None:
        """Read the stored bundle back and open it before the hot copies may go."""
        stored = self.cold.get(key)
        if hashlib.sha256(stored).hexdigest() != digest:
            self.cold.delete(key)
            raise TieringError(f"the cold store returned a different bundle for {key}")
        expected = {m.sop_instance_uid: m.sha256 for m in members}
        for sop_uid, data in unpack(stored, data_key=data_key, series_uid=series_uid):
            if expected.pop(sop_uid, None) != hashlib.sha256(data).hexdigest():
                self.cold.delete(key)
                raise TieringError(f"bundle {key}: {sop_uid} did not survive packing")
        if expected:
            self.cold.delete(key)
            raise TieringError(f"bundle {key} lacks {len(expected)} instance(s)")

    def _upsert_tier(self, session: Session, series_pk: int, values: dict[str, Any]) -> None:
        row = session.get(SeriesTier, series_pk)
        if row is None:
            session.add(_new_tier_row(series_pk, **values))
        else:
            for name, value in values.items():
                setattr(row, name, value)

    def _delete_hot(self, members: list[_Member]) -> None:
        for member in members:
            try:
                self.hot.delete(member.blob_key)
            except ArchiveError:
                logger.warning("hot blob %s left behind (scrub reports it)", member.blob_key)
