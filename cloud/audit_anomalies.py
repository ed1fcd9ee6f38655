"""Access anomalies seen in the audit stream as it is written (Xuzhou spec).

Rules: an address never seen for that actor in the last N days, activity outside working
hours, a burst of downloads, repeated refusals (attempts beyond one's role) and mass deletion.
Each raises an `AccessAlert` row, a warning in the log and, if configured, a JSON POST to a
webhook — at most once per kind and actor per dedup window. State is kept in memory per actor
(bounded); an actor's address history is read from the audit table once, then cached.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import httpx
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from cloud.audit import AuditEntry
from cloud.models import AccessAlert, AuditEvent

logger = logging.getLogger(__name__)

KINDS = ("unusual_address", "unusual_hour", "download_burst", "denied_attempts", "mass_deletion")
MAX_ADDRESSES = 64  # remembered per actor; the least recently used address goes first


@dataclass(frozen=True)
class AnomalyPolicy:
    """Thresholds; a count of 0 (or equal working-hour bounds) turns that rule off."""

    address_history_days: float = 90.0
    working_hours_start: int = 7  # local hour, inclusive
    working_hours_end: int = 20  # local hour, exclusive
    timezone: str = "Asia/Shanghai"
    burst_downloads: int = 50  # more than this many downloads ...
    burst_minutes: float = 10.0  # ... within this many minutes
    denied_attempts: int = 5  # this many refusals or more ...
    denied_minutes: float = 10.0
    mass_deletions: int = 20  # more than this many deletions ...
    deletion_minutes: float = 10.0
    dedup_minutes: float = 60.0  # one alert per kind and actor per this window
    # Address and hour rules watch staff accounts; patients and share links roam by nature.
    watched_actor_kinds: frozenset[str] = frozenset({"user"})
    max_actors: int = 10_000


@dataclass(frozen=True)
class AccessAlertEvent:
    kind: str
    actor_kind: str
    actor: str
    hospital_id: str
    message: str
    audit_seq: int
    raised_at: datetime

    def as_dict(self) -> dict[str, Any]:
        # The upload alerts' webhook shape, plus who and which audit entry.
        return {
            "source": "audit",
            "hospital_id": self.hospital_id,
            "kind": self.kind,
            "message": self.message,
            "state": "raised",
            "at": self.raised_at.isoformat(),
            "actor_kind": self.actor_kind,
            "actor": self.actor,
            "audit_seq": self.audit_seq,
        }


@dataclass
class _Actor:
    addresses: dict[str, datetime] | None = None  # None until read from the audit table
    recent: dict[str, deque[datetime]] = field(default_factory=dict)
    raised: dict[str, datetime] = field(default_factory=dict)


class AnomalyDetector:
    """An `cloud.audit.AuditObserver`: evaluates the rules on every committed entry."""

    def __init__(
        self,
        sessions: sessionmaker[Session],
        policy: AnomalyPolicy | None = None,
        webhook_url: str = "",
        *,
        notify: Callable[[AccessAlertEvent], None] | None = None,
    ) -> None:
        self._sessions = sessions
        self.policy = policy or AnomalyPolicy()
        try:
            self._zone = ZoneInfo(self.policy.timezone)
        except (ZoneInfoNotFoundError, ValueError) as exc:
            raise ValueError(f"unknown audit time zone {self.policy.timezone!r}") from exc
        self.webhook_url = webhook_url
        self._notify = notify
        self._lock = threading.Lock()
        self._actors: OrderedDict[tuple[str, str], _Actor] = OrderedDict()
        self._outbox: queue.Queue[AccessAlertEvent | None] = queue.Queue(maxsize=1000)
        self._poster: threading.Thread | None = None

    def observe(self, seq: int, at: datetime, entry: AuditEntry) -> None:
        if entry.actor_kind == "system" or entry.action == "view_end":
            return  # the end of a viewing session is no new access (and is written later)
        key = (entry.actor_kind, entry.actor)
        with self._lock:
            state = self._actor(key)
            need_history = state.addresses is None and self._watches_address(entry)
        if need_history:
            history = self._address_history(entry, at, seq)
            with self._lock:
                if state.addresses is None:
                    state.addresses = history
        with self._lock:
            found = self._evaluate(state, at, entry)
        for kind, message in found:
            self._raise(
                AccessAlertEvent(
                    kind, entry.actor_kind, entry.actor, entry.hospital_id, message, seq, at
                )
            )

    # --- rules (called under the lock) -----------------------------------------------------

    def _evaluate(self, state: _Actor, at: datetime, entry: AuditEntry) -> list[tuple[str, str]]:
        p = self.policy
        found: list[tuple[str, str]] = []
        if self._watches_address(entry):
            message = self._unusual_address(state, at, entry.client_address)
            if message:
                found.append(("unusual_address", message))
        if entry.actor_kind in p.watched_actor_kinds and not self._working_hour(at):
            local = at.astimezone(self._zone)
            found.append(
                (
                    "unusual_hour",
                    f"{entry.action} at {local:%H:%M} {p.timezone}, outside working hours "
                    f"{p.working_hours_start:02d}-{p.working_hours_end:02d}",
                )
            )
        if entry.action == "download" and entry.outcome == "allowed":
            count = self._count(state, "download", at, p.burst_minutes, p.burst_downloads + 1)
            if p.burst_downloads and count > p.burst_downloads:
                text = f"more than {p.burst_downloads} downloads in {p.burst_minutes:g} min"
                found.append(("download_burst", text))
        if entry.outcome == "denied":
            count = self._count(state, "denied", at, p.denied_minutes, p.denied_attempts)
            if p.denied_attempts and count >= p.denied_attempts:
                wanted = entry.detail.get("permission", entry.action)
                text = f"{count} refused requests in {p.denied_minutes:g} min (last: {wanted})"
                found.append(("denied_attempts", text))
        if entry.action == "delete" and entry.outcome == "allowed":
            count = self._count(state, "delete", at, p.deletion_minutes, p.mass_deletions + 1)
            if p.mass_deletions and count > p.mass_deletions:
                text = f"more than {p.mass_deletions} deletions in {p.deletion_minutes:g} min"
                found.append(("mass_deletion", text))
        return [(kind, text) for kind, text in found if self._first_in_window(state, kind, at)]

    def _watches_address(self, entry: AuditEntry) -> bool:
        return bool(entry.client_address) and entry.actor_kind in self.policy.watched_actor_kinds

    def _unusual_address(self, state: _Actor, at: datetime, address: str) -> str:
        known = state.addresses if state.addresses is not None else {}
        cutoff = at - timedelta(days=self.policy.address_history_days)
        recent = {addr: seen for addr, seen in known.items() if seen >= cutoff}
        novel = bool(recent) and address not in recent  # no history yet: this is the baseline
        recent.pop(address, None)
        recent[address] = at
        while len(recent) > MAX_ADDRESSES:
            recent.pop(next(iter(recent)))
        state.addresses = recent
        if not novel:
            return ""
        days = self.policy.address_history_days
        return f"access from {address}, not seen for this account in the last {days:g} days"

    def _working_hour(self, at: datetime) -> bool:
        start, end = self.policy.working_hours_start, self.policy.working_hours_end
        if start == end:
            return True
        hour = at.astimezone(self._zone).hour
        return start <= hour < end if start < end else hour >= start or hour < end

    @staticmethod
    def _count(state: _Actor, what: str, at: datetime, minutes: float, keep: int) -> int:
        times = state.recent.get(what)
        if times is None or times.maxlen != max(keep, 1):
            times = state.recent[what] = deque(times or (), maxlen=max(keep, 1))
        times.append(at)
        cutoff = at - timedelta(minutes=minutes)
        while times and times[0] <= cutoff:
            times.popleft()
        return len(times)

    def _first_in_window(self, state: _Actor, kind: str, at: datetime) -> bool:
        last = state.raised.get(kind)
        if last is not None and at - last < timedelta(minutes=self.policy.dedup_minutes):
            return False
        state.raised[kind] = at
        return True

    def _actor(self, key: tuple[str, str]) -> _Actor:
        state = self._actors.get(key)
        if state is None:
            state = self._actors[key] = _Actor()
            while len(self._actors) > self.policy.max_actors:
                self._actors.popitem(last=False)
        else:
            self._actors.move_to_end(key)
        return state

    def _address_history(self, entry: AuditEntry, at: datetime, seq: int) -> dict[str, datetime]:
        cutoff = at - timedelta(days=self.policy.address_history_days)
        last_seen = func.max(AuditEvent.at)
        statement = (
            select(AuditEvent.client_address, last_seen)
            .where(
                AuditEvent.actor == entry.actor,
                AuditEvent.actor_kind == entry.actor_kind,
                AuditEvent.at >= cutoff,
                AuditEvent.seq < seq,
                AuditEvent.client_address != "",
            )
            .group_by(AuditEvent.client_address)
            .order_by(last_seen.desc())
            .limit(MAX_ADDRESSES)
        )
        try:
            with self._sessions() as session:
                rows = session.execute(statement).all()
        except Exception:
            logger.exception("could not read the address history of an actor; starting afresh")
            return {}
        return {address: _aware(seen) for address, seen in reversed(rows)}

    # --- raising ---------------------------------------------------------------------------

    def _raise(self, alert: AccessAlertEvent) -> None:
        logger.warning("access alert %s for %s: %s", alert.kind, alert.actor, alert.message)
        try:
            with self._sessions() as session:
                session.add(
                    AccessAlert(
                        kind=alert.kind,
                        actor=alert.actor[:128],
                        hospital_id=alert.hospital_id[:64],
                        message=alert.message,
                        audit_seq=alert.audit_seq,
                        raised_at=alert.raised_at,
                    )
                )
                session.commit()
        except Exception:
            logger.exception("could not store access alert %s for %s", alert.kind, alert.actor)
        if self._notify is not None:
            try:
                self._notify(alert)
            except Exception:
                logger.exception("access alert notifier failed")
        if self.webhook_url:
            self._enqueue(alert)

    def _enqueue(self, alert: AccessAlertEvent) -> None:
        # The POST happens on a worker thread: a slow webhook must not slow the audited request.
        with self._lock:
            if self._poster is None:
                self._poster = threading.Thread(
                    target=self._post_loop, name="access-alert-webhook", daemon=True
                )
                self._poster.start()
        try:
            self._outbox.put_nowait(alert)
        except queue.Full:
            logger.error("access alert webhook backlog full; dropped %s", alert.kind)

    def _post_loop(self) -> None:
        while (alert := self._outbox.get()) is not None:
            try:
                httpx.post(self.webhook_url, json=alert.as_dict(), timeout=10).raise_for_status()
            except httpx.HTTPError as exc:
                logger.error("access alert webhook %s failed: %s", self.webhook_url, exc)
            finally:
                self._outbox.task_done()
        self._outbox.task_done()

    def drain(self) -> None:
        """Wait until every queued webhook POST was attempted."""
        if self._poster is not None:
            self._outbox.join()

    def close(self) -> None:
        if self._poster is not None:
            self._outbox.put(None)
            self._poster.join(timeout=15)
            self._poster = None


def _aware(moment: datetime) -> datetime:
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment


def list_alerts(
    sessions: sessionmaker[Session],
    *,
    kind: str = "",
    actor: str = "",
    hospital_id: str | None = None,
    since: datetime | None = None,
    limit: int = 100,
    offset: int = 0,
) -> list[dict[str, Any]]:
    """Access alerts, newest first; ``hospital_id`` restricts to one hospital's."""
    statement = select(AccessAlert).order_by(AccessAlert.raised_at.desc(), AccessAlert.pk.desc())
    if kind:
        statement = statement.where(AccessAlert.kind == kind)
    if actor:
        statement = statement.where(AccessAlert.actor == actor)
    if hospital_id is not None:
        statement = statement.where(AccessAlert.hospital_id == hospital_id)
    if since is not None:
        statement = statement.where(AccessAlert.raised_at >= since.astimezone(UTC))
    with sessions() as session:
        rows = session.scalars(statement.limit(max(0, limit)).offset(max(0, offset))).all()
        return [
            {
                "id": row.pk,
                "kind": row.kind,
                "actor": row.actor,
                "hospital_id": row.hospital_id,
                "message": row.message,
                "audit_seq": row.audit_seq,
                "raised_at": _aware(row.raised_at).isoformat(),
            }
            for row in rows
        ]
