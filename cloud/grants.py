"""Patients authorise hospitals (Chongqing spec): a time-bound, revocable grant per hospital.

A doctor's workstation at hospital B asks (`GrantRequests.create`) and shows the answer's URL
as a QR code; the patient scans it, signs in and approves or declines. The request's code is
a capability: only its SHA-256 is stored, it works once and expires after 15 minutes.
A patient can also grant a hospital directly from their page. `AccessPolicy` reads grants on
every request, so a revocation or an expiry takes effect at once.
"""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.orm import Session, sessionmaker

from cloud.access import AccessDeniedError
from cloud.errors import ArchiveError, InstanceNotFoundError, InvalidQueryError
from cloud.models import GrantRequest, Hospital, PatientGrant
from cloud.patients import Clock, aware, utc_now

REQUEST_SECONDS = 15 * 60
MIN_HOURS, MAX_HOURS, DEFAULT_HOURS = 1, 72, 24


class GoneError(ArchiveError):
    """A capability that existed but is used up, expired or revoked."""

    http_status = 410
    title = "Gone"


def code_hash(code: str) -> str:
    return hashlib.sha256(code.encode()).hexdigest()


def check_hours(hours: int) -> int:
    if not MIN_HOURS <= hours <= MAX_HOURS:
        raise InvalidQueryError(f"valid_hours must be {MIN_HOURS}..{MAX_HOURS}, got {hours}")
    return hours


@dataclass(frozen=True)
class RequestView:
    pk: int
    patient_id: str
    hospital_id: str
    hospital_name: str
    requested_by: str
    visit: str
    valid_hours: int
    state: str  # pending | approved | declined | expired
    expires_at: datetime
    grant_expires_at: datetime | None

    def as_dict(self) -> dict[str, Any]:
        return {
            "id": self.pk,
            "hospital_id": self.hospital_id,
            "hospital_name": self.hospital_name,
            "requested_by": self.requested_by,
            "visit": self.visit,
            "valid_hours": self.valid_hours,
            "state": self.state,
            "expires_at": self.expires_at.isoformat(),
            "grant_expires_at": self.grant_expires_at.isoformat()
            if self.grant_expires_at
            else None,
        }


@dataclass(frozen=True)
class GrantView:
    pk: int
    hospital_id: str
    hospital_name: str
    visit: str
    method: str
    granted_at: datetime
    expires_at: datetime
    revoked_at: datetime | None
    active: bool

    def as_dict(self) -> dict[str, Any]:
        return {
            "id": self.pk,
            "hospital_id": self.hospital_id,
            "hospital_name": self.hospital_name,
            "visit": self.visit,
            "method": self.method,
            "granted_at": self.granted_at.isoformat(),
            "expires_at": self.expires_at.isoformat(),
            "revoked_at": self.revoked_at.isoformat() if self.revoked_at else None,
            "active": self.active,
        }


