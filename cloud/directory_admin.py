"""Who may change whose account, and how: departments, roles, permission adjustments, status.

Every change names the acting `Principal`. A platform-scoped actor reaches every account; a
hospital- or department-scoped one (a hospital admin) only its own hospital's, and never into
or out of a platform or regional role. Nobody grants a permission they do not hold, and nobody
changes their own role, permissions, department or status: an admin can neither promote nor
lock out themself. Roles and permission names are checked against `config/roles.toml`.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from cloud.access import AccessDeniedError, Principal
from cloud.errors import ArchiveError, InstanceNotFoundError, InvalidQueryError
from cloud.identity import (
    UserDirectory,
    UserRef,
    check_department,
    effective_permissions,
    roles,
)
from cloud.models import Department, Hospital, User

LOCAL_SCOPES = frozenset({"hospital", "department"})
ADMIN_STATUSES = ("active", "suspended", "retired")


class InvalidRequestError(InvalidQueryError):
    title = "Invalid request"


class ConflictError(ArchiveError):
    title = "Conflict"
    http_status = 409


def known_permissions() -> frozenset[str]:
    return frozenset().union(*(role.permissions for role in roles().values()))


def console_principal() -> Principal:
    """The operator at the server's console (the ``imaging-cloud admin`` commands)."""
    admin = roles()["platform_admin"]
    return Principal("system", "console", "platform_admin", admin.permissions, True, "platform")


@dataclass(frozen=True)
class Assignment:
    """A change to an account; None (or empty) leaves that part as it is."""

    role: str | None = None
    department: str | None = None
    grant: tuple[str, ...] = ()
    revoke: tuple[str, ...] = ()
    full_name: str | None = None

    def touches_access(self) -> bool:
        return bool(self.role or self.department is not None or self.grant or self.revoke)


@dataclass(frozen=True)
class DepartmentRef:
    hospital_id: str
    code: str
    name: str

    def as_dict(self) -> dict[str, str]:
        return {"hospital_id": self.hospital_id, "code": self.code, "name": self.name}


# --- authority ---------------------------------------------------------------------------------


def require_platform(actor: Principal, what: str) -> None:
    if actor.scope_kind != "platform":
        raise AccessDeniedError(f"only a platform admin may {what}")


def reach_hospital(actor: Principal, hospital_pk: int | None) -> None:
    """Platform admins reach every hospital; local admins their own only."""
    if actor.scope_kind == "platform":
        return
    if actor.scope_kind not in LOCAL_SCOPES or actor.hospital_pk is None:
        raise AccessDeniedError("only hospital and platform admins manage accounts")
    if hospital_pk != actor.hospital_pk:
        raise AccessDeniedError(f"you manage accounts of {actor.hospital_id} only")


def reach_user(actor: Principal, row: User, change: Assignment | None = None) -> None:
    """May ``actor`` change this account (``change`` None: its status)?"""
    if (
        actor.kind == "user"
        and actor.name == row.username
        and (change is None or change.touches_access())
    ):
        raise AccessDeniedError("nobody changes their own role, permissions or status")
    reach_hospital(actor, row.hospital_pk)
    role = roles().get(row.role)
    if actor.scope_kind != "platform" and (role is None or role.scope not in LOCAL_SCOPES):
        raise AccessDeniedError(f"only a platform admin changes {row.role} accounts")


def check_role(actor: Principal, role_name: str, hospital_pk: int | None) -> None:
    role = roles().get(role_name)
    if role is None or not role.assignable:
        assignable = sorted(name for name, r in roles().items() if r.assignable)
        raise InvalidRequestError(f"unknown role {role_name!r}; roles: {', '.join(assignable)}")
    if actor.scope_kind != "platform" and role.scope not in LOCAL_SCOPES:
        raise AccessDeniedError(f"only a platform admin assigns the {role_name} role")
    if role.scope in LOCAL_SCOPES and hospital_pk is None:
        raise InvalidRequestError(f"the {role_name} role needs an account of a hospital")


def check_permissions(actor: Principal, grant: Iterable[str], revoke: Iterable[str]) -> None:
    grant, revoke = list(grant), list(revoke)
    unknown = sorted(set(grant + revoke) - known_permissions())
    if unknown:
        known = ", ".join(sorted(known_permissions()))
        raise InvalidRequestError(f"unknown permission(s) {', '.join(unknown)}; known: {known}")
    beyond = sorted(set(grant) - actor.permissions)
    if beyond:
        raise AccessDeniedError(f"you cannot grant what you do not hold: {', '.join(beyond)}")


def apply_assignment(session: Session, actor: Principal, row: User, change: Assignment) -> None:
    """Check ``change`` against ``actor``'s authority and write it to ``row`` (not committed)."""
    reach_user(actor, row, change)
    role_name = change.role or row.role
    if change.role:
        check_role(actor, change.role, row.hospital_pk)
    check_permissions(actor, change.grant, change.revoke)
    department = row.department
    if change.department is not None:
        department = check_department(session, row.hospital_pk, change.department)
    role = roles()[role_name]
    if role.scope == "department" and not department:
        raise InvalidRequestError(f"the {role_name} role needs a department")
    granted = set(row.permissions_granted.split())
    revoked = set(row.permissions_revoked.split())
    for name in change.grant:
        granted.add(name)
        revoked.discard(name)
    for name in change.revoke:
        revoked.add(name)
        granted.discard(name)
    # Keep only real adjustments relative to the role, so a later role change reads plainly.
    row.permissions_granted = " ".join(sorted(granted - role.permissions))
    row.permissions_revoked = " ".join(sorted(revoked & role.permissions))
    row.role, row.department = role_name, department
    if change.full_name is not None:
        row.full_name = change.full_name.strip()[:128]


