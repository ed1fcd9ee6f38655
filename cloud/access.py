"""Access decisions: who may do what, to which studies.

A request acts as a `Principal`: a signed-in user (role from `config/roles.toml`, adjusted per
user), a patient signed in with their ID number and a one-time code, or a share link. The
permission says *what* (live view, download, ...); the `StudyScope` says *which studies*
(own department, own hospital plus patients' grants, own studies, a link's studies).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import bindparam, select
from sqlalchemy.orm import Session, sessionmaker

from cloud.errors import ArchiveError, InstanceNotFoundError
from cloud.identity import UserRef, effective_permissions, roles
from cloud.models import (
    Patient,
    PatientGrant,
    ReviewAssignment,
    ReviewTask,
    ReviewTaskVideo,
    ShareLink,
    ShareLinkStudy,
    Study,
    SurgicalVideo,
)
from cloud.scope import StudyScope

_OWNER = (
    select(Study.hospital_pk, Study.department, Patient.patient_id)
    .join(Patient, Study.patient_pk == Patient.pk)
    .where(Study.study_instance_uid == bindparam("uid"))
)
_GRANT = (
    select(PatientGrant.pk)
    .where(
        PatientGrant.patient_id == bindparam("patient_id"),
        PatientGrant.hospital_pk == bindparam("hospital_pk"),
        PatientGrant.revoked_at.is_(None),
        PatientGrant.expires_at > bindparam("now"),
    )
    .limit(1)
)


class AccessDeniedError(ArchiveError):
    title = "Forbidden"
    http_status = 403


@dataclass(frozen=True)
class Principal:
    """Who is acting: what they may do and whose studies they reach."""

    kind: str  # user | patient | share_link
    name: str  # username, "patient:<id>" or "share-link:<pk>"
    role: str
    permissions: frozenset[str]
    phi: bool
    scope_kind: str  # platform | region | hospital | department | review | patient | share_link
    hospital_pk: int | None = None
    hospital_id: str = ""
    department: str = ""
    patient_id: str = ""
    study_uids: frozenset[str] = field(default_factory=frozenset)
    share_link_pk: int | None = None

    def may(self, permission: str) -> bool:
        return permission in self.permissions

    def as_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "name": self.name,
            "username": self.name if self.kind == "user" else None,
            "role": self.role,
            "hospital_id": self.hospital_id or None,
            "department": self.department,
            "permissions": sorted(self.permissions),
            "phi": self.phi,
        }


@dataclass(frozen=True)
class StudyOwner:
    """What a scope decision needs to know about one study."""

    study_instance_uid: str
    hospital_pk: int | None
    department: str
    patient_id: str


class AccessPolicy:
    def __init__(self, sessions: sessionmaker[Session]) -> None:
        self._sessions = sessions

    # --- principals ------------------------------------------------------------------------

    @staticmethod
    def for_user(user: UserRef) -> Principal:
        role = roles()[user.role]
        return Principal(
            kind="user",
            name=user.username,
            role=user.role,
            permissions=effective_permissions(
                role, user.permissions_granted, user.permissions_revoked
            ),
            phi=role.phi,
            scope_kind=role.scope,
            hospital_pk=user.hospital_pk,
            hospital_id=user.hospital_id or "",
            department=user.department,
        )

    @staticmethod
    def for_patient(patient_id: str) -> Principal:
        role = roles()["patient"]
        return Principal(
            kind="patient",
            name=f"patient:{patient_id}",
            role="patient",
            permissions=role.permissions,
            phi=True,
            scope_kind="patient",
            patient_id=patient_id,
        )

    @staticmethod
    def for_share_link(pk: int, patient_id: str, study_uids: frozenset[str]) -> Principal:
        role = roles()["share_link"]
        return Principal(
            kind="share_link",
            name=f"share-link:{pk}",
            role="share_link",
            permissions=role.permissions,
            phi=role.phi,
            scope_kind="share_link",
            patient_id=patient_id,
            study_uids=study_uids,
            share_link_pk=pk,
        )

    def share_link_principal(self, pk: int, now: datetime | None = None) -> Principal | None:
        """The opened share link as a principal, or None once it is revoked or expired."""
        moment = now or datetime.now(UTC)
        with self._sessions() as session:
            link = session.get(ShareLink, pk)
            if link is None or link.revoked_at is not None or _aware(link.expires_at) <= moment:
                return None
            uids = session.scalars(
                select(ShareLinkStudy.study_instance_uid).where(ShareLinkStudy.share_link_pk == pk)
            )
            return self.for_share_link(pk, link.patient_id, frozenset(uids))

    # --- scope -----------------------------------------------------------------------------

    def scope(self, principal: Principal) -> StudyScope:
        """The studies ``principal`` reaches (grants are read by the search itself)."""
        kind = principal.scope_kind
        if kind in ("platform", "region"):
            # Regional roles hold no image permissions; their routes refuse before any search.
            return StudyScope(everything=True)
        if kind == "patient":
            return StudyScope(patient_ids=frozenset({principal.patient_id}))
        if kind == "share_link":
            return StudyScope(study_uids=principal.study_uids)
        if kind == "review":
            return StudyScope(study_uids=self.review_studies(principal.name))
        if principal.hospital_pk is None:
            return StudyScope()
        return StudyScope(
            hospital_pk=principal.hospital_pk,
            department=principal.department if kind == "department" else None,
            granted_to_hospital=principal.hospital_pk,
        )

    def review_studies(self, reviewer: str) -> frozenset[str]:
        """Studies of the videos in the open review tasks assigned to this expert: an expert
        panel member reaches those and nothing else, and only while the task is open."""
        with self._connect() as connection:
            rows = connection.execute(_REVIEW_STUDIES, {"reviewer": reviewer})
            return frozenset(row[0] for row in rows)

    def review_instances(self, reviewer: str) -> tuple[frozenset[str], frozenset[str]]:
        """The series and SOP instance UIDs of the videos in this expert's open tasks: within
        the studies `review_studies` admits, the only objects an expert may open (not the
        study's CT, another surgeon's video or the theatre panorama with staff faces)."""
        with self._connect() as connection:
            rows = list(connection.execute(_REVIEW_INSTANCES, {"reviewer": reviewer}))
        return frozenset(row[0] for row in rows), frozenset(row[1] for row in rows)

    def require_review_reach(
        self, principal: Principal, series: str | None, instance: str | None
    ) -> None:
        """For an expert (scope ``review``), refuse what lies outside their open tasks' videos:
        a request naming no series (study-level metadata, retrieve, renders return every
        object of the study), a series or an instance not among the task videos. Other
        principals pass untouched; their scope is the study."""
        if principal.scope_kind != "review":
            return
        if not series:
            raise AccessDeniedError(
                "review experts open the videos of their review tasks only, not whole studies"
            )
        series_uids, instance_uids = self.review_instances(principal.name)
        if series not in series_uids or (instance is not None and instance not in instance_uids):
            raise AccessDeniedError("this object is not a video of your open review tasks")

    def has_grant(self, patient_id: str, hospital_pk: int) -> bool:
        """Whether the patient's active grant lets this hospital see their other studies."""
        values = {"patient_id": patient_id, "hospital_pk": hospital_pk, "now": datetime.now(UTC)}
        with self._connect() as connection:
            return connection.execute(_GRANT, values).first() is not None

    def _connect(self) -> Any:
        return self._sessions.kw["bind"].connect()

    def study_owner(self, study_instance_uid: str) -> StudyOwner | None:
        # Every image request asks this: a prebuilt statement on a plain connection.
        with self._connect() as connection:
            row = connection.execute(_OWNER, {"uid": study_instance_uid}).first()
        if row is None:
            return None
        return StudyOwner(study_instance_uid, row[0], row[1], row[2])

    # --- decisions -------------------------------------------------------------------------

    @staticmethod
    def require(principal: Principal, permission: str) -> None:
        if not principal.may(permission):
            raise AccessDeniedError(
                f"your role ({principal.role}) does not include the {permission!r} permission"
            )

    def require_study(
        self, principal: Principal, permission: str, study_instance_uid: str
    ) -> StudyOwner:
        """The study, if ``principal`` holds ``permission`` and the study is in their scope."""
        self.require(principal, permission)
        owner = self.study_owner(study_instance_uid)
        if owner is None:
            raise InstanceNotFoundError(f"study {study_instance_uid} is not in the archive")
        scope = self.scope(principal)
        admitted = scope.admits_directly(
            owner.hospital_pk, owner.department, owner.patient_id, owner.study_instance_uid
        ) or (
            scope.granted_to_hospital is not None
            and self.has_grant(owner.patient_id, scope.granted_to_hospital)
        )
        if not admitted:
            raise AccessDeniedError(_out_of_scope(principal))
        return owner