class Grants:
    """Grant requests from workstations and the grants patients give."""

    def __init__(self, sessions: sessionmaker[Session], clock: Clock = utc_now) -> None:
        self._sessions = sessions
        self._clock = clock

    # --- the hospital asks -----------------------------------------------------------------

    def create_request(
        self, patient_id: str, hospital_pk: int, requested_by: str, visit: str, hours: int
    ) -> tuple[str, RequestView]:
        """A new request; returns its code (shown once, as a QR) and its state."""
        code = secrets.token_urlsafe(24)
        now = self._clock()
        row = GrantRequest(
            code_sha256=code_hash(code),
            patient_id=patient_id,
            hospital_pk=hospital_pk,
            requested_by=requested_by,
            visit=visit[:64],
            valid_hours=check_hours(hours),
            created_at=now,
            expires_at=now + timedelta(seconds=REQUEST_SECONDS),
            state="pending",
        )
        with self._sessions() as session:
            session.add(row)
            session.commit()
            return code, self._request_view(session, row)

    def request_state(self, pk: int, hospital_pk: int) -> RequestView:
        """The request as its hospital's workstation polls it."""
        with self._sessions() as session:
            row = session.get(GrantRequest, pk)
            if row is None or row.hospital_pk != hospital_pk:
                raise InstanceNotFoundError(f"your hospital has no grant request {pk}")
            return self._request_view(session, row)

    def is_pending(self, code: str) -> bool:
        """Whether ``code`` names a request still waiting for the patient (for its QR)."""
        with self._sessions() as session:
            row = session.scalar(
                select(GrantRequest).where(GrantRequest.code_sha256 == code_hash(code))
            )
            return (
                row is not None and row.state == "pending" and aware(row.expires_at) > self._clock()
            )

    # --- the patient answers ---------------------------------------------------------------

    def describe(self, code: str, patient_id: str) -> RequestView:
        """What the scanned code asks, for the patient it names."""
        with self._sessions() as session:
            row = self._own(session, code, patient_id)
            return self._request_view(session, row)

    def answer(self, code: str, patient_id: str, approve: bool) -> RequestView:
        """Approve (a grant for the hospital, method "qr") or decline; works once."""
        now = self._clock()
        with self._sessions() as session:
            row = self._own(session, code, patient_id)
            if row.state != "pending":
                raise GoneError(f"this request was already {row.state} 此授权请求已处理")
            if aware(row.expires_at) <= now:
                raise GoneError("this request has expired; ask for a new QR code 授权请求已过期")
            state = "approved" if approve else "declined"
            # Only one answer wins, whatever the database's locking: the state moves once.
            taken = session.execute(
                update(GrantRequest)
                .where(GrantRequest.pk == row.pk, GrantRequest.state == "pending")
                .values(state=state)
            )
            if taken.rowcount != 1:  # type: ignore[attr-defined]
                raise GoneError("this request was already answered 此授权请求已处理")
            if approve:
                grant = self._new_grant(row.patient_id, row.hospital_pk, row.valid_hours, "qr")
                grant.visit = row.visit
                session.add(grant)
                session.flush()
                session.execute(
                    update(GrantRequest).where(GrantRequest.pk == row.pk).values(grant_pk=grant.pk)
                )
            session.commit()
            session.refresh(row)
            return self._request_view(session, row)

    def _own(self, session: Session, code: str, patient_id: str) -> GrantRequest:
        row = session.scalar(
            select(GrantRequest).where(GrantRequest.code_sha256 == code_hash(code))
        )
        if row is None:
            raise InstanceNotFoundError("no such authorisation request 授权请求不存在")
        if row.patient_id != patient_id:
            raise AccessDeniedError("this request is for another patient 此授权请求不属于您")
        return row

    # --- grants ----------------------------------------------------------------------------

    def grant(self, patient_id: str, hospital_id: str, hours: int) -> GrantView:
        """A grant made on the patient's own page (method "patient_page")."""
        with self._sessions() as session:
            hospital_pk = session.scalar(
                select(Hospital.pk).where(Hospital.hospital_id == hospital_id)
            )
            if hospital_pk is None:
                raise InvalidQueryError(f"hospital {hospital_id} is not registered")
            row = self._new_grant(patient_id, hospital_pk, check_hours(hours), "patient_page")
            session.add(row)
            session.commit()
            return self._grant_views(session, [row.pk])[0]

    def list_for(self, patient_id: str) -> list[GrantView]:
        """The patient's grants, newest first, active and past."""
        with self._sessions() as session:
            pks = session.scalars(
                select(PatientGrant.pk)
                .where(PatientGrant.patient_id == patient_id)
                .order_by(PatientGrant.granted_at.desc(), PatientGrant.pk.desc())
            )
            return self._grant_views(session, list(pks))

    def revoke(self, patient_id: str, pk: int) -> GrantView:
        with self._sessions() as session:
            row = session.get(PatientGrant, pk)
            if row is None or row.patient_id != patient_id:
                raise InstanceNotFoundError(f"you have no authorisation {pk}")
            if row.revoked_at is None:
                row.revoked_at = self._clock()
                session.commit()
            return self._grant_views(session, [pk])[0]

    def _new_grant(
        self, patient_id: str, hospital_pk: int, hours: int, method: str
    ) -> PatientGrant:
        now = self._clock()
        return PatientGrant(
            patient_id=patient_id,
            hospital_pk=hospital_pk,
            method=method,
            granted_at=now,
            expires_at=now + timedelta(hours=hours),
        )

    def _grant_views(self, session: Session, pks: list[int]) -> list[GrantView]:
        now = self._clock()
        rows = session.execute(
            select(PatientGrant, Hospital.hospital_id, Hospital.name)
            .join(Hospital, PatientGrant.hospital_pk == Hospital.pk)
            .where(PatientGrant.pk.in_(pks))
        ).all()
        by_pk = {grant.pk: (grant, hid, name) for grant, hid, name in rows}
        views = []
        for pk in pks:
            grant, hospital_id, name = by_pk[pk]
            expires = aware(grant.expires_at)
            revoked = aware(grant.revoked_at) if grant.revoked_at else None
            views.append(
                GrantView(
                    grant.pk,
                    hospital_id,
                    name,
                    grant.visit,
                    grant.method,
                    aware(grant.granted_at),
                    expires,
                    revoked,
                    revoked is None and expires > now,
                )
            )
        return views

    def _request_view(self, session: Session, row: GrantRequest) -> RequestView:
        hospital = session.get(Hospital, row.hospital_pk)
        assert hospital is not None
        state = row.state
        if state == "pending" and aware(row.expires_at) <= self._clock():
            state = "expired"
        grant_expires = None
        if row.grant_pk is not None:
            grant = session.get(PatientGrant, row.grant_pk)
            grant_expires = aware(grant.expires_at) if grant else None
        return RequestView(
            row.pk,
            row.patient_id,
            hospital.hospital_id,
            hospital.name,
            row.requested_by,
            row.visit,
            row.valid_hours,
            state,
            aware(row.expires_at),
            grant_expires,
        )
