"""Reading the audit log: search criteria, entries as JSON-ready objects, batched iteration."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import ColumnElement, or_, select
from sqlalchemy.orm import Session, sessionmaker

from cloud.errors import InvalidQueryError
from cloud.models import AuditEvent, Hospital, Study


@dataclass(frozen=True)
class AuditFilter:
    """Search criteria; empty strings and None match everything.

    ``scope_hospital_id`` restricts to a hospital's events: those of its own people and those
    about the studies it owns (reads by patients, share links or other hospitals).
    """

    actor: str = ""
    action: str = ""
    outcome: str = ""
    study_instance_uid: str = ""
    patient_id: str = ""
    hospital_id: str = ""
    since: datetime | None = None
    until: datetime | None = None
    scope_hospital_id: str | None = None
    limit: int = 100
    offset: int = 0


def as_utc(moment: datetime | None) -> datetime | None:
    # SQLite hands back naive datetimes for timezone-aware columns; they were stored as UTC.
    if moment is None:
        return None
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


def stamp(moment: datetime | None) -> str | None:
    utc = as_utc(moment)
    return None if utc is None else utc.isoformat(timespec="microseconds")


def parse_moment(text: str) -> datetime:
    """An ISO 8601 date or date-time; without an offset it is taken as UTC."""
    try:
        moment = datetime.fromisoformat(text.strip())
    except ValueError as exc:
        raise InvalidQueryError(f"{text!r} is not an ISO 8601 date or date-time") from exc
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment


EVENT_COLUMNS = (
    AuditEvent.seq,
    AuditEvent.at,
    AuditEvent.actor_kind,
    AuditEvent.actor,
    AuditEvent.role,
    AuditEvent.hospital_id,
    AuditEvent.action,
    AuditEvent.outcome,
    AuditEvent.study_instance_uid,
    AuditEvent.patient_id,
    AuditEvent.client_address,
    AuditEvent.detail,
    AuditEvent.view_started_at,
    AuditEvent.view_ended_at,
    AuditEvent.duration_seconds,
    AuditEvent.prev_hash,
    AuditEvent.entry_hash,
)


def event_dict(row: Any) -> dict[str, Any]:
    """One stored entry as a JSON-ready object (what search and the JSON lines export give)."""
    try:
        detail: Any = json.loads(row.detail) if row.detail else {}
    except ValueError:
        detail = row.detail  # a tampered entry is shown as stored
    return {
        "seq": row.seq,
        "at": stamp(row.at),
        "actor_kind": row.actor_kind,
        "actor": row.actor,
        "role": row.role,
        "hospital_id": row.hospital_id,
        "action": row.action,
        "outcome": row.outcome,
        "study_instance_uid": row.study_instance_uid,
        "patient_id": row.patient_id,
        "client_address": row.client_address,
        "detail": detail,
        "view_started_at": stamp(row.view_started_at),
        "view_ended_at": stamp(row.view_ended_at),
        "duration_seconds": row.duration_seconds,
        "prev_hash": row.prev_hash,
        "entry_hash": row.entry_hash,
    }


def search_events(sessions: sessionmaker[Session], filters: AuditFilter) -> list[dict[str, Any]]:
    """Matching entries, newest first."""
    statement = (
        select(*EVENT_COLUMNS)
        .where(*_conditions(filters))
        .order_by(AuditEvent.seq.desc())
        .limit(max(0, filters.limit))
        .offset(max(0, filters.offset))
    )
    with sessions() as session:
        return [event_dict(row) for row in session.execute(statement)]


def iter_events(
    sessions: sessionmaker[Session], filters: AuditFilter, batch_size: int = 5000
) -> Iterator[dict[str, Any]]:
    """Every matching entry in seq order, read in batches (``limit``/``offset`` ignored)."""
    after = 0
    conditions = _conditions(filters)
    while True:
        statement = (
            select(*EVENT_COLUMNS)
            .where(AuditEvent.seq > after, *conditions)
            .order_by(AuditEvent.seq)
            .limit(batch_size)
        )
        with sessions() as session:
            rows = list(session.execute(statement))
        if not rows:
            return
        for row in rows:
            yield event_dict(row)
        after = rows[-1].seq


def _conditions(filters: AuditFilter) -> list[ColumnElement[bool]]:
    found: list[ColumnElement[bool]] = []
    for column, value in (
        (AuditEvent.actor, filters.actor),
        (AuditEvent.action, filters.action),
        (AuditEvent.outcome, filters.outcome),
        (AuditEvent.study_instance_uid, filters.study_instance_uid),
        (AuditEvent.patient_id, filters.patient_id),
        (AuditEvent.hospital_id, filters.hospital_id),
    ):
        if value:
            found.append(column == value)
    if filters.since is not None:
        found.append(AuditEvent.at >= as_utc(filters.since))
    if filters.until is not None:
        found.append(AuditEvent.at < as_utc(filters.until))
    if filters.scope_hospital_id is not None:
        owned = (
            select(Study.study_instance_uid)
            .join(Hospital, Study.hospital_pk == Hospital.pk)
            .where(Hospital.hospital_id == filters.scope_hospital_id)
        )
        found.append(
            or_(
                AuditEvent.hospital_id == filters.scope_hospital_id,
                AuditEvent.study_instance_uid.in_(owned),
            )
        )
    return found
