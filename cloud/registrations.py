"""Registration and review (Liaoning spec): hospitals and staff ask to join, admins decide.

A hospital's request waits in ``hospital_registrations`` until a platform admin approves it
(the hospital is created and its gateway credential shown once) or rejects it. A person's
request is a `User` with status ``pending``, which cannot sign in; a platform admin, or the
admin of the person's hospital, approves it with a role (and department and adjustments,
checked as in `cloud.directory_admin`) or rejects it. Reviews record who decided and when.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.orm import Session, sessionmaker

from cloud.access import AccessDeniedError, Principal
from cloud.directory_admin import (
    LOCAL_SCOPES,
    Assignment,
    ConflictError,
    InvalidRequestError,
    apply_assignment,
    reach_hospital,
    reach_user,
    require_platform,
    user_summary,
)
from cloud.errors import InstanceNotFoundError
from cloud.hospitals import AE_TITLE, HOSPITAL_ID, HospitalRegistry
from cloud.identity import UserDirectory, UserRef, roles
from cloud.models import Hospital, HospitalRegistration, User

STATES = ("pending", "approved", "rejected")


@dataclass(frozen=True)
class HospitalApproval:
    hospital_id: str
    credential: str  # the gateway's, shown this once


def _registration_summary(row: HospitalRegistration) -> dict[str, Any]:
    return {
        "id": row.pk,
        "hospital_id": row.hospital_id,
        "name": row.name,
        "ae_title": row.ae_title,
        "district": row.district,
        "level": row.level,
        "contact": row.contact,
        "state": row.state,
        "submitted_at": row.submitted_at.isoformat(),
        "reviewed_by": row.reviewed_by,
        "reviewed_at": row.reviewed_at.isoformat() if row.reviewed_at else None,
        "note": row.note,
    }


class Registrations:
    def __init__(self, sessions: sessionmaker[Session]) -> None:
        self._sessions = sessions
        self._hospitals = HospitalRegistry(sessions)
        self._users = UserDirectory(sessions)

    # --- asking ----------------------------------------------------------------------------

    def submit_hospital(
        self,
        hospital_id: str,
        name: str,
        *,
        contact: str,
        ae_title: str = "",
        district: str = "",
        level: str = "",
    ) -> int:
        """Record a hospital's request; its key identifies it to the reviewer."""
        if not HOSPITAL_ID.match(hospital_id):
            raise InvalidRequestError(
                f"hospital id {hospital_id!r}: use 1-64 letters, digits, '_', '.', '-'"
            )
        if ae_title and (len(ae_title) > 16 or not AE_TITLE.match(ae_title)):
            raise InvalidRequestError(f"AE title {ae_title!r} is not 1-16 printable characters")
        if not name.strip() or not contact.strip():
            raise InvalidRequestError("a hospital registration needs a name and a contact")
        with self._sessions() as session:
            if session.scalar(select(Hospital.pk).where(Hospital.hospital_id == hospital_id)):
                raise ConflictError(f"hospital {hospital_id} is already registered")
            waiting = session.scalar(
                select(HospitalRegistration.pk).where(
                    HospitalRegistration.hospital_id == hospital_id,
                    HospitalRegistration.state == "pending",
                )
            )
            if waiting is not None:
                raise ConflictError(f"hospital {hospital_id} already awaits review")
            row = HospitalRegistration(
                hospital_id=hospital_id,
                name=name.strip()[:128],
                ae_title=ae_title.strip(),
                district=district.strip()[:64],
                level=level.strip()[:32],
                contact=contact.strip()[:255],
                state="pending",
                submitted_at=datetime.now(UTC),
            )
            session.add(row)
            session.commit()
            return row.pk

    def submit_user(
        self,
        username: str,
        password: str,
        *,
        full_name: str,
        hospital_id: str,
        requested_role: str,
        department: str = "",
    ) -> UserRef:
        """A pending account: it cannot sign in until a reviewer approves it."""
        role = roles().get(requested_role)
        if role is None or not role.assignable or role.scope not in LOCAL_SCOPES:
            local = sorted(
                n for n, r in roles().items() if r.assignable and r.scope in LOCAL_SCOPES
            )
            raise InvalidRequestError(f"requested_role must be one of {', '.join(local)}")
        if not full_name.strip():
            raise InvalidRequestError("a registration needs the person's full name")
        with self._sessions() as session:
            active = session.scalar(
                select(Hospital.active).where(Hospital.hospital_id == hospital_id)
            )
        if not active:
            raise InvalidRequestError(f"hospital {hospital_id} is not registered")
        return self._users.create_user(
            username,
            password,
            requested_role,
            hospital_id=hospital_id,
            department=department,
            status="pending",
            full_name=full_name,
            requested_role=requested_role,
        )

    # --- reviewing -------------------------------------------------------------------------

    def listing(self, actor: Principal, state: str = "pending") -> dict[str, list[dict[str, Any]]]:
        """Hospital requests (platform admins only) and the user requests ``actor`` reviews."""
        if state not in STATES:
            raise InvalidRequestError(f"state must be one of {', '.join(STATES)}")
        hospitals: list[dict[str, Any]] = []
        users = select(User, Hospital.hospital_id).outerjoin(
            Hospital, User.hospital_pk == Hospital.pk
        )
        users = users.where(User.requested_role != "").order_by(User.created_at)
        if state == "approved":
            users = users.where(User.reviewed_at.is_not(None), User.status != "rejected")
        else:
            users = users.where(User.status == state)
        if actor.scope_kind != "platform":
            reach_hospital(actor, actor.hospital_pk)
            users = users.where(User.hospital_pk == actor.hospital_pk)
        with self._sessions() as session:
            if actor.scope_kind == "platform":
                rows = session.scalars(
                    select(HospitalRegistration)
                    .where(HospitalRegistration.state == state)
                    .order_by(HospitalRegistration.pk)
                )
                hospitals = [_registration_summary(row) for row in rows]
            found = [user_summary(row, hospital_id) for row, hospital_id in session.execute(users)]
        return {"hospitals": hospitals, "users": found}

    def approve_hospital(self, actor: Principal, pk: int) -> HospitalApproval:
        require_platform(actor, "approve hospitals")
        row = self._decide_hospital(actor, pk, "approved", "")
        try:
            credential = self._hospitals.add_hospital(
                row.hospital_id, row.name, ae_title=row.ae_title
            )
        except Exception:
            self._undo_decision(pk)  # so the request can be reviewed again
            raise
        with self._sessions() as session:
            session.execute(
                update(Hospital)
                .where(Hospital.hospital_id == row.hospital_id)
                .values(district=row.district, level=row.level)
            )
            session.commit()
        return HospitalApproval(row.hospital_id, credential)

    def reject_hospital(self, actor: Principal, pk: int, note: str) -> str:
        require_platform(actor, "reject hospitals")
        return self._decide_hospital(actor, pk, "rejected", note).hospital_id

    def approve_user(self, actor: Principal, username: str, change: Assignment) -> UserRef:
        """Activate a pending account with the reviewer's role (the requested one if none)."""
        with self._sessions() as session:
            row = self._pending_user(session, username)
            change = Assignment(
                role=change.role or row.requested_role,
                department=change.department,
                grant=change.grant,
                revoke=change.revoke,
                full_name=change.full_name,
            )
            apply_assignment(session, actor, row, change)
            self._reviewed(row, actor, "active")
            session.commit()
        found = self._users.by_username(username)
        assert found is not None
        return found

    def reject_user(self, actor: Principal, username: str) -> None:
        with self._sessions() as session:
            row = self._pending_user(session, username)
            reach_user(actor, row, Assignment())
            self._reviewed(row, actor, "rejected")
            session.commit()

    # --- helpers ---------------------------------------------------------------------------

    def _decide_hospital(
        self, actor: Principal, pk: int, state: str, note: str
    ) -> HospitalRegistration:
        """Move a pending request to ``state`` in one conditional UPDATE: of two reviewers
        deciding at once, one wins and the other gets 409."""
        with self._sessions() as session:
            row = session.get(HospitalRegistration, pk)
            if row is None:
                raise InstanceNotFoundError(f"hospital registration {pk} does not exist")
            claimed = session.execute(
                update(HospitalRegistration)
                .where(HospitalRegistration.pk == pk, HospitalRegistration.state == "pending")
                .values(
                    state=state,
                    reviewed_by=actor.name[:64],
                    reviewed_at=datetime.now(UTC),
                    note=note.strip(),
                )
            )
            session.commit()
            if claimed.rowcount != 1:  # type: ignore[attr-defined]
                raise ConflictError(f"hospital registration {pk} was already {row.state}")
            session.refresh(row)
            session.expunge(row)
            return row

    def _undo_decision(self, pk: int) -> None:
        with self._sessions() as session:
            session.execute(
                update(HospitalRegistration)
                .where(HospitalRegistration.pk == pk)
                .values(state="pending", reviewed_by="", reviewed_at=None)
            )
            session.commit()

    @staticmethod
    def _pending_user(session: Session, username: str) -> User:
        row = session.scalar(select(User).where(User.username == username))
        if row is None:
            raise InstanceNotFoundError(f"user {username} does not exist")
        if row.status != "pending":
            raise ConflictError(f"{username} is not awaiting review (status {row.status})")
        return row

    @staticmethod
    def _reviewed(row: User, actor: Principal, status: str) -> None:
        if actor.kind == "user" and actor.name == row.username:
            raise AccessDeniedError("nobody reviews their own registration")
        row.status = status
        row.reviewed_by, row.reviewed_at = actor.name[:64], datetime.now(UTC)