def user_summary(row: User, hospital_id: str | None) -> dict[str, Any]:
    role = roles().get(row.role)
    permissions = (
        effective_permissions(role, row.permissions_granted, row.permissions_revoked)
        if role
        else frozenset()
    )
    return {
        "username": row.username,
        "full_name": row.full_name,
        "role": row.role,
        "requested_role": row.requested_role,
        "hospital_id": hospital_id,
        "department": row.department,
        "status": row.status,
        "permissions": sorted(permissions),
        "granted": row.permissions_granted.split(),
        "revoked": row.permissions_revoked.split(),
        "oidc_linked": row.oidc_subject is not None,
        "created_at": row.created_at.isoformat(),
        "reviewed_by": row.reviewed_by,
        "reviewed_at": row.reviewed_at.isoformat() if row.reviewed_at else None,
    }


class DirectoryAdmin:
    """Account and department administration on behalf of an acting principal."""

    def __init__(self, sessions: sessionmaker[Session]) -> None:
        self._sessions = sessions
        self._users = UserDirectory(sessions)

    # --- departments -----------------------------------------------------------------------

    def departments(self, actor: Principal, hospital_id: str) -> list[DepartmentRef]:
        with self._sessions() as session:
            hospital = self._hospital(session, hospital_id)
            reach_hospital(actor, hospital.pk)
            rows = session.scalars(
                select(Department)
                .where(Department.hospital_pk == hospital.pk)
                .order_by(Department.code)
            )
            return [DepartmentRef(hospital_id, row.code, row.name) for row in rows]

    def add_department(
        self, actor: Principal, hospital_id: str, code: str, name: str = ""
    ) -> DepartmentRef:
        code, name = code.strip(), name.strip()
        if not code or len(code) > 64 or len(name) > 128:
            raise InvalidRequestError("a department needs a code of 1-64 and a name of ≤128 chars")
        with self._sessions() as session:
            hospital = self._hospital(session, hospital_id)
            reach_hospital(actor, hospital.pk)
            session.add(Department(hospital_pk=hospital.pk, code=code, name=name or code))
            try:
                session.commit()
            except IntegrityError as exc:
                raise ConflictError(f"{hospital_id} already has department {code!r}") from exc
        return DepartmentRef(hospital_id, code, name or code)

    # --- accounts --------------------------------------------------------------------------

    def list_users(self, actor: Principal, status: str | None = None) -> list[dict[str, Any]]:
        statement = (
            select(User, Hospital.hospital_id)
            .outerjoin(Hospital, User.hospital_pk == Hospital.pk)
            .order_by(User.username)
        )
        if actor.scope_kind != "platform":
            reach_hospital(actor, actor.hospital_pk)
            statement = statement.where(User.hospital_pk == actor.hospital_pk)
        if status:
            statement = statement.where(User.status == status)
        with self._sessions() as session:
            return [
                user_summary(row, hospital_id) for row, hospital_id in session.execute(statement)
            ]

    def create_user(
        self,
        actor: Principal,
        username: str,
        password: str,
        hospital_id: str | None,
        change: Assignment,
    ) -> UserRef:
        """An active account made directly by an admin (no review needed)."""
        hospital_pk = None
        if hospital_id:
            with self._sessions() as session:
                hospital_pk = session.scalar(
                    select(Hospital.pk).where(Hospital.hospital_id == hospital_id)
                )
            if hospital_pk is None:
                raise InvalidRequestError(f"hospital {hospital_id} is not registered")
        reach_hospital(actor, hospital_pk)
        role = change.role or ""
        check_role(actor, role, hospital_pk)
        check_permissions(actor, change.grant, change.revoke)
        if roles()[role].scope == "department" and not (change.department or "").strip():
            raise InvalidRequestError(f"the {role} role needs a department")
        self._users.create_user(
            username,
            password,
            role,
            hospital_id=hospital_id,
            department=change.department or "",
            full_name=change.full_name or "",
        )
        if change.grant or change.revoke:
            return self.update_user(
                actor, username, Assignment(grant=change.grant, revoke=change.revoke)
            )
        return self._ref(username)

    def update_user(self, actor: Principal, username: str, change: Assignment) -> UserRef:
        with self._sessions() as session:
            row = self._user(session, username)
            apply_assignment(session, actor, row, change)
            session.commit()
        return self._ref(username)

    def set_status(self, actor: Principal, username: str, status: str) -> UserRef:
        """Suspend, retire or reactivate; the account's tokens follow on their next use."""
        if status not in ADMIN_STATUSES:
            raise InvalidRequestError(f"status must be one of {', '.join(ADMIN_STATUSES)}")
        with self._sessions() as session:
            row = self._user(session, username)
            reach_user(actor, row)
            if row.status in ("pending", "rejected"):
                raise ConflictError(f"{username} is {row.status}: review the registration")
            row.status = status
            session.commit()
        return self._ref(username)

    # --- lookups ---------------------------------------------------------------------------

    @staticmethod
    def _hospital(session: Session, hospital_id: str) -> Hospital:
        row = session.scalar(select(Hospital).where(Hospital.hospital_id == hospital_id))
        if row is None:
            raise InstanceNotFoundError(f"hospital {hospital_id} is not registered")
        return row

    @staticmethod
    def _user(session: Session, username: str) -> User:
        row = session.scalar(select(User).where(User.username == username))
        if row is None:
            raise InstanceNotFoundError(f"user {username} does not exist")
        return row

    def _ref(self, username: str) -> UserRef:
        found = self._users.by_username(username)
        assert found is not None
        return found
