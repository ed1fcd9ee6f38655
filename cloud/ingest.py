"""Ingest: make a received object durable, then index it; idempotent by SOP Instance UID.

Order matters for the archive's promise: the original bytes are fsync'd to the blob store
before the index row is committed, and success is reported only after both. A crash in
between leaves an unindexed blob (harmless, found by a scrub), never an index row without bytes.

With encryption on, the bytes are sealed with the study's data key (`cloud.crypto`) before
they reach the blob store; the index's sha256 and size_bytes still describe the plaintext.
"""

from __future__ import annotations

import hashlib
import logging
import threading
from collections import OrderedDict
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session, sessionmaker

from cloud.blobstore import BlobStore
from cloud.crypto import AES256GCM, seal
from cloud.dataset import ParsedInstance, parse_part10, with_part10_header
from cloud.errors import BackendUnavailableError, DuplicateInstanceError, SOPClassMismatchError
from cloud.models import IngestConflict, Instance, Patient, Series, Study
from cloud.study_keys import StudyKeys

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class StoreOutcome:
    """What happened to one received object."""

    sop_class_uid: str
    sop_instance_uid: str
    study_instance_uid: str
    series_instance_uid: str
    already_stored: bool


SEALED_SUFFIX = ".ice"


def blob_key_for(sha256: str, *, sealed: bool = False) -> str:
    """Content-addressed key: a client can never choose or collide with a path.

    Addressed by the plaintext's SHA-256 either way; a sealed blob has its own suffix, so an
    object re-sent after encryption was switched on never overwrites the plain blob an older
    index row points to (nor the other way round).
    """
    suffix = SEALED_SUFFIX if sealed else ".dcm"
    return f"objects/{sha256[:2]}/{sha256[2:4]}/{sha256}{suffix}"


def is_sealed_key(blob_key: str) -> bool:
    return blob_key.endswith(SEALED_SUFFIX)


@dataclass(frozen=True)
class _Row:
    """What ingest itself contributes to an instance row (the rest comes from the object)."""

    blob_key: str
    size_bytes: int
    sha256: str
    source: str
    encryption: str


@dataclass(frozen=True)
class _Known:
    sha256: str
    blob_key: str
    study_instance_uid: str


class _PkCache:
    """Study/series UID -> primary key, so a series of 300 slices does 2 lookups, not 600."""

    def __init__(self, size: int = 4096) -> None:
        self._items: OrderedDict[tuple[str, str], int] = OrderedDict()
        self._lock = threading.Lock()
        self._size = size

    def get(self, kind: str, uid: str) -> int | None:
        with self._lock:
            pk = self._items.get((kind, uid))
            if pk is not None:
                self._items.move_to_end((kind, uid))
            return pk

    def put(self, kind: str, uid: str, pk: int) -> None:
        with self._lock:
            self._items[(kind, uid)] = pk
            if len(self._items) > self._size:
                self._items.popitem(last=False)

    def clear(self) -> None:
        with self._lock:
            self._items.clear()


