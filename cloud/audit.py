"""The audit log: append-only, hash-chained, one entry per read of patient data.

Each entry's hash covers its content and the previous entry's hash, and sequence numbers have
no gaps, so `AuditLog.verify` detects an entry changed, removed or inserted after the fact.
Reads that make up viewing are coalesced into viewing sessions: a ``view`` entry when a study
is opened and a ``view_end`` entry (with the duration) once it has been idle for a while.
"""

from __future__ import annotations

import hashlib
import json
import logging
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any, Protocol

from sqlalchemy import func, select, update
from sqlalchemy.orm import Session, sessionmaker

from cloud.audit_query import (
    EVENT_COLUMNS,
    AuditFilter,
    as_utc,
    iter_events,
    search_events,
    stamp,
)
from cloud.models import AuditChainHead, AuditEvent

logger = logging.getLogger(__name__)

GENESIS = "0" * 64
VIEW_IDLE_SECONDS = 60.0  # a viewing session ends after this long without a request
MAX_PROBLEMS = 1000  # verify names at most this many problems, then counts the rest

Clock = Callable[[], datetime]


@dataclass(frozen=True)
class AuditEntry:
    actor_kind: str  # user | patient | share_link | system
    actor: str
    action: str  # search | view | view_end | download | share | access | delete | ...
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


class AuditObserver(Protocol):
    """Sees every entry once it is committed (the anomaly detector)."""

    def observe(self, seq: int, at: datetime, entry: AuditEntry) -> None: ...


@dataclass(frozen=True)
class ChainReport:
    """What `AuditLog.verify` found: ``ok`` only if ``problems`` is empty."""

    ok: bool
    entries: int
    last_seq: int
    last_hash: str
    problems: list[str]


def utc_now() -> datetime:
    return datetime.now(UTC)


