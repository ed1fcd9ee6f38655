"""The audit log: append-only, hash-chained, one entry per read of patient data.

Each entry's hash covers its content and the previous entry's hash, and sequence numbers have
no gaps, so `verify` detects an entry changed, removed or inserted after the fact.
"""

from __future__ import annotations

import hashlib
import json
import threading
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from cloud.models import AuditChainHead, AuditEvent

GENESIS = "0" * 64
VIEW_IDLE_SECONDS = 60.0  # a viewing session ends after this long without a request


@dataclass(frozen=True)
class AuditEntry:
    actor_kind: str  # user | patient | share_link | system
    actor: str
    action: str  # search | view | download | share | grant | export | edit | delete | ...
    role: str = ""
    hospital_id: str = ""
    outcome: str = "allowed"  # allowed | denied
    study_instance_uid: str = ""
    patient_id: str = ""
    client_address: str = ""
    detail: dict[str, Any] = field(default_factory=dict)
    view_started_at: datetime | None = None
    view_ended_at: datetime | None = None
    duration_seconds: float | None = None


def _stamp(moment: datetime | None) -> str | None:
    return None if moment is None else moment.astimezone(UTC).isoformat(timespec="microseconds")


def entry_hash(seq: int, at: datetime, entry: AuditEntry, prev_hash: str) -> str:
    """SHA-256 over the previous hash and a canonical JSON of the entry's content."""
    content = {
        "seq": seq,
        "at": _stamp(at),
        "actor_kind": entry.actor_kind,
        "actor": entry.actor,
        "role": entry.role,
        "hospital_id": entry.hospital_id,
        "action": entry.action,
        "outcome": entry.outcome,
        "study_instance_uid": entry.study_instance_uid,
        "patient_id": entry.patient_id,
        "client_address": entry.client_address,
        "detail": entry.detail,
        "view_started_at": _stamp(entry.view_started_at),
        "view_ended_at": _stamp(entry.view_ended_at),
        "duration_seconds": entry.duration_seconds,
    }
    canonical = json.dumps(content, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256((prev_hash + canonical).encode("utf-8")).hexdigest()


class AuditLog:
    """Appends entries under a lock on the chain head (a row lock on PostgreSQL)."""

    def __init__(self, sessions: sessionmaker[Session]) -> None:
        self._sessions = sessions
        self._lock = threading.Lock()
        self._views: dict[tuple[str, str], tuple[AuditEntry, float, float]] = {}

    def append(self, entry: AuditEntry, at: datetime | None = None) -> int:
        """Write one entry; returns its sequence number."""
        moment = at or datetime.now(UTC)
        with self._lock, self._sessions() as session:
            head = session.scalar(
                select(AuditChainHead).where(AuditChainHead.pk == 1).with_for_update()
            )
            if head is None:
                head = AuditChainHead(pk=1, last_seq=0, last_hash=GENESIS)
                session.add(head)
            seq = head.last_seq + 1
            digest = entry_hash(seq, moment, entry, head.last_hash)
            session.add(
                AuditEvent(
                    seq=seq,
                    at=moment,
                    actor_kind=entry.actor_kind,
                    actor=entry.actor,
                    role=entry.role,
                    hospital_id=entry.hospital_id,
                    action=entry.action,
                    outcome=entry.outcome,
                    study_instance_uid=entry.study_instance_uid,
                    patient_id=entry.patient_id,
                    client_address=entry.client_address,
                    detail=json.dumps(entry.detail, sort_keys=True, ensure_ascii=False),
                    view_started_at=entry.view_started_at,
                    view_ended_at=entry.view_ended_at,
                    duration_seconds=entry.duration_seconds,
                    prev_hash=head.last_hash,
                    entry_hash=digest,
                )
            )
            head.last_seq, head.last_hash = seq, digest
            session.commit()
            return seq

    def record_view(self, entry: AuditEntry) -> None:
        """A read that belongs to a viewing session: the first one is written at once."""
        key = (entry.actor, entry.study_instance_uid)
        now = time.monotonic()
        with self._lock:
            known = self._views.get(key)
            if known is not None and now - known[2] < VIEW_IDLE_SECONDS:
                self._views[key] = (known[0], known[1], now)
                return
            self._views[key] = (entry, now, now)
        self.append(entry)