class Ingestor:
    """Stores Part-10 objects into a blob store and the index, sealed when ``encrypt``."""

    def __init__(
        self,
        sessions: sessionmaker[Session],
        blobs: BlobStore,
        keys: StudyKeys | None = None,
        *,
        encrypt: bool = False,
    ) -> None:
        if encrypt and keys is None:
            raise ValueError("encryption needs the study keys")
        self._sessions = sessions
        self._blobs = blobs
        self._keys = keys
        self.encrypt = encrypt
        self._pks = _PkCache()

    def forget_cached_keys(self) -> None:
        self._pks.clear()

    def store(
        self,
        data: bytes,
        *,
        source: str,
        expected_sop_class_uid: str | None = None,
        expected_study_instance_uid: str | None = None,
        hospital_pk: int | None = None,
    ) -> StoreOutcome:
        """Validate, persist and index one Part-10 object; raise an `ArchiveError` to refuse.

        ``hospital_pk`` names the uploading hospital; a study belongs to the first one.
        """
        data = with_part10_header(data)
        _, parsed = parse_part10(data)
        if expected_sop_class_uid and parsed.sop_class_uid != expected_sop_class_uid:
            raise SOPClassMismatchError(
                f"SOPClassUID {parsed.sop_class_uid} differs from the request's "
                f"{expected_sop_class_uid}"
            )
        if expected_study_instance_uid and parsed.study_instance_uid != expected_study_instance_uid:
            raise SOPClassMismatchError(
                f"StudyInstanceUID {parsed.study_instance_uid} is not the study posted to "
                f"({expected_study_instance_uid})"
            )
        sha256 = hashlib.sha256(data).hexdigest()
        try:
            return self._store_parsed(data, parsed, sha256, source, hospital_pk)
        except OperationalError as exc:
            self._pks.clear()
            raise BackendUnavailableError(f"index database error: {exc.orig}") from exc

    def _store_parsed(
        self,
        data: bytes,
        parsed: ParsedInstance,
        sha256: str,
        source: str,
        hospital_pk: int | None,
    ) -> StoreOutcome:
        study_uid, sop_uid = parsed.study_instance_uid, parsed.sop_instance_uid
        encryption = AES256GCM if self.encrypt else ""
        key = blob_key_for(sha256, sealed=self.encrypt)
        # Write first, ask later: the key is content-addressed, so writing bytes that turn out
        # to be a duplicate or a conflict harms nothing, and the common case saves a query.
        if self._keys is not None and self.encrypt:
            # Made (and committed) before the blob: a crash leaves a key without objects.
            # A destroyed study's key refuses, so a destroyed study is never re-created.
            blob = seal(self._keys.data_key(study_uid, create=True), data, sop_uid)
        else:
            if self._keys is not None:
                self._keys.check_not_destroyed(study_uid)
            blob = data
        self._blobs.put(key, blob)
        row = _Row(key, len(data), sha256, source, encryption)
        with self._sessions() as session:
            new_keys = self._insert(session, parsed, row, hospital_pk)
            if new_keys is not None:
                session.commit()
                # cached only once committed, so a rollback never leaves a stale key behind
                for (kind, uid), pk in new_keys.items():
                    self._pks.put(kind, uid, pk)
                return _outcome(parsed, already_stored=False)
            session.rollback()
            known = self._known(session, sop_uid)
            if known is not None and known.sha256 == sha256:
                if known.blob_key != key:
                    # Stored before encryption was switched on or off: the blob just written
                    # is referenced by nothing (only this UID's row could have this digest).
                    self._blobs.delete(key)
                return _outcome(parsed, already_stored=True)
            if known is not None and self.encrypt and known.study_instance_uid != study_uid:
                self._reseal_conflict(data, key, known.study_instance_uid, sop_uid)
            stored_sha = "None" if known is None else known.sha256
            self._record_conflict(session, parsed, stored_sha, sha256, key, source)
        raise DuplicateInstanceError(
            f"UID already stored with other content; kept stored one. SOP Instance "
            f"{sop_uid}: stored sha256 {stored_sha}, received {sha256}"
        )

    def _reseal_conflict(self, data: bytes, key: str, stored_study: str, sop_uid: str) -> None:
        """A conflicting object that names another study is kept sealed with the key of the
        stored instance's study, so `Archive.read_conflict` can open it from the index."""
        if self._keys is None:
            return
        self._blobs.put(key, seal(self._keys.data_key(stored_study, create=True), data, sop_uid))

    @staticmethod
    def _known(session: Session, sop_instance_uid: str) -> _Known | None:
        found = session.execute(
            select(Instance.sha256, Instance.blob_key, Study.study_instance_uid)
            .join(Series, Instance.series_pk == Series.pk)
            .join(Study, Series.study_pk == Study.pk)
            .where(Instance.sop_instance_uid == sop_instance_uid)
        ).first()
        return None if found is None else _Known(*found)

    def _insert(
        self, session: Session, parsed: ParsedInstance, row: _Row, hospital_pk: int | None
    ) -> dict[tuple[str, str], int] | None:
        """Index rows for one object; the study/series keys to cache, or None if a duplicate."""
        now = datetime.now(UTC)
        keys: dict[tuple[str, str], int] = {}
        series_pk = self._pks.get("series", parsed.series_instance_uid)
        if series_pk is None:
            study_pk = self._study_pk(session, parsed, now, hospital_pk)
            keys["study", parsed.study_instance_uid] = study_pk
            series_pk = _get_or_create(
                session,
                Series.__table__,
                {"series_instance_uid": parsed.series_instance_uid},
                {"study_pk": study_pk, "created_at": now, **parsed.series},
            )
            keys["series", parsed.series_instance_uid] = series_pk
        inserted = _insert_ignore(
            session,
            Instance.__table__,
            {
                "sop_instance_uid": parsed.sop_instance_uid,
                "series_pk": series_pk,
                "blob_key": row.blob_key,
                "size_bytes": row.size_bytes,
                "sha256": row.sha256,
                "source": row.source[:128],
                "received_at": now,
                "encryption": row.encryption,
                **parsed.instance,
            },
        )
        return None if inserted is None else keys

    def _study_pk(
        self, session: Session, parsed: ParsedInstance, now: datetime, hospital_pk: int | None
    ) -> int:
        study_pk = self._pks.get("study", parsed.study_instance_uid)
        if study_pk is not None:
            return study_pk
        patient = parsed.patient
        alphabetic, ideographic, phonetic = patient.name_groups
        patient_pk = _get_or_create(
            session,
            Patient.__table__,
            {
                "patient_id": patient.patient_id,
                "issuer_of_patient_id": patient.issuer_of_patient_id,
            },
            {
                "patient_name": patient.patient_name,
                "patient_name_alphabetic": alphabetic,
                "patient_name_ideographic": ideographic,
                "patient_name_phonetic": phonetic,
                "patient_birth_date": patient.patient_birth_date,
                "patient_sex": patient.patient_sex,
            },
        )
        study_pk = _get_or_create(
            session,
            Study.__table__,
            {"study_instance_uid": parsed.study_instance_uid},
            {
                "patient_pk": patient_pk,
                "hospital_pk": hospital_pk,
                "created_at": now,
                **parsed.study,
            },
        )
        return study_pk

    def _record_conflict(
        self,
        session: Session,
        parsed: ParsedInstance,
        stored_sha: str,
        received_sha: str,
        key: str,
        source: str,
    ) -> None:
        session.add(
            IngestConflict(
                sop_instance_uid=parsed.sop_instance_uid,
                stored_sha256=stored_sha,
                received_sha256=received_sha,
                received_blob_key=key,
                source=source[:128],
                received_at=datetime.now(UTC),
            )
        )
        session.commit()
        logger.warning(
            "conflict: different object received under a stored SOP Instance UID",
            extra={"sop_instance_uid": parsed.sop_instance_uid, "source": source},
        )


