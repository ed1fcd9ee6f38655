"""Upload monitoring (采集监测): per-hospital status and alerts from gateway heartbeats.

An alert is raised once when its condition starts and cleared once when it ends, so the log
and the webhook get one message per change, not one per check.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import httpx
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from cloud.models import Alert, GatewayHeartbeat, Hospital, Instance, Reconciliation, Series, Study

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class AlertPolicy:
    stale_heartbeat_seconds: float = 300.0
    low_disk_bytes: int = 5 * 1024**3
    backlog_instances: int = 10_000
    backlog_age_seconds: float = 3600.0
    repeated_failures: int = 5


@dataclass(frozen=True)
class AlertChange:
    hospital_id: str
    kind: str
    message: str
    state: str  # "raised" or "cleared"
    at: datetime

    def as_dict(self) -> dict[str, str]:
        return {
            "hospital_id": self.hospital_id,
            "kind": self.kind,
            "message": self.message,
            "state": self.state,
            "at": self.at.isoformat(),
        }


def _conditions(
    heartbeat: GatewayHeartbeat | None, policy: AlertPolicy, now: datetime
) -> dict[str, str]:
    """Alert kind -> message for every condition that holds now."""
    if heartbeat is None:
        return {"no_heartbeat": "the gateway has never sent a heartbeat"}
    found: dict[str, str] = {}
    age = (now - _aware(heartbeat.received_at)).total_seconds()
    if age > policy.stale_heartbeat_seconds:
        found["stale_heartbeat"] = f"last heartbeat {age:.0f} s ago"
    if heartbeat.disk_free_bytes is not None and heartbeat.disk_free_bytes < policy.low_disk_bytes:
        found["low_disk"] = f"gateway spool disk has {heartbeat.disk_free_bytes} bytes free"
    oldest = heartbeat.oldest_unsent_seconds or 0.0
    if heartbeat.queued > policy.backlog_instances or oldest > policy.backlog_age_seconds:
        found["backlog"] = f"{heartbeat.queued} objects queued, oldest {oldest:.0f} s"
    if heartbeat.consecutive_failures >= policy.repeated_failures:
        found["repeated_failures"] = (
            f"{heartbeat.consecutive_failures} failed uploads in a row: {heartbeat.last_error}"
        )
    return found


def _aware(moment: datetime) -> datetime:
    # SQLite hands back naive datetimes for timezone-aware columns; they were stored as UTC.
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def evaluate_alerts(
    sessions: sessionmaker[Session], policy: AlertPolicy, now: datetime | None = None
) -> list[AlertChange]:
    """Open alerts whose condition started, close those whose condition ended."""
    now = now or datetime.now(UTC)
    changes: list[AlertChange] = []
    with sessions() as session:
        heartbeats = {row.hospital_pk: row for row in session.scalars(select(GatewayHeartbeat))}
        open_alerts: dict[tuple[int, str], Alert] = {
            (row.hospital_pk, row.kind): row
            for row in session.scalars(select(Alert).where(Alert.cleared_at.is_(None)))
        }
        for hospital in session.scalars(select(Hospital).where(Hospital.active)):
            current = _conditions(heartbeats.get(hospital.pk), policy, now)
            for kind, message in current.items():
                if (hospital.pk, kind) not in open_alerts:
                    session.add(
                        Alert(hospital_pk=hospital.pk, kind=kind, message=message, raised_at=now)
                    )
                    changes.append(AlertChange(hospital.hospital_id, kind, message, "raised", now))
            for (pk, kind), alert in open_alerts.items():
                if pk == hospital.pk and kind not in current:
                    alert.cleared_at = now
                    changes.append(
                        AlertChange(hospital.hospital_id, kind, alert.message, "cleared", now)
                    )
        session.commit()
    return changes


def upload_status(sessions: sessionmaker[Session]) -> list[dict[str, Any]]:
    """Per hospital: what arrived, what its gateway reports, and what is wrong."""
    with sessions() as session:
        received = {
            pk: (studies, instances, last)
            for pk, studies, instances, last in session.execute(
                select(
                    Study.hospital_pk,
                    func.count(func.distinct(Study.pk)),
                    func.count(Instance.pk),
                    func.max(Instance.received_at),
                )
                .join(Series, Series.study_pk == Study.pk)
                .join(Instance, Instance.series_pk == Series.pk)
                .where(Study.hospital_pk.is_not(None))
                .group_by(Study.hospital_pk)
            )
        }
        heartbeats = {row.hospital_pk: row for row in session.scalars(select(GatewayHeartbeat))}
        alerts: dict[int, list[dict[str, str | None]]] = {}
        for alert in session.scalars(select(Alert).where(Alert.cleared_at.is_(None))):
            alerts.setdefault(alert.hospital_pk, []).append(
                {"kind": alert.kind, "message": alert.message, "since": _iso(alert.raised_at)}
            )
        audits = dict(
            session.execute(
                select(Reconciliation.hospital_pk, func.count(Reconciliation.pk))
                .where(Reconciliation.result != "match")
                .group_by(Reconciliation.hospital_pk)
            ).all()
        )
        rows = []
        for hospital in session.scalars(select(Hospital).order_by(Hospital.hospital_id)):
            studies, instances, last = received.get(hospital.pk, (0, 0, None))
            beat = heartbeats.get(hospital.pk)
            rows.append(
                {
                    "hospital_id": hospital.hospital_id,
                    "name": hospital.name,
                    "active": hospital.active,
                    "studies": studies,
                    "instances": instances,
                    "last_upload": _iso(last),
                    "gateway": None
                    if beat is None
                    else {
                        "last_heartbeat": _iso(beat.received_at),
                        "queued": beat.queued,
                        "queued_bytes": beat.queued_bytes,
                        "quarantined": beat.quarantined,
                        "oldest_unsent_seconds": beat.oldest_unsent_seconds,
                        "disk_free_bytes": beat.disk_free_bytes,
                        "consecutive_failures": beat.consecutive_failures,
                        "last_error": beat.last_error,
                    },
                    "reconciliation_mismatches": int(audits.get(hospital.pk, 0)),
                    "alerts": alerts.get(hospital.pk, []),
                }
            )
        return rows


def _iso(moment: datetime | None) -> str | None:
    return None if moment is None else _aware(moment).isoformat()


class AlertMonitor:
    """Checks alert conditions periodically; reports changes to the log and a webhook."""

    def __init__(
        self,
        sessions: sessionmaker[Session],
        policy: AlertPolicy,
        webhook_url: str = "",
        *,
        notify: Callable[[AlertChange], None] | None = None,
    ) -> None:
        self._sessions = sessions
        self.policy = policy
        self.webhook_url = webhook_url
        self._notify = notify
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def check(self) -> list[AlertChange]:
        changes = evaluate_alerts(self._sessions, self.policy)
        for change in changes:
            log = logger.warning if change.state == "raised" else logger.info
            log("alert %s for %s: %s", change.state, change.hospital_id, change.message)
            if self._notify is not None:
                self._notify(change)
            if self.webhook_url:
                self._post(change)
        return changes

    def _post(self, change: AlertChange) -> None:
        try:
            httpx.post(self.webhook_url, json=change.as_dict(), timeout=10).raise_for_status()
        except httpx.HTTPError as exc:
            logger.error("alert webhook %s failed: %s", self.webhook_url, exc)

    def start(self, interval_seconds: float) -> None:
        def loop() -> None:
            while not self._stop.wait(interval_seconds):
                try:
                    self.check()
                except Exception:  # monitoring must never stop the node
                    logger.exception("alert check failed")

        self._thread = threading.Thread(target=loop, name="alert-monitor", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
