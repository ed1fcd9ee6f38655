"""Destroying studies whose retention has run out, and the proof that it happened.

A study is destroyed only if the policy says so: classified, retain-until before today, not
on legal hold, and its retain-until not earlier than the policy allows for its class. Then it
is crypto-shredded (its data key destroyed, when the archive has a key store), its index rows
and blobs are deleted, and a `DestructionRecord` is appended: hash-chained like the audit log
(no gaps in ``seq``, each hash over the content and the previous hash), holding a SHA-256 of
the patient ID rather than the ID, and the blob keys with their digest. Each record is also
anchored in the audit log (its seq and hash), so removing the last record shows too.
`Destruction.verify` (`cloud.destruction_records`) re-checks the chain, the anchors, and that
every destroyed study is still gone: not in the index, no blob left, no live data key.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from dataclasses import dataclass
from datetime import UTC, date, datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError, OperationalError
from sqlalchemy.orm import Session

from cloud.archive import Archive
from cloud.audit import GENESIS
from cloud.destruction_records import (
    ANCHOR_ACTION,
    COLD_PREFIX,
    DestructionReport,
    Progress,
    archive_store_of,
    blob_keys_digest,
    key_state,
    list_records,
    record_hash,
    sha256_text,
    verify_destructions,
)
from cloud.errors import InstanceNotFoundError
from cloud.models import (
    DestructionRecord,
    IngestConflict,
    Instance,
    Patient,
    Series,
    SeriesTier,
    Study,
    StudyLifecycle,
)
from cloud.retention import (
    POLICY_ACTOR,
    Actor,
    Retention,
    RetentionRefusedError,
    as_date,
    series_facts,
    yyyymmdd,
)
from cloud.retention_policy import add_years

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Destroyed:
    """What one destruction did; ``seq`` and ``entry_hash`` name its record."""

    seq: int
    entry_hash: str
    study_instance_uid: str
    instances: int
    bytes_destroyed: int
    blobs: int
    key_destroyed: bool


@dataclass(frozen=True)
class _Target:
    study_instance_uid: str
    patient_id: str
    retention_class: str
    retain_until: str
    blob_keys: list[str]
    instances: int
    size_bytes: int


class Destruction:
    """Destroys due studies of one archive under its retention policy; verifies the records."""

    def __init__(self, archive: Archive, retention: Retention) -> None:
        self.archive = archive
        self.retention = retention
        self._sessions = archive.sessions
        self._append_lock = threading.Lock()

    # --- destroying ------------------------------------------------------------------------

    def check(self, study_instance_uid: str, today: date | None = None) -> None:
        """Raise `RetentionRefusedError` saying why the study may not be destroyed today."""
        with self._sessions() as session:
            self._target(session, study_instance_uid, today or self.retention.today())

    def destroy(self, study_instance_uid: str, *, approved_by: str, actor: Actor) -> Destroyed:
        """Destroy one study the policy says is due (today by the retention service's clock)."""
        approved_by = approved_by.strip()
        if not approved_by or len(approved_by) > 64 or "\x00" in approved_by:
            raise RetentionRefusedError("destruction needs the approver's name (1-64 characters)")
        with self._sessions() as session:
            target = self._target(session, study_instance_uid, self.retention.today())
        key_destroyed = self._shred(study_instance_uid)
        try:
            deleted = self.archive.delete_study(study_instance_uid)
            if deleted.instances != target.instances:
                logger.warning(
                    "study %s changed while destroyed: %d instances, %d expected",
                    study_instance_uid,
                    deleted.instances,
                    target.instances,
                )
        except Exception:
            if self._in_index(study_instance_uid):
                raise  # nothing deleted: the study stays (shredded if it had a key), no record
            logger.exception("index rows of %s deleted, blob deletion failed", study_instance_uid)
        blobs = self._delete_remaining_blobs(target.blob_keys)
        seq, digest = self._append(target, key_destroyed, approved_by)
        detail = {
            "destruction_seq": seq,
            "destruction_hash": digest,
            "retention_class": target.retention_class,
            "retain_until": as_date(target.retain_until).isoformat(),
            "instances": target.instances,
            "key_destroyed": key_destroyed,
            "approved_by": approved_by,
        }
        self.archive.audit.append(
            actor.entry(ANCHOR_ACTION, study_instance_uid, target.patient_id, detail)
        )
        logger.info(
            "destroyed study %s (record %d, %d instances)",
            study_instance_uid,
            seq,
            target.instances,
        )
        return Destroyed(
            seq,
            digest,
            study_instance_uid,
            target.instances,
            target.size_bytes,
            blobs,
            key_destroyed,
        )

    def _target(self, session: Session, uid: str, today: date) -> _Target:
        study = session.scalar(select(Study).where(Study.study_instance_uid == uid))
        if study is None:
            raise InstanceNotFoundError(f"study {uid} is not in the archive")
        row = session.get(StudyLifecycle, study.pk)
        if row is None:
            raise RetentionRefusedError(
                f"study {uid} has not been classified: nothing is destroyed without the policy "
                "saying so (run 'lifecycle classify' first)"
            )
        if row.legal_hold:
            raise RetentionRefusedError(f"study {uid} is on legal hold: {row.hold_reason}")
        until = as_date(row.retain_until)
        if not until < today:
            raise RetentionRefusedError(
                f"study {uid} is retained until {until.isoformat()} ({row.retention_class}, "
                f"level {row.level}): not due for destruction before "
                f"{date.fromordinal(until.toordinal() + 1).isoformat()}"
            )
        self._check_policy_floor(session, study, row)
        instances = session.execute(
            select(Instance.blob_key, Instance.size_bytes)
            .join(Series, Instance.series_pk == Series.pk)
            .where(Series.study_pk == study.pk)
        ).all()
        patient_id = session.scalar(
            select(Patient.patient_id).where(Patient.pk == study.patient_pk)
        )
        bundles = session.scalars(
            select(SeriesTier.cold_key)
            .join(Series, SeriesTier.series_pk == Series.pk)
            .where(Series.study_pk == study.pk, SeriesTier.cold_key != "")
        )
        return _Target(
            uid,
            patient_id or "",
            row.retention_class,
            row.retain_until,
            sorted({key for key, _ in instances} | {COLD_PREFIX + key for key in bundles}),
            len(instances),
            sum(size for _, size in instances),
        )

    def _check_policy_floor(self, session: Session, study: Study, row: StudyLifecycle) -> None:
        """A retain-until below what the policy allows is refused, however it got there."""
        policy, base = self.retention.policy, self.retention.base_date(study)
        if row.retention_class not in policy.classes:
            raise RetentionRefusedError(
                f"study {study.study_instance_uid}: retention class {row.retention_class!r} is "
                "not in the policy"
            )
        floor = add_years(base, policy.retention_class(row.retention_class).minimum_years)
        if row.classified_by == POLICY_ACTOR:  # as the policy would classify it today
            facts = series_facts(session, [study.pk]).get(study.pk, [])
            rule = policy.classify(facts)
            floor = max(floor, add_years(base, policy.years(rule.retention_class, rule.level)))
        if row.retain_until < yyyymmdd(floor):
            raise RetentionRefusedError(
                f"study {study.study_instance_uid}: retain-until {as_date(row.retain_until)} is "
                f"earlier than the policy allows ({floor.isoformat()}); reclassify it first"
            )

    def _shred(self, uid: str) -> bool:
        """Destroy the study's data key; True if it had one and it is destroyed now."""
        before = key_state(self._sessions, uid)
        destroy = getattr(getattr(self.archive, "keys", None), "destroy", None)
        if destroy is None:
            if before == "live":
                raise RetentionRefusedError(
                    f"study {uid} has a data key but this archive has no key store to destroy "
                    "it with; open the archive with its key store"
                )
            return before == "destroyed"
        destroyed_now = bool(destroy(uid))
        if key_state(self._sessions, uid) == "live":
            raise RetentionRefusedError(f"the data key of study {uid} could not be destroyed")
        # "destroyed" before: an earlier attempt shredded it and stopped before its record.
        return destroyed_now or before in ("live", "destroyed")

    def _in_index(self, uid: str) -> bool:
        with self._sessions() as session:
            return (
                session.scalar(select(Study.pk).where(Study.study_instance_uid == uid)) is not None
            )

    def _delete_remaining_blobs(self, keys: list[str]) -> int:
        """Delete what `delete_study` left (it keeps blobs another row still references, and
        may have failed half-way); returns how many of ``keys`` are gone."""
        with self._sessions() as session:
            referenced = set(
                session.scalars(select(Instance.blob_key).where(Instance.blob_key.in_(keys)))
            ) | set(
                session.scalars(
                    select(IngestConflict.received_blob_key).where(
                        IngestConflict.received_blob_key.in_(keys)
                    )
                )
            )
        gone = 0
        for key in keys:
            if key in referenced:
                logger.warning("blob %s is still referenced by another instance; kept", key)
                continue
            try:
                store, stored_key = archive_store_of(self.archive, key)
                store.delete(stored_key)
                gone += 1
            except Exception:
                logger.exception("could not delete blob %s (verify will report it)", key)
        return gone

    def _append(self, target: _Target, key_destroyed: bool, approved_by: str) -> tuple[int, str]:
        """Append the record; a concurrent append takes the same seq, so retry with the next."""
        blob_keys = json.dumps(target.blob_keys, separators=(",", ":"))
        for attempt in range(8):
            try:
                with self._append_lock, self._sessions() as session:
                    last = session.execute(
                        select(DestructionRecord.seq, DestructionRecord.entry_hash)
                        .order_by(DestructionRecord.seq.desc())
                        .limit(1)
                    ).first()
                    seq, prev = (int(last[0]) + 1, str(last[1])) if last else (1, GENESIS)
                    record = DestructionRecord(
                        seq=seq,
                        study_instance_uid=target.study_instance_uid,
                        patient_id_sha256=sha256_text(target.patient_id),
                        retention_class=target.retention_class,
                        retain_until=target.retain_until,
                        instances=target.instances,
                        bytes_destroyed=target.size_bytes,
                        blob_keys_sha256=blob_keys_digest(target.blob_keys),
                        blob_keys=blob_keys,
                        key_destroyed=key_destroyed,
                        approved_by=approved_by,
                        destroyed_at=datetime.now(UTC),
                        prev_hash=prev,
                        entry_hash="",
                    )
                    record.entry_hash = record_hash(record, prev)
                    session.add(record)
                    session.commit()
                    return seq, record.entry_hash
            except (IntegrityError, OperationalError):
                if attempt == 7:
                    raise
                time.sleep(0.05 * (attempt + 1))
        raise AssertionError("unreachable")

    # --- checking --------------------------------------------------------------------------

    def records(self, limit: int = 100) -> list[dict[str, Any]]:
        """The newest destruction records, newest first, as JSON-ready objects."""
        return list_records(self._sessions, limit)

    def verify(
        self, progress: Progress | None = None, *, batch_size: int = 1000
    ) -> DestructionReport:
        """See `cloud.destruction_records.verify_destructions`."""
        return verify_destructions(self.archive, progress, batch_size=batch_size)