# What readers without PHI see in place of patient identity (audit log, viewing records).
REDACTED = "(redacted)"


def _open_review_videos(*columns: Any) -> Any:
    """``columns`` of the videos in the open review tasks assigned to ``:reviewer``."""
    return (
        select(*columns)
        .join(ReviewTaskVideo, ReviewTaskVideo.video_pk == SurgicalVideo.pk)
        .join(ReviewTask, ReviewTask.pk == ReviewTaskVideo.task_pk)
        .join(ReviewAssignment, ReviewAssignment.task_pk == ReviewTask.pk)
        .where(ReviewAssignment.reviewer == bindparam("reviewer"), ReviewTask.status == "open")
        .distinct()
    )


_REVIEW_STUDIES = _open_review_videos(SurgicalVideo.study_instance_uid)
_REVIEW_INSTANCES = _open_review_videos(
    SurgicalVideo.series_instance_uid, SurgicalVideo.sop_instance_uid
)


def _out_of_scope(principal: Principal) -> str:
    if principal.scope_kind in ("hospital", "department"):
        return (
            "this study belongs to another hospital or department; the patient has not "
            "authorised your hospital to see it"
        )
    return "this study is not among those you may see"


def _aware(moment: datetime) -> datetime:
    """SQLite returns naive datetimes for timezone-aware columns; they are stored as UTC."""
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)
