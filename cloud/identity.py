"""Identity: users with argon2 passwords, roles from `config/roles.toml`, signed access tokens.

A token is a JWT (HS256) signed with a key kept in the data directory; it names the user and
expires. Every use of a token looks the user up again, so a suspended or retired account is
refused at once even while its token has not expired.
"""

from __future__ import annotations

import os
import re
import secrets
import time
import tomllib
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import cache
from pathlib import Path
from typing import Any

import jwt
from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from sqlalchemy import bindparam, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from cloud.errors import ArchiveError, InvalidQueryError
from cloud.models import Department, Hospital, User

ROLES_FILE = Path(__file__).resolve().parents[1] / "config" / "roles.toml"
USERNAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.@-]{1,63}$")
STATUSES = ("pending", "active", "suspended", "retired", "rejected")
MIN_PASSWORD_LENGTH = 10
TOKEN_SECONDS = 8 * 3600  # one working shift

_hasher = PasswordHasher()
# Verified against when the username is unknown, so both cases cost one argon2 verification
# and the response time does not tell which usernames exist.
_DUMMY_HASH = _hasher.hash(secrets.token_urlsafe(16))


class UserExistsError(ArchiveError):
    title = "User already exists"
    http_status = 409


class AuthenticationError(ArchiveError):
    title = "Unauthorized"
    http_status = 401


@dataclass(frozen=True)
class Role:
    name: str
    label: str
    scope: str
    phi: bool
    permissions: frozenset[str]
    # Patients and share links are principals too, but no account can be given their role.
    assignable: bool = True


@cache
def roles(path: Path = ROLES_FILE) -> dict[str, Role]:
    """The role matrix, as data; a malformed file is an error naming the role."""
    document = tomllib.loads(path.read_text(encoding="utf-8"))
    found: dict[str, Role] = {}
    for name, entry in document.get("roles", {}).items():
        try:
            found[name] = Role(
                name,
                str(entry["label"]),
                str(entry["scope"]),
                bool(entry["phi"]),
                frozenset(str(p) for p in entry["permissions"]),
                bool(entry.get("assignable", True)),
            )
        except (KeyError, TypeError) as exc:
            raise ValueError(f"{path}: role {name!r} needs label, scope, phi, permissions") from exc
    return found


def effective_permissions(role: Role, granted: str = "", revoked: str = "") -> frozenset[str]:
    """The role's permissions with the user's own additions and removals (space-separated)."""
    return (role.permissions | frozenset(granted.split())) - frozenset(revoked.split())


@dataclass(frozen=True)
class UserRef:
    pk: int
    username: str
    role: str
    hospital_id: str | None
    department: str
    status: str
    hospital_pk: int | None = None
    full_name: str = ""
    permissions_granted: str = ""
    permissions_revoked: str = ""

    def as_dict(self) -> dict[str, Any]:
        role = roles().get(self.role)
        permissions = (
            effective_permissions(role, self.permissions_granted, self.permissions_revoked)
            if role
            else frozenset()
        )
        return {
            "username": self.username,
            "full_name": self.full_name,
            "role": self.role,
            "hospital_id": self.hospital_id,
            "department": self.department,
            "status": self.status,
            "permissions": sorted(permissions),
            "phi": bool(role and role.phi),
        }


