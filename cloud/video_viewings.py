"""Viewing records of surgical videos: who watched which video, from which organisation, from
when to when.

A page starts a record when playback begins and ends it when playback stops (pause, end of
the video, or the page going away); the duration is the server's own clock between the two,
so a page cannot claim more time than it was open. The record's id is random and unguessable,
and only the principal who started a record can end it. Experts (scope ``review``) watch only
in the frame of a review task they are assigned to and that is still open, so their viewings
always carry the task; the per-applicant statistics add up the task's viewing seconds.
"""

from __future__ import annotations

import re
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from cloud.access import REDACTED, AccessDeniedError, AccessPolicy, Principal
from cloud.database import as_utc
from cloud.errors import InstanceNotFoundError
from cloud.models import Hospital, ReviewTaskVideo, SurgicalVideo
from cloud.models import VideoViewing as ViewingRow
from cloud.video_review import (
    MANAGE,
    UID_PATTERN,
    ReviewClosedError,
    ReviewInputError,
    iso,
    visible_task,
)

PLAYBACK = "streaming_playback"
EXPERT_PANEL = "expert panel"
VIEWING_ID = re.compile(r"^[A-Za-z0-9_-]{16,32}$")
NO_SUCH_TASK = "no such review task"


@dataclass(frozen=True)
class StartedViewing:
    viewing_id: str
    started_at: datetime
    study_instance_uid: str
    patient_id: str
    task_id: int | None


def organisation_of(session: Session, who: Principal) -> str:
    """Where the viewer watches from: their hospital (``id name``), else the expert panel,
    the platform or region, a patient or a share link."""
    if who.kind == "patient":
        return "patient"
    if who.kind == "share_link":
        return "share link"
    if who.hospital_pk is not None:
        hospital = session.get(Hospital, who.hospital_pk)
        if hospital is not None:
            return f"{hospital.hospital_id} {hospital.name}"[:128]
    if who.scope_kind == "review":
        return EXPERT_PANEL
    return who.scope_kind  # platform | region


def viewer_as_seen(row: ViewingRow, who: Principal) -> str:
    """The viewer's name as ``who`` may read it: a patient's name is ``patient:<PatientID>``,
    so a reader without patient identity (``phi = false``, e.g. the auditor) sees it
    redacted, as the audit log shows it to them."""
    if row.viewer_kind == "patient" and not who.phi:
        return f"patient:{REDACTED}"
    return row.viewer


def _row_dict(row: ViewingRow, sop_instance_uid: str, who: Principal) -> dict[str, Any]:
    return {
        "viewingId": row.viewing_id,
        "sopInstanceUid": sop_instance_uid,
        "viewer": viewer_as_seen(row, who),
        "viewerKind": row.viewer_kind,
        "organisation": row.organisation,
        "startedAt": iso(row.started_at),
        "endedAt": iso(row.ended_at),
        "durationSeconds": row.duration_s,
        "taskId": row.task_pk,
    }


