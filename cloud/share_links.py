"""Links to studies: share links (capability URLs) and the report QR's study references.

A share link's token is 256 random bits in the URL ``/s/<token>``; the index keeps only its
SHA-256 (a slow hash adds nothing for a random token), the optional password as argon2. A
link lives 5 min, 30 min, 1 h or 24 h and can be revoked at once by whoever made it.

A report's QR code must not print the Study Instance UID, and must not be guessable:
``/r/<pk>.<mac>`` names the study's index row plus an HMAC of its UID under a key kept in the
data directory, so only references the cloud made resolve.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from cloud.errors import InstanceNotFoundError, InvalidQueryError
from cloud.grants import GoneError
from cloud.identity import AuthenticationError
from cloud.models import Patient, ShareLink, ShareLinkStudy, Study
from cloud.patients import Clock, aware, utc_now

EXPIRY_CHOICES = (300, 1800, 3600, 86400)
MAX_STUDIES = 50
PASSWORD_LENGTHS = (8, 128)

_hasher = PasswordHasher()


class PasswordRequiredError(AuthenticationError):
    title = "Password required"


def check_request(study_uids: Sequence[str], expires_in: int, password: str | None) -> None:
    """Refuse (400) a link request with a bad study count, lifetime or password."""
    if not 1 <= len(set(study_uids)) <= MAX_STUDIES:
        raise InvalidQueryError(f"share 1..{MAX_STUDIES} studies")
    if expires_in not in EXPIRY_CHOICES:
        choices = ", ".join(str(c) for c in EXPIRY_CHOICES)
        raise InvalidQueryError(f"expires_in must be one of {choices} seconds")
    low, high = PASSWORD_LENGTHS
    if password is not None and not low <= len(password) <= high:
        raise InvalidQueryError(
            f"a link password needs {low}..{high} characters 密码需8至128个字符"
        )


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


@dataclass(frozen=True)
class LinkView:
    pk: int
    patient_id: str
    study_uids: list[str]
    has_password: bool
    created_at: datetime
    expires_at: datetime
    revoked_at: datetime | None
    opened_count: int
    active: bool

    def as_dict(self) -> dict[str, Any]:
        return {
            "id": self.pk,
            "study_uids": self.study_uids,
            "password": self.has_password,
            "created_at": self.created_at.isoformat(),
            "expires_at": self.expires_at.isoformat(),
            "revoked_at": self.revoked_at.isoformat() if self.revoked_at else None,
            "opened_count": self.opened_count,
            "active": self.active,
        }


class ShareLinks:
    def __init__(self, sessions: sessionmaker[Session], clock: Clock = utc_now) -> None:
        self._sessions = sessions
        self._clock = clock

    def create(
        self,
        creator_kind: str,
        creator: str,
        study_uids: Sequence[str],
        expires_in: int,
        password: str | None,
    ) -> tuple[str, LinkView]:
        """A new link to studies of one patient (access already checked by the caller);
        returns the token (shown once) and the link."""
        check_request(study_uids, expires_in, password)
        uids = sorted(set(study_uids))
        token = secrets.token_urlsafe(32)
        now = self._clock()
        with self._sessions() as session:
            row = ShareLink(
                token_sha256=token_hash(token),
                created_by_kind=creator_kind,
                created_by=creator,
                patient_id=self._one_patient(session, uids),
                password_hash=_hasher.hash(password) if password else None,
                created_at=now,
                expires_at=now + timedelta(seconds=expires_in),
                opened_count=0,
            )
            session.add(row)
            session.flush()
            session.add_all(
                ShareLinkStudy(share_link_pk=row.pk, study_instance_uid=u) for u in uids
            )
            session.commit()
            return token, self._view(session, row)

    @staticmethod
    def _one_patient(session: Session, uids: list[str]) -> str:
        rows = session.execute(
            select(Study.study_instance_uid, Patient.patient_id)
            .join(Patient, Study.patient_pk == Patient.pk)
            .where(Study.study_instance_uid.in_(uids))
        ).all()
        missing = set(uids) - {uid for uid, _ in rows}
        if missing:
            raise InstanceNotFoundError(f"study {sorted(missing)[0]} is not in the archive")
        patients = {patient for _, patient in rows}
        if len(patients) != 1:
            raise InvalidQueryError("a share link holds studies of one patient only")
        return patients.pop()

    def status(self, token: str) -> LinkView:
        """The live link named by ``token``; 404 unknown, 410 expired or revoked."""
        with self._sessions() as session:
            return self._view(session, self._live(session, token))

    def open(self, token: str, password: str | None) -> LinkView:
        """Check the password (if the link has one) and count the opening."""
        with self._sessions() as session:
            row = self._live(session, token)
            if row.password_hash is not None:
                if not password:
                    raise PasswordRequiredError("this link needs a password 此链接需要密码")
                try:
                    _hasher.verify(row.password_hash, password)
                except (VerificationError, InvalidHashError) as exc:
                    raise AuthenticationError("wrong password 密码错误") from exc
            row.opened_count += 1
            session.commit()
            return self._view(session, row)

    def _live(self, session: Session, token: str) -> ShareLink:
        row = session.scalar(select(ShareLink).where(ShareLink.token_sha256 == token_hash(token)))
        if row is None:
            raise InstanceNotFoundError("this share link does not exist 分享链接不存在")
        if row.revoked_at is not None:
            raise GoneError("this share link was revoked 分享链接已被撤销")
        if aware(row.expires_at) <= self._clock():
            raise GoneError("this share link has expired 分享链接已过期")
        return row

    def list_for(self, creator_kind: str, creator: str) -> list[LinkView]:
        with self._sessions() as session:
            rows = session.scalars(
                select(ShareLink)
                .where(ShareLink.created_by_kind == creator_kind, ShareLink.created_by == creator)
                .order_by(ShareLink.created_at.desc(), ShareLink.pk.desc())
            )
            return [self._view(session, row) for row in rows]

    def revoke(self, pk: int, creator_kind: str, creator: str) -> LinkView:
        """Revoke a link its creator made; every token opened from it stops at once."""
        with self._sessions() as session:
            row = session.get(ShareLink, pk)
            if row is None or (row.created_by_kind, row.created_by) != (creator_kind, creator):
                raise InstanceNotFoundError(f"you have no share link {pk}")
            if row.revoked_at is None:
                row.revoked_at = self._clock()
                session.commit()
            return self._view(session, row)

    def _view(self, session: Session, row: ShareLink) -> LinkView:
        uids = session.scalars(
            select(ShareLinkStudy.study_instance_uid).where(ShareLinkStudy.share_link_pk == row.pk)
        )
        expires = aware(row.expires_at)
        revoked = aware(row.revoked_at) if row.revoked_at else None
        return LinkView(
            row.pk,
            row.patient_id,
            sorted(uids),
            row.password_hash is not None,
            aware(row.created_at),
            expires,
            revoked,
            row.opened_count,
            revoked is None and expires > self._clock(),
        )


def load_key(path: Path) -> bytes:
    """A 32-byte secret kept in ``path`` (created 0600 on first use)."""
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            return path.read_bytes()  # another process made it first
        with os.fdopen(descriptor, "wb") as handle:
            handle.write(secrets.token_bytes(32))
    return path.read_bytes()


class ReportRefs:
    """Opaque, unforgeable references to studies for the QR codes printed on reports."""

    def __init__(self, sessions: sessionmaker[Session], key: bytes) -> None:
        self._sessions = sessions
        self._key = key

    def _mac(self, pk: int, uid: str) -> str:
        digest = hmac.new(self._key, f"{pk}:{uid}".encode(), hashlib.sha256).digest()
        return base64.urlsafe_b64encode(digest[:16]).decode().rstrip("=")

    def ref(self, study_instance_uid: str) -> str:
        with self._sessions() as session:
            pk = session.scalar(
                select(Study.pk).where(Study.study_instance_uid == study_instance_uid)
            )
        if pk is None:
            raise InstanceNotFoundError(f"study {study_instance_uid} is not in the archive")
        return self.ref_of(pk, study_instance_uid)

    def ref_of(self, study_pk: int, study_instance_uid: str) -> str:
        """The reference of a study whose index key is already known."""
        return f"{study_pk}.{self._mac(study_pk, study_instance_uid)}"

    def resolve(self, ref: str) -> str | None:
        """The Study Instance UID ``ref`` names, or None if the cloud never made it."""
        number, _, mac = ref.partition(".")
        if not number.isdigit() or not mac or len(number) > 18:
            return None
        with self._sessions() as session:
            uid = session.scalar(select(Study.study_instance_uid).where(Study.pk == int(number)))
        if uid is None or not hmac.compare_digest(mac, self._mac(int(number), uid)):
            return None
        return uid