def _outcome(parsed: ParsedInstance, *, already_stored: bool) -> StoreOutcome:
    return StoreOutcome(
        sop_class_uid=parsed.sop_class_uid,
        sop_instance_uid=parsed.sop_instance_uid,
        study_instance_uid=parsed.study_instance_uid,
        series_instance_uid=parsed.series_instance_uid,
        already_stored=already_stored,
    )


def _insert_ignore(session: Session, table: Any, values: dict[str, Any]) -> int | None:
    """INSERT that does nothing on a unique conflict; the new row's pk, or None if none."""
    dialect = session.get_bind().dialect.name
    module: Any = postgresql if dialect == "postgresql" else sqlite
    statement = module.insert(table).values(**values).on_conflict_do_nothing()
    # RETURNING, not rowcount: psycopg reports -1 for INSERT .. ON CONFLICT DO NOTHING.
    pk = session.execute(statement.returning(table.c.pk)).scalar()
    return None if pk is None else int(pk)


def _get_or_create(
    session: Session, table: Any, unique: dict[str, Any], values: dict[str, Any]
) -> int:
    """Primary key of the row matching ``unique``, inserting it with ``values`` if absent."""
    condition = [table.c[name] == value for name, value in unique.items()]
    pk = session.scalar(select(table.c.pk).where(*condition))
    if pk is None:
        pk = _insert_ignore(session, table, {**unique, **values})
    if pk is None:  # a concurrent association created it between our two statements
        pk = session.scalar(select(table.c.pk).where(*condition))
    if pk is None:
        raise BackendUnavailableError(f"row {unique} vanished while being created")
    return int(pk)