class TokenSigner:
    """Issues and checks access tokens with a key from ``key_file`` (created 0600 if absent)."""

    def __init__(self, key_file: Path, lifetime_seconds: int = TOKEN_SECONDS) -> None:
        self.lifetime_seconds = lifetime_seconds
        if not key_file.exists():
            key_file.parent.mkdir(parents=True, exist_ok=True)
            descriptor = os.open(key_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(descriptor, "wb") as handle:
                handle.write(secrets.token_bytes(32))
        self._key = key_file.read_bytes()

    def issue(self, user: UserRef) -> str:
        return self.issue_for(user.username, "user", role=user.role)

    def issue_for(
        self, subject: str, kind: str, lifetime_seconds: int | None = None, **extra: Any
    ) -> str:
        """A token for a user, a patient (``pid``) or an opened share link (``link``)."""
        now = int(time.time())
        claims = {"sub": subject, "kind": kind, "iat": now, **extra}
        claims["exp"] = now + (lifetime_seconds or self.lifetime_seconds)
        return jwt.encode(claims, self._key, algorithm="HS256")

    def claims(self, token: str) -> dict[str, Any]:
        """The claims of a valid, unexpired token; AuthenticationError otherwise."""
        try:
            claims: dict[str, Any] = jwt.decode(
                token, self._key, algorithms=["HS256"], options={"require": ["exp", "sub"]}
            )
        except jwt.ExpiredSignatureError as exc:
            raise AuthenticationError("the access token has expired; sign in again") from exc
        except jwt.InvalidTokenError as exc:
            raise AuthenticationError("the access token is not valid") from exc
        return claims

    def subject(self, token: str) -> str:
        """The username a valid, unexpired user token names; AuthenticationError otherwise."""
        claims = self.claims(token)
        if claims.get("kind", "user") != "user":
            raise AuthenticationError("this token is not a staff sign-in")
        return str(claims["sub"])


def check_department(session: Session, hospital_pk: int | None, department: str) -> str:
    """``department`` (a code of the departments table) if the hospital has it, else refuse;
    the code is what department-scoped roles match against studies' department."""
    code = department.strip()
    if not code:
        return ""
    if hospital_pk is None:
        raise InvalidQueryError("a department needs a hospital: departments belong to one")
    known = session.scalar(
        select(Department.pk).where(Department.hospital_pk == hospital_pk, Department.code == code)
    )
    if known is None:
        raise InvalidQueryError(f"department {code!r} is not registered at this hospital")
    return code


_USER_BY_NAME = (
    select(
        User.pk,
        User.username,
        User.role,
        Hospital.hospital_id,
        User.department,
        User.status,
        User.hospital_pk,
        User.full_name,
        User.permissions_granted,
        User.permissions_revoked,
    )
    .outerjoin(Hospital, User.hospital_pk == Hospital.pk)
    .where(User.username == bindparam("username"))
)


class UserDirectory:
    def __init__(self, sessions: sessionmaker[Session]) -> None:
        self._sessions = sessions

    def _connect(self) -> Any:
        """A plain connection (no ORM session) for the hot read path."""
        return self._sessions.kw["bind"].connect()

    def create_user(
        self,
        username: str,
        password: str,
        role: str,
        *,
        hospital_id: str | None = None,
        department: str = "",
        status: str = "active",
        full_name: str = "",
        requested_role: str = "",
    ) -> UserRef:
        """A new user; ``status="pending"`` for self-registration (cannot sign in yet)."""
        if not USERNAME.match(username):
            raise InvalidQueryError(
                f"username {username!r}: 2-64 letters, digits, '_', '.', '@', '-'"
            )
        if len(password) < MIN_PASSWORD_LENGTH:
            raise InvalidQueryError(f"passwords need at least {MIN_PASSWORD_LENGTH} characters")
        if role not in roles() or not roles()[role].assignable:
            assignable = sorted(name for name, r in roles().items() if r.assignable)
            raise InvalidQueryError(f"unknown role {role!r}; roles: {', '.join(assignable)}")
        if status not in STATUSES:
            raise InvalidQueryError(f"status must be one of {', '.join(STATUSES)}")
        with self._sessions() as session:
            hospital_pk = None
            if hospital_id:
                hospital_pk = session.scalar(
                    select(Hospital.pk).where(Hospital.hospital_id == hospital_id)
                )
                if hospital_pk is None:
                    raise InvalidQueryError(f"hospital {hospital_id} is not registered")
            row = User(
                username=username,
                password_hash=_hasher.hash(password),
                role=role,
                hospital_pk=hospital_pk,
                department=check_department(session, hospital_pk, department),
                status=status,
                created_at=datetime.now(UTC),
                full_name=full_name.strip()[:128],
                requested_role=requested_role,
            )
            session.add(row)
            try:
                session.commit()
            except IntegrityError as exc:
                raise UserExistsError(f"user {username} already exists") from exc
        found = self.by_username(username)
        assert found is not None
        return found

    def by_username(self, username: str) -> UserRef | None:
        # This runs on every request of a signed-in user: one prepared statement on a plain
        # connection, no ORM session.
        with self._connect() as connection:
            row = connection.execute(_USER_BY_NAME, {"username": username}).first()
        return None if row is None else UserRef(*row)

    def by_oidc_subject(self, subject: str) -> UserRef | None:
        """The user linked to this OpenID Connect subject (``sub``), if any."""
        with self._sessions() as session:
            username = session.scalar(select(User.username).where(User.oidc_subject == subject))
        return None if username is None else self.by_username(username)

    def link_oidc_subject(self, username: str, subject: str) -> bool:
        """Link an account not yet linked to ``subject``; False if it is linked already."""
        with self._sessions() as session:
            row = session.scalar(select(User).where(User.username == username))
            if row is None or row.oidc_subject is not None:
                return False
            row.oidc_subject = subject
            try:
                session.commit()
            except IntegrityError:  # the subject went to another account meanwhile
                return False
        return True

    def authenticate(self, username: str, password: str) -> UserRef:
        """The active user with this password; AuthenticationError (one message) otherwise."""
        with self._sessions() as session:
            stored = session.scalar(select(User.password_hash).where(User.username == username))
        try:
            _hasher.verify(stored or _DUMMY_HASH, password)
        except (VerificationError, InvalidHashError):
            stored = None
        user = self.by_username(username) if stored else None
        if user is None or user.status != "active":
            raise AuthenticationError("wrong username or password, or the account is not active")
        return user

    def set_status(self, username: str, status: str) -> None:
        if status not in STATUSES:
            raise InvalidQueryError(f"status must be one of {', '.join(STATUSES)}")
        with self._sessions() as session:
            row = session.scalar(select(User).where(User.username == username))
            if row is None:
                raise InvalidQueryError(f"user {username} does not exist")
            row.status = status
            session.commit()