def entry_hash(seq: int, at: datetime, entry: AuditEntry, prev_hash: str) -> str:
    """SHA-256 over the previous hash and a canonical JSON of the entry's content."""
    content = {
        "seq": seq,
        "at": stamp(at),
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
        "view_started_at": stamp(entry.view_started_at),
        "view_ended_at": stamp(entry.view_ended_at),
        "duration_seconds": entry.duration_seconds,
    }
    canonical = json.dumps(content, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256((prev_hash + canonical).encode("utf-8")).hexdigest()


def _stored_form(entry: AuditEntry) -> AuditEntry:
    """The entry exactly as the columns will hold it, so the hash covers what is stored."""
    return replace(
        entry,
        actor_kind=entry.actor_kind[:16],
        actor=entry.actor[:128],
        role=entry.role[:32],
        hospital_id=entry.hospital_id[:64],
        action=entry.action[:32],
        outcome=entry.outcome[:16],
        study_instance_uid=entry.study_instance_uid[:64],
        patient_id=entry.patient_id[:64],
        client_address=entry.client_address[:64],
        detail=json.loads(json.dumps(entry.detail, default=str)),
        view_started_at=as_utc(entry.view_started_at),
        view_ended_at=as_utc(entry.view_ended_at),
        # PostgreSQL hands a float column back as float: an int would hash differently later.
        duration_seconds=None if entry.duration_seconds is None else float(entry.duration_seconds),
    )


def _entry_of(row: Any) -> AuditEntry:
    detail = json.loads(row.detail) if row.detail else {}
    if not isinstance(detail, dict):
        raise ValueError("detail is not a JSON object")
    return AuditEntry(
        actor_kind=row.actor_kind,
        actor=row.actor,
        action=row.action,
        role=row.role,
        hospital_id=row.hospital_id,
        outcome=row.outcome,
        study_instance_uid=row.study_instance_uid,
        patient_id=row.patient_id,
        client_address=row.client_address,
        detail=detail,
        view_started_at=row.view_started_at,
        view_ended_at=row.view_ended_at,
        duration_seconds=row.duration_seconds,
    )


@dataclass
class _ViewSession:
    entry: AuditEntry  # the first read, with view_started_at
    started_at: datetime
    last_read_at: datetime
    reads: int = 1
    start_seq: int = 0


class AuditLog:
    """Appends entries under a lock on the chain head (a row lock on PostgreSQL, the write
    lock on SQLite), so appends from threads and processes form one linear chain."""

    def __init__(
        self,
        sessions: sessionmaker[Session],
        *,
        clock: Clock = utc_now,
        view_idle_seconds: float = VIEW_IDLE_SECONDS,
        detector: AuditObserver | None = None,
    ) -> None:
        self._sessions = sessions
        self._clock = clock
        self.view_idle_seconds = view_idle_seconds
        self.detector = detector  # may be set later; evaluated after each committed append
        self._append_lock = threading.Lock()
        self._views_lock = threading.Lock()
        self._views: dict[tuple[str, str, str], _ViewSession] = {}
        self._stop = threading.Event()
        self._flusher: threading.Thread | None = None

    # --- writing ---------------------------------------------------------------------------

    def append(self, entry: AuditEntry, at: datetime | None = None) -> int:
        """Write one entry; returns its sequence number."""
        moment = as_utc(at) or as_utc(self._clock())
        assert moment is not None
        entry = _stored_form(entry)
        with self._append_lock, self._sessions() as session:
            # A no-op UPDATE takes SQLite's write lock before the head is read (PostgreSQL
            # locks the row either way), so another process cannot take the same seq.
            session.execute(
                update(AuditChainHead)
                .where(AuditChainHead.pk == 1)
                .values(last_seq=AuditChainHead.last_seq)
            )
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
        detector = self.detector
        if detector is not None:
            try:
                detector.observe(seq, moment, entry)
            except Exception:  # an anomaly check must never fail the audited request
                logger.exception("audit anomaly check failed on seq %d", seq)
        return seq

    # --- viewing sessions ------------------------------------------------------------------

    def record_view(self, entry: AuditEntry) -> None:
        """A read that belongs to a viewing session: the first one is written at once, later
        ones within `view_idle_seconds` only extend the session (ended by `flush_views`)."""
        now = as_utc(self._clock())
        assert now is not None
        key = (entry.actor_kind, entry.actor, entry.study_instance_uid)
        with self._views_lock:
            known = self._views.get(key)
            if known is not None and self._active(known, now):
                known.last_read_at = max(known.last_read_at, now)
                known.reads += 1
                return
            ended = self._views.pop(key, None)
            started = replace(entry, view_started_at=now)
            fresh = _ViewSession(started, now, now)
            self._views[key] = fresh
        if ended is not None:
            self._end_view(ended)
        try:
            fresh.start_seq = self.append(started, at=now)
        except Exception:
            with self._views_lock:
                if self._views.get(key) is fresh:
                    del self._views[key]  # the next read tries to open the session again
            raise

    def _active(self, view: _ViewSession, now: datetime) -> bool:
        return (now - view.last_read_at).total_seconds() < self.view_idle_seconds

    def flush_views(self, now: datetime | None = None, *, everything: bool = False) -> int:
        """Write ``view_end`` for every session idle at ``now`` (all of them if
        ``everything``); returns how many sessions ended."""
        moment = as_utc(now) or as_utc(self._clock())
        assert moment is not None
        with self._views_lock:
            done = [
                key
                for key, view in self._views.items()
                if everything or not self._active(view, moment)
            ]
            ended = [self._views.pop(key) for key in done]
        for view in ended:
            self._end_view(view)
        return len(ended)

    def open_views(self) -> int:
        with self._views_lock:
            return len(self._views)

    def _end_view(self, view: _ViewSession) -> None:
        duration = (view.last_read_at - view.started_at).total_seconds()
        entry = replace(
            view.entry,
            action="view_end",
            view_started_at=view.started_at,
            view_ended_at=view.last_read_at,
            duration_seconds=round(duration, 3),
            detail={"reads": view.reads, "start_seq": view.start_seq},
        )
        try:
            self.append(entry)
        except Exception:
            logger.exception("could not write the end of viewing session %d", view.start_seq)

    def start_flusher(self, interval_seconds: float = 5.0) -> None:
        """End idle viewing sessions from a background thread every ``interval_seconds``."""
        if self._flusher is not None:
            return
        self._stop.clear()

        def loop() -> None:
            while not self._stop.wait(interval_seconds):
                try:
                    self.flush_views()
                except Exception:  # the flusher must outlive a database hiccup
                    logger.exception("ending idle viewing sessions failed")

        self._flusher = threading.Thread(target=loop, name="audit-view-flusher", daemon=True)
        self._flusher.start()

    def close(self) -> None:
        """Stop the flusher and end every open viewing session (call before the engine goes)."""
        self._stop.set()
        if self._flusher is not None:
            self._flusher.join(timeout=10)
            self._flusher = None
        self.flush_views(everything=True)

    # --- checking --------------------------------------------------------------------------

    def verify(
        self, progress: Callable[[int, int], None] | None = None, *, batch_size: int = 5000
    ) -> ChainReport:
        """Walk the chain in seq order, in batches, and name every entry that does not fit.

        ``progress(checked, expected_total)`` is called after each batch.
        """
        problems: list[str] = []
        extra = 0

        def problem(text: str) -> None:
            nonlocal extra
            if len(problems) < MAX_PROBLEMS:
                problems.append(text)
            else:
                extra += 1

        checked, last_seq, last_hash = 0, 0, GENESIS
        for _round in range(20):
            total = self._head_and_max()[0]
            for rows in self._batches(last_seq, batch_size):
                for row in rows:
                    _check_row(row, last_seq, last_hash, problem)
                    checked += 1
                    last_seq, last_hash = row.seq, row.entry_hash
                if progress is not None:
                    progress(checked, max(total, last_seq))
            head_seq, head_hash, max_seq = self._head_and_max()
            if max_seq <= last_seq:  # nothing was appended while we walked: compare the head
                _check_head(head_seq, head_hash, last_seq, last_hash, problem)
                break
        # Else appends never paused; a truncated tail would still show as a gap before them.
        if extra:
            problems.append(f"... and {extra} more problems")
        return ChainReport(not problems, checked, last_seq, last_hash, problems)

    def _head_and_max(self) -> tuple[int, str, int]:
        # One statement, so PostgreSQL answers both from one snapshot.
        statement = select(
            AuditChainHead.last_seq,
            AuditChainHead.last_hash,
            select(func.max(AuditEvent.seq)).scalar_subquery(),
        ).where(AuditChainHead.pk == 1)
        with self._sessions() as session:
            row = session.execute(statement).first()
            if row is None:  # no head row: only possible if someone deleted it
                top = session.scalar(select(func.max(AuditEvent.seq))) or 0
                return 0, GENESIS, int(top)
        return int(row[0]), str(row[1]), int(row[2] or 0)

    def _batches(self, after: int, size: int) -> Iterator[list[Any]]:
        while True:
            statement = (
                select(*EVENT_COLUMNS)
                .where(AuditEvent.seq > after)
                .order_by(AuditEvent.seq)
                .limit(size)
            )
            with self._sessions() as session:
                rows = list(session.execute(statement))
            if not rows:
                return
            yield rows
            after = rows[-1].seq

    # --- reading ---------------------------------------------------------------------------

    def search(self, filters: AuditFilter) -> list[dict[str, Any]]:
        """Matching entries, newest first."""
        return search_events(self._sessions, filters)

    def iter_events(self, filters: AuditFilter, batch_size: int = 5000) -> Iterator[dict[str, Any]]:
        """Every matching entry in seq order, read in batches (``limit``/``offset`` ignored)."""
        return iter_events(self._sessions, filters, batch_size)

    def last_seq(self) -> int:
        return self._head_and_max()[0]


def _check_head(
    head_seq: int, head_hash: str, last_seq: int, last_hash: str, problem: Callable[[str], None]
) -> None:
    if head_seq > last_seq:
        problem(
            f"chain head names seq {head_seq} but the last entry is seq {last_seq}: "
            f"entries {last_seq + 1}..{head_seq} were deleted"
        )
    elif head_seq < last_seq:
        problem(
            f"entries after seq {head_seq} (up to {last_seq}) are not in the chain head: "
            "written outside the audit log"
        )
    elif head_hash != last_hash:
        problem(f"seq {last_seq}: chain head hash differs (the last entry was replaced)")


def _check_row(row: Any, prev_seq: int, prev_hash: str, problem: Callable[[str], None]) -> None:
    seq = row.seq
    if seq != prev_seq + 1:
        if seq <= prev_seq:  # cannot happen with seq as primary key, but say so if it does
            problem(f"seq {seq}: out of order after seq {prev_seq}")
        elif seq == prev_seq + 2:
            problem(f"seq {prev_seq + 1}: missing (entry deleted)")
        else:
            problem(
                f"seq {prev_seq + 1}..{seq - 1}: missing ({seq - prev_seq - 1} entries deleted)"
            )
    elif row.prev_hash != prev_hash:
        problem(
            f"seq {seq}: prev_hash does not link to seq {prev_seq} "
            f"(seq {prev_seq} was changed and rehashed, or seq {seq} was forged)"
        )
    try:
        content = _entry_of(row)
    except ValueError:
        problem(f"seq {seq}: detail is not a JSON object (entry changed)")
        return
    if entry_hash(seq, row.at, content, row.prev_hash) != row.entry_hash:
        problem(f"seq {seq}: hash mismatch (entry changed)")
