"""Destruction records: their hash chain, and the check that every destroyed study stays gone.

`verify_destructions` walks the records in seq order: each must link to the previous one and
hash to what it holds (so a changed, removed or inserted record shows), each must match its
anchor in the audit log (so removing the last record shows too), and each destroyed study
must still be gone: not in the index, none of its blobs in the store, no live data key.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from cloud.archive import Archive
from cloud.audit import GENESIS, MAX_PROBLEMS
from cloud.audit_query import AuditFilter, as_utc, stamp
from cloud.blobstore import BlobStore
from cloud.models import DestructionRecord, Study, StudyKey
from cloud.retention_policy import as_date

ANCHOR_ACTION = "destroyed"  # the audit entry that anchors each record
Progress = Callable[[int, int], None]
Problem = Callable[[str], None]


@dataclass(frozen=True)
class DestructionReport:
    """What `Destruction.verify` found: ``ok`` only if ``problems`` is empty."""

    ok: bool
    records: int
    last_seq: int
    problems: list[str]


def sha256_text(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def blob_keys_digest(keys: list[str]) -> str:
    """SHA-256 over the sorted blob keys, one per line."""
    return sha256_text("\n".join(sorted(keys)))


def record_hash(row: Any, prev_hash: str) -> str:
    """SHA-256 over the previous hash and a canonical JSON of the record's content."""
    content = {
        "seq": int(row.seq),
        "study_instance_uid": row.study_instance_uid,
        "patient_id_sha256": row.patient_id_sha256,
        "retention_class": row.retention_class,
        "retain_until": row.retain_until,
        "instances": int(row.instances),
        "bytes_destroyed": int(row.bytes_destroyed),
        "blob_keys_sha256": row.blob_keys_sha256,
        "blob_keys": row.blob_keys,
        "key_destroyed": bool(row.key_destroyed),
        "approved_by": row.approved_by,
        "destroyed_at": stamp(row.destroyed_at),
    }
    canonical = json.dumps(content, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256((prev_hash + canonical).encode("utf-8")).hexdigest()


def key_state(sessions: sessionmaker[Session], uid: str) -> str:
    """'none' (no key, or only a tombstone of a study that never had one), 'live' or
    'destroyed'."""
    with sessions() as session:
        key = session.get(StudyKey, uid)
    if key is None:
        return "none"
    if key.wrapped_key is not None and key.destroyed_at is None:
        return "live"
    return "destroyed" if key.kek_id else "none"


def list_records(sessions: sessionmaker[Session], limit: int = 100) -> list[dict[str, Any]]:
    """The newest records, newest first, as JSON-ready objects."""
    with sessions() as session:
        rows = session.scalars(
            select(DestructionRecord).order_by(DestructionRecord.seq.desc()).limit(limit)
        )
        return [_record_dict(row) for row in rows]


def verify_destructions(
    archive: Archive, progress: Progress | None = None, *, batch_size: int = 1000
) -> DestructionReport:
    """Walk the records in seq order and name every one that does not hold.

    ``progress(checked, total)`` is called after each batch.
    """
    problems: list[str] = []

    def problem(text: str) -> None:
        if len(problems) < MAX_PROBLEMS:
            problems.append(text)

    with archive.sessions() as session:
        total = int(session.scalar(select(func.count(DestructionRecord.seq))) or 0)
    hashes: dict[int, str] = {}
    checked, last_seq, last_hash = 0, 0, GENESIS
    while True:
        with archive.sessions() as session:
            rows = list(
                session.scalars(
                    select(DestructionRecord)
                    .where(DestructionRecord.seq > last_seq)
                    .order_by(DestructionRecord.seq)
                    .limit(batch_size)
                )
            )
            for row in rows:
                _check_link(row, last_seq, last_hash, problem)
                _check_gone(archive, session, row, problem)
                hashes[int(row.seq)] = row.entry_hash
                last_seq, last_hash = int(row.seq), row.entry_hash
                checked += 1
        if progress is not None:
            progress(checked, max(total, checked))
        if not rows:
            break
    _check_anchors(archive, hashes, problem)
    return DestructionReport(not problems, checked, last_seq, problems)


def _check_gone(
    archive: Archive, session: Session, row: DestructionRecord, problem: Problem
) -> None:
    seq, uid = row.seq, row.study_instance_uid
    if session.scalar(select(Study.pk).where(Study.study_instance_uid == uid)) is not None:
        problem(f"seq {seq}: study {uid} is in the index again")
    try:
        keys = json.loads(row.blob_keys)
        if not isinstance(keys, list) or not all(isinstance(k, str) for k in keys):
            raise ValueError("not a list of strings")
    except ValueError:
        problem(f"seq {seq}: blob_keys is not a JSON list of keys (record changed)")
        keys = []
    if keys and blob_keys_digest(keys) != row.blob_keys_sha256:
        problem(f"seq {seq}: blob keys do not match blob_keys_sha256 (record changed)")
    for key in keys:
        store, stored_key = archive_store_of(archive, key)
        try:
            present = store.exists(stored_key)
        except Exception as exc:  # a key the store refuses, or the store unreachable
            problem(f"seq {seq}: cannot check blob {key}: {exc}")
            continue
        if present:
            problem(f"seq {seq}: blob {key} of destroyed study {uid} is present again")
    if key_state(archive.sessions, uid) == "live":
        problem(f"seq {seq}: the data key of destroyed study {uid} is not destroyed")


COLD_PREFIX = "cold:"  # a record's key in the cold store (a series bundle), not the hot one


def archive_store_of(archive: Archive, key: str) -> tuple[BlobStore, str]:
    """The store a destruction record's key lives in, and the key within it."""
    if key.startswith(COLD_PREFIX):
        return archive.cold_blobs, key.removeprefix(COLD_PREFIX)
    return archive.blobs, key


def _check_anchors(archive: Archive, hashes: dict[int, str], problem: Problem) -> None:
    anchored: set[int] = set()
    for event in archive.audit.iter_events(AuditFilter(action=ANCHOR_ACTION)):
        detail = event["detail"] if isinstance(event["detail"], dict) else {}
        seq, digest = detail.get("destruction_seq"), detail.get("destruction_hash")
        if not isinstance(seq, int):
            continue
        anchored.add(seq)
        if seq not in hashes:
            problem(
                f"seq {seq}: missing, but the audit log (seq {event['seq']}) "
                "records its destruction (record deleted)"
            )
        elif hashes[seq] != digest:
            problem(
                f"seq {seq}: hash differs from the one in the audit log "
                f"(seq {event['seq']}): record replaced"
            )
    for seq in sorted(set(hashes) - anchored):
        problem(
            f"seq {seq}: not anchored in the audit log (written outside destroy, "
            "or the audit append failed)"
        )


def _check_link(row: DestructionRecord, prev_seq: int, prev_hash: str, problem: Problem) -> None:
    seq = int(row.seq)
    if seq != prev_seq + 1:
        if seq == prev_seq + 2:
            problem(f"seq {prev_seq + 1}: missing (record deleted)")
        else:
            problem(
                f"seq {prev_seq + 1}..{seq - 1}: missing ({seq - prev_seq - 1} records deleted)"
            )
    elif row.prev_hash != prev_hash:
        problem(f"seq {seq}: prev_hash does not link to seq {prev_seq} (a record was replaced)")
    if record_hash(row, row.prev_hash) != row.entry_hash:
        problem(f"seq {seq}: hash mismatch (record changed)")


def _record_dict(row: DestructionRecord) -> dict[str, Any]:
    return {
        "seq": row.seq,
        "study_instance_uid": row.study_instance_uid,
        "patient_id_sha256": row.patient_id_sha256,
        "retention_class": row.retention_class,
        "retain_until": as_date(row.retain_until).isoformat(),
        "instances": row.instances,
        "bytes_destroyed": row.bytes_destroyed,
        "blob_keys_sha256": row.blob_keys_sha256,
        "key_destroyed": row.key_destroyed,
        "approved_by": row.approved_by,
        "destroyed_at": stamp(as_utc(row.destroyed_at)),
        "entry_hash": row.entry_hash,
    }