class VideoViewings:
    """The ``video_viewings`` table: started and ended by the watching page, read by managers
    and by those who hold ``view_logs``."""

    def __init__(self, sessions: sessionmaker[Session], access: AccessPolicy) -> None:
        self._sessions = sessions
        self._access = access

    def _video(self, session: Session, sop_instance_uid: str) -> SurgicalVideo:
        if len(sop_instance_uid) > 64 or not UID_PATTERN.match(sop_instance_uid):
            raise InstanceNotFoundError(f"{sop_instance_uid[:64]!r} is not a video's UID")
        video = session.scalar(
            select(SurgicalVideo).where(SurgicalVideo.sop_instance_uid == sop_instance_uid)
        )
        if video is None:
            raise InstanceNotFoundError(f"video {sop_instance_uid} is not in the catalogue")
        return video

    def start(
        self, who: Principal, sop_instance_uid: str, task_id: int | None = None
    ) -> StartedViewing:
        """Open a record; needs ``streaming_playback`` on the video's study, and for experts
        an open task of theirs that holds the video."""
        with self._sessions() as session:
            video = self._video(session, sop_instance_uid)
            owner = self._access.require_study(who, PLAYBACK, video.study_instance_uid)
            if who.scope_kind == "review" and task_id is None:
                raise ReviewInputError("experts watch within a review task: send its taskId")
            if task_id is not None:
                self._check_task(session, who, task_id, video.pk)
            row = ViewingRow(
                viewing_id=secrets.token_urlsafe(18),  # 24 characters, 144 random bits
                video_pk=video.pk,
                task_pk=task_id,
                viewer=who.name,
                viewer_kind=who.kind,
                organisation=organisation_of(session, who),
                started_at=datetime.now(UTC),
            )
            session.add(row)
            session.commit()
            return StartedViewing(
                row.viewing_id,
                as_utc(row.started_at),
                video.study_instance_uid,
                owner.patient_id,
                task_id,
            )

    @staticmethod
    def _check_task(session: Session, who: Principal, task_id: int, video_pk: int) -> None:
        """A viewing counts towards a task only for those who see the task: its assigned
        experts (while it is open) and its managers. Anyone else gets the same 404 whether
        the task exists or not, so a task id can neither be forged nor probed."""
        try:
            seen = visible_task(session, who, task_id)
        except InstanceNotFoundError:
            raise InstanceNotFoundError(NO_SUCH_TASK) from None
        if seen.task.status != "open":
            raise ReviewClosedError(f"review task {task_id} is closed")
        held = session.scalar(
            select(ReviewTaskVideo.pk).where(
                ReviewTaskVideo.task_pk == task_id, ReviewTaskVideo.video_pk == video_pk
            )
        )
        if held is None:
            raise ReviewInputError(f"review task {task_id} does not hold this video")

    def end(self, who: Principal, sop_instance_uid: str, viewing_id: str) -> float:
        """Close the record and give its duration; a second end keeps the first."""
        if not VIEWING_ID.match(viewing_id):
            raise InstanceNotFoundError("no such viewing of this video")
        with self._sessions() as session:
            video = self._video(session, sop_instance_uid)
            row = session.scalar(
                select(ViewingRow).where(
                    ViewingRow.viewing_id == viewing_id, ViewingRow.video_pk == video.pk
                )
            )
            if row is None:
                raise InstanceNotFoundError("no such viewing of this video")
            if row.viewer != who.name or row.viewer_kind != who.kind:
                raise AccessDeniedError("only the viewer who started a viewing ends it")
            if row.ended_at is None or row.duration_s is None:
                ended = datetime.now(UTC)
                row.ended_at = ended
                row.duration_s = round(
                    max(0.0, (ended - as_utc(row.started_at)).total_seconds()), 3
                )
                session.commit()
            return float(row.duration_s)

    def for_video(self, who: Principal, sop_instance_uid: str) -> tuple[str, list[dict[str, Any]]]:
        """Every viewing of one video, oldest first, for a manager or a ``view_logs`` holder
        whose scope reaches its study (regional auditors: every study), patient viewers
        redacted for readers without PHI. Returns the study too (for the audit entry)."""
        permission = MANAGE if who.may(MANAGE) else "view_logs"
        with self._sessions() as session:
            video = self._video(session, sop_instance_uid)
            self._access.require_study(who, permission, video.study_instance_uid)
            rows = session.scalars(
                select(ViewingRow)
                .where(ViewingRow.video_pk == video.pk)
                .order_by(ViewingRow.started_at, ViewingRow.pk)
            )
            return video.study_instance_uid, [_row_dict(r, sop_instance_uid, who) for r in rows]

    def for_task(self, who: Principal, task_id: int) -> list[dict[str, Any]]:
        """Every viewing made within a task, for its managers."""
        AccessPolicy.require(who, MANAGE)
        with self._sessions() as session:
            seen = visible_task(session, who, task_id)
            if not seen.manages:
                raise AccessDeniedError("the task's viewing records are for its managers")
            rows = session.execute(
                select(ViewingRow, SurgicalVideo.sop_instance_uid)
                .join(SurgicalVideo, SurgicalVideo.pk == ViewingRow.video_pk)
                .where(ViewingRow.task_pk == task_id)
                .order_by(ViewingRow.started_at, ViewingRow.pk)
            )
            return [_row_dict(row, sop, who) for row, sop in rows]
