"""Expert review of surgical videos: tasks, blind scoring, comments and per-applicant figures.

A professional-title application (职称评审) is judged by an expert panel that watches the
applicant's surgical videos and scores them on a form (``config/video_review.toml``, or the
task's own). A manager (``manage_video_review``: a hospital admin for its own hospital's
videos, the platform admin for all) sets up a task; each assigned expert (``video_review``)
scores it once, and may change their scores while the task is open. The review is blind:
an expert sees their own scores only, never the other experts' nor the patient's identity
(the ``video_expert`` role has ``phi = false``), but every comment of the task, so that
remarks at a moment of a video can be discussed. Closing a task ends the experts' reach to
its studies (`cloud.access.AccessPolicy.review_studies` reads open tasks only).

Nothing here knows HTTP: refusals are `ArchiveError` subclasses the API maps to problem+json.
"""

from __future__ import annotations

import json
import math
import re
import tomllib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import lru_cache
from pathlib import Path
from typing import Any, TypeGuard

from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from cloud.access import AccessDeniedError, AccessPolicy, Principal
from cloud.database import as_utc
from cloud.errors import ArchiveError, InstanceNotFoundError
from cloud.identity import UserDirectory
from cloud.models import (
    Hospital,
    ReviewAssignment,
    ReviewComment,
    ReviewTask,
    ReviewTaskVideo,
    SurgicalVideo,
    VideoViewing,
)

FORM_FILE = Path(__file__).resolve().parents[1] / "config" / "video_review.toml"
MANAGE = "manage_video_review"
REVIEW = "video_review"
RECOMMENDATIONS = ("pass", "fail")
MAX_COMMENT = 4000
_KEY = re.compile(r"^[a-z][a-z0-9_]{0,31}$")
UID_PATTERN = re.compile(r"^[0-9]+(\.[0-9]+)*$")


class ReviewInputError(ArchiveError):
    """What was sent cannot make or score a review (unknown video, missing criterion...)."""

    http_status = 422
    title = "Invalid review input"


class ReviewClosedError(ArchiveError):
    """The task is closed: its scores and comments are final."""

    http_status = 409
    title = "Review task closed"


def plain_text(*values: str) -> None:
    """Refuse NUL characters, which no text column of PostgreSQL can hold."""
    if any("\x00" in value for value in values):
        raise ReviewInputError("text may not contain NUL characters")


def _number(value: float) -> float | int:
    """Whole numbers as ints, so a form reads ``15``, not ``15.0``."""
    return int(value) if float(value).is_integer() else round(value, 2)


def _aware(moment: datetime | None) -> datetime | None:
    return None if moment is None else as_utc(moment)


def iso(moment: datetime | None) -> str | None:
    aware = _aware(moment)
    return aware.isoformat() if aware else None


# --- the scoring form ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Criterion:
    key: str
    label: str
    max: float


@dataclass(frozen=True)
class ReviewForm:
    """The criteria with their maximum points, and the total needed to pass."""

    criteria: tuple[Criterion, ...]
    pass_mark: float

    @property
    def max_total(self) -> float:
        return sum(c.max for c in self.criteria)

    def as_dict(self) -> dict[str, Any]:
        return {
            "criteria": [
                {"key": c.key, "label": c.label, "max": _number(c.max)} for c in self.criteria
            ],
            "passMark": _number(self.pass_mark),
            "maxTotal": _number(self.max_total),
        }

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any]) -> ReviewForm:
        """A checked form from JSON (``passMark``) or TOML (``pass_mark``)."""
        raw = data.get("criteria")
        if not isinstance(raw, list) or not raw:
            raise ReviewInputError("a form needs a non-empty list of criteria")
        criteria: list[Criterion] = []
        for item in raw:
            if not isinstance(item, Mapping):
                raise ReviewInputError("each criterion is an object {key, label, max}")
            key, label, top = item.get("key"), item.get("label"), item.get("max")
            if not isinstance(key, str) or not _KEY.match(key):
                raise ReviewInputError(f"criterion key {key!r}: lower-case letters, digits, '_'")
            if any(c.key == key for c in criteria):
                raise ReviewInputError(f"criterion {key!r} appears twice")
            if (
                not isinstance(label, str)
                or not label.strip()
                or len(label) > 200
                or "\x00" in label
            ):
                raise ReviewInputError(f"criterion {key!r} needs a label (1-200 characters)")
            if not _finite(top) or float(top) <= 0 or float(top) > 1000:
                raise ReviewInputError(f"criterion {key!r}: max must be a number in (0, 1000]")
            criteria.append(Criterion(key, label.strip(), float(top)))
        mark = data.get("passMark", data.get("pass_mark"))
        total = sum(c.max for c in criteria)
        if not _finite(mark) or not 0 <= float(mark) <= total:
            raise ReviewInputError(f"passMark must be a number from 0 to the form's total {total}")
        return cls(tuple(criteria), float(mark))

    @classmethod
    def from_json(cls, text: str) -> ReviewForm:
        return cls.from_mapping(json.loads(text))

    def to_json(self) -> str:
        return json.dumps(self.as_dict(), ensure_ascii=False)

    def scored(self, scores: Mapping[str, Any]) -> tuple[dict[str, float], float]:
        """The checked points per criterion and their total: every criterion, nothing else,
        each from 0 to its maximum."""
        known = {c.key for c in self.criteria}
        unknown = sorted(set(scores) - known)
        if unknown:
            raise ReviewInputError(f"the form has no criterion {', '.join(unknown)}")
        checked: dict[str, float] = {}
        for criterion in self.criteria:
            if criterion.key not in scores:
                raise ReviewInputError(f"no score for {criterion.key} ({criterion.label})")
            points = scores[criterion.key]
            if not _finite(points) or not 0 <= float(points) <= criterion.max:
                raise ReviewInputError(
                    f"{criterion.key}: points must be from 0 to {_number(criterion.max)}"
                )
            checked[criterion.key] = float(points)
        return checked, round(sum(checked.values()), 2)


def _finite(value: Any) -> TypeGuard[float]:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


@lru_cache(maxsize=4)
def default_form(path: Path = FORM_FILE) -> ReviewForm:
    """The form of ``config/video_review.toml``, checked like a task's own."""
    try:
        document = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ArchiveError(f"cannot read the review form {path}: {exc}") from exc
    return ReviewForm.from_mapping(document)


# --- tasks --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TaskSpec:
    """What a manager asks for: the applicant's videos, the experts, the form, the deadline."""

    title: str
    applicant: str
    videos: Sequence[str]
    reviewers: Sequence[str]
    form: Mapping[str, Any] | None = None
    due_at: datetime | None = None


@dataclass(frozen=True)
class CommentSpec:
    text: str
    sop_instance_uid: str | None = None
    at_seconds: float | None = None


@dataclass(frozen=True)
class Visible:
    """A task as one principal reaches it: as its manager, as one of its experts, or both."""

    task: ReviewTask
    manages: bool
    assignment: ReviewAssignment | None


def manages_all(who: Principal) -> bool:
    return who.scope_kind == "platform"


def _manager_scope(who: Principal) -> Any:
    """The SQL condition on tasks a manager reaches (everything for the platform)."""
    if manages_all(who):
        return ReviewTask.pk.is_not(None)
    if who.hospital_pk is None:
        return ReviewTask.pk.is_(None)
    return ReviewTask.hospital_pk == who.hospital_pk


def visible_task(session: Session, who: Principal, task_id: int) -> Visible:
    """The task if ``who`` manages it or is assigned to it; 404 otherwise, so a stranger
    cannot tell which tasks exist."""
    task = session.get(ReviewTask, task_id)
    manages = (
        task is not None
        and who.may(MANAGE)
        and (
            manages_all(who)
            or (who.hospital_pk is not None and task.hospital_pk == who.hospital_pk)
        )
    )
    assignment = None
    if task is not None and who.kind == "user" and who.may(REVIEW):
        assignment = session.scalar(
            select(ReviewAssignment).where(
                ReviewAssignment.task_pk == task.pk, ReviewAssignment.reviewer == who.name
            )
        )
    if task is None or not (manages or assignment is not None):
        raise InstanceNotFoundError(f"review task {task_id} not found among your tasks")
    return Visible(task, manages, assignment)


def task_videos(session: Session, task_pk: int) -> list[SurgicalVideo]:
    return list(
        session.scalars(
            select(SurgicalVideo)
            .join(ReviewTaskVideo, ReviewTaskVideo.video_pk == SurgicalVideo.pk)
            .where(ReviewTaskVideo.task_pk == task_pk)
            .order_by(ReviewTaskVideo.pk)
        )
    )


def _video_dict(video: SurgicalVideo, phi: bool) -> dict[str, Any]:
    found = {
        "sopInstanceUid": video.sop_instance_uid,
        "studyInstanceUid": video.study_instance_uid,
        "seriesInstanceUid": video.series_instance_uid,
        "procedure": video.procedure,
        "surgeon": video.surgeon,
        "durationSeconds": video.duration_s,
        "cameraRole": video.camera_role,
        "operationDate": video.operation_date,
        "renderedPath": (
            f"/studies/{video.study_instance_uid}/series/{video.series_instance_uid}"
            f"/instances/{video.sop_instance_uid}"
        ),
    }
    if phi:
        found["patientId"] = video.patient_id
    return found


def _assignment_dict(row: ReviewAssignment, with_scores: bool = True) -> dict[str, Any]:
    found: dict[str, Any] = {
        "reviewer": row.reviewer,
        "submitted": row.submitted_at is not None,
        "submittedAt": iso(row.submitted_at),
    }
    if with_scores:
        found |= {
            "scores": json.loads(row.scores) if row.scores else {},
            "total": row.total,
            "recommendation": row.recommendation or None,
            "comment": row.comment,
        }
    return found


def _comment_dict(row: ReviewComment, sop_of: Mapping[int, str]) -> dict[str, Any]:
    return {
        "id": row.pk,
        "author": row.author,
        "text": row.text,
        "sopInstanceUid": sop_of.get(row.video_pk) if row.video_pk is not None else None,
        "atSeconds": row.at_s,
        "createdAt": iso(row.created_at),
    }


def _commit_if_open(session: Session, task_pk: int, closed_message: str) -> None:
    """Commit the pending write only if the task is still open, so a concurrent close wins
    cleanly (409) instead of a score or a comment landing after it.

    The write is flushed first, then the status is read again in the same transaction: on
    SQLite the flush took the database's write lock, so no close can commit in between; on
    PostgreSQL ``FOR SHARE`` waits for a close in progress, reads its outcome, and holds the
    row until this commit, so a later close waits for the score instead of overtaking it.
    """
    session.flush()
    status = session.scalar(
        select(ReviewTask.status).where(ReviewTask.pk == task_pk).with_for_update(read=True)
    )
    if status != "open":
        session.rollback()
        raise ReviewClosedError(closed_message)
    session.commit()


class VideoReviews:
    """Review tasks over the archive's database; every method takes the acting principal."""

    def __init__(
        self, sessions: sessionmaker[Session], access: AccessPolicy, users: UserDirectory
    ) -> None:
        self._sessions = sessions
        self._access = access
        self._users = users

    # --- setting up -----------------------------------------------------------------------

    def create_task(self, who: Principal, spec: TaskSpec) -> int:
        """A new open task; the videos must be in the creator's scope, the reviewers active
        experts other than the applicant. Returns the task's id."""
        AccessPolicy.require(who, MANAGE)
        plain_text(spec.title, spec.applicant, *spec.reviewers)
        title, applicant = spec.title.strip(), spec.applicant.strip()
        bad = [uid for uid in spec.videos if len(uid) > 64 or not UID_PATTERN.match(uid)]
        if bad:
            raise ReviewInputError(f"not a SOP Instance UID: {bad[0][:64]!r}")
        if not title or not applicant:
            raise ReviewInputError("a task needs a title and an applicant")
        if not spec.videos or not spec.reviewers:
            raise ReviewInputError("a task needs at least one video and one reviewer")
        if len(set(spec.videos)) != len(spec.videos):
            raise ReviewInputError("a video is listed twice")
        if len(set(spec.reviewers)) != len(spec.reviewers):
            raise ReviewInputError("a reviewer is listed twice")
        form = ReviewForm.from_mapping(spec.form) if spec.form is not None else default_form()
        self._check_reviewers(spec.reviewers, applicant)
        with self._sessions() as session:
            videos = self._videos_in_scope(session, who, spec.videos)
            now = datetime.now(UTC)
            owners = {v.hospital_pk for v in videos}
            hospital_pk = (
                (owners.pop() if len(owners) == 1 else None)
                if manages_all(who)
                else who.hospital_pk
            )
            task = ReviewTask(
                title=title,
                applicant=applicant,
                hospital_pk=hospital_pk,
                form=form.to_json(),
                status="open",
                created_by=who.name,
                created_at=now,
                due_at=spec.due_at,
            )
            session.add(task)
            session.flush()
            session.add_all(ReviewTaskVideo(task_pk=task.pk, video_pk=v.pk) for v in videos)
            session.add_all(
                ReviewAssignment(task_pk=task.pk, reviewer=name, assigned_at=now)
                for name in spec.reviewers
            )
            session.commit()
            return task.pk

    def _check_reviewers(self, reviewers: Iterable[str], applicant: str) -> None:
        for name in reviewers:
            if name == applicant:
                raise ReviewInputError(f"{name} is the applicant and cannot review their own task")
            user = self._users.by_username(name)
            if user is None or user.status != "active":
                raise ReviewInputError(f"reviewer {name!r} is not an active user")
            if not AccessPolicy.for_user(user).may(REVIEW):
                raise ReviewInputError(f"reviewer {name!r} has no {REVIEW!r} permission")

    def _videos_in_scope(
        self, session: Session, who: Principal, sop_uids: Sequence[str]
    ) -> list[SurgicalVideo]:
        rows = {
            v.sop_instance_uid: v
            for v in session.scalars(
                select(SurgicalVideo).where(SurgicalVideo.sop_instance_uid.in_(list(sop_uids)))
            )
        }
        missing = [uid for uid in sop_uids if uid not in rows]
        if missing:
            raise ReviewInputError(f"not in the video catalogue: {', '.join(missing)}")
        for uid in sop_uids:
            owner = self._access.require_study(who, "view_details", rows[uid].study_instance_uid)
            # A patient's grant lets a hospital see a study for their care; it is no consent
            # to show it to an external panel: a hospital's tasks hold its own videos only.
            if not manages_all(who) and (
                who.hospital_pk is None or owner.hospital_pk != who.hospital_pk
            ):
                raise AccessDeniedError(
                    f"video {uid} belongs to another hospital; a hospital reviews its own videos"
                )
        return [rows[uid] for uid in sop_uids]

    # --- reading ---------------------------------------------------------------------------

    def list_tasks(self, who: Principal) -> list[dict[str, Any]]:
        """Managers: the tasks in their scope; experts: the tasks assigned to them."""
        if not (who.may(MANAGE) or who.may(REVIEW)):
            raise AccessDeniedError(f"review tasks need {MANAGE!r} or {REVIEW!r}")
        with self._sessions() as session:
            found: dict[int, dict[str, Any]] = {}
            if who.may(MANAGE):
                for task in session.scalars(
                    select(ReviewTask).where(_manager_scope(who)).order_by(ReviewTask.pk.desc())
                ):
                    found[task.pk] = self._summary(session, task)
            if who.may(REVIEW) and who.kind == "user":
                mine = session.execute(
                    select(ReviewTask, ReviewAssignment)
                    .join(ReviewAssignment, ReviewAssignment.task_pk == ReviewTask.pk)
                    .where(ReviewAssignment.reviewer == who.name)
                    .order_by(ReviewTask.pk.desc())
                )
                for task, assignment in mine:
                    item = found.get(task.pk) or self._summary(session, task)
                    item["mySubmitted"] = assignment.submitted_at is not None
                    item["mySubmittedAt"] = iso(assignment.submitted_at)
                    found[task.pk] = item
            return sorted(found.values(), key=lambda t: -int(t["id"]))

    def _summary(self, session: Session, task: ReviewTask) -> dict[str, Any]:
        videos = session.scalar(select(func.count()).where(ReviewTaskVideo.task_pk == task.pk))
        return {
            "id": task.pk,
            "title": task.title,
            "applicant": task.applicant,
            "status": task.status,
            "dueAt": iso(task.due_at),
            "createdAt": iso(task.created_at),
            "videos": int(videos or 0),
        }

    def task(self, who: Principal, task_id: int) -> dict[str, Any]:
        """The task as ``who`` may see it (blind for experts)."""
        with self._sessions() as session:
            seen = visible_task(session, who, task_id)
            return self._detail(session, who, seen)

    def _detail(self, session: Session, who: Principal, seen: Visible) -> dict[str, Any]:
        task = seen.task
        videos = task_videos(session, task.pk)
        found: dict[str, Any] = {
            "id": task.pk,
            "title": task.title,
            "applicant": task.applicant,
            "status": task.status,
            "dueAt": iso(task.due_at),
            "createdAt": iso(task.created_at),
            "createdBy": task.created_by,
            "hospitalId": self._hospital_id(session, task.hospital_pk),
            "form": ReviewForm.from_json(task.form).as_dict(),
            "videos": [_video_dict(v, who.phi and seen.manages) for v in videos],
            "comments": self._comments(session, task.pk, videos),
        }
        if seen.manages:
            rows = session.scalars(
                select(ReviewAssignment)
                .where(ReviewAssignment.task_pk == task.pk)
                .order_by(ReviewAssignment.pk)
            )
            found["reviewers"] = [_assignment_dict(r) for r in rows]
        if seen.assignment is not None:
            found["myAssignment"] = _assignment_dict(seen.assignment)
        return found

    @staticmethod
    def _hospital_id(session: Session, hospital_pk: int | None) -> str | None:
        if hospital_pk is None:
            return None
        hospital = session.get(Hospital, hospital_pk)
        return hospital.hospital_id if hospital else None

    @staticmethod
    def _comments(
        session: Session, task_pk: int, videos: Sequence[SurgicalVideo]
    ) -> list[dict[str, Any]]:
        sop_of = {v.pk: v.sop_instance_uid for v in videos}
        rows = session.scalars(
            select(ReviewComment)
            .where(ReviewComment.task_pk == task_pk)
            .order_by(ReviewComment.created_at, ReviewComment.pk)
        )
        return [_comment_dict(r, sop_of) for r in rows]

    def comments(self, who: Principal, task_id: int) -> list[dict[str, Any]]:
        with self._sessions() as session:
            seen = visible_task(session, who, task_id)
            return self._comments(session, seen.task.pk, task_videos(session, seen.task.pk))

    # --- acting ----------------------------------------------------------------------------

    def submit_scores(
        self,
        who: Principal,
        task_id: int,
        scores: Mapping[str, Any],
        recommendation: str,
        comment: str,
    ) -> dict[str, Any]:
        """An assigned expert's scores (replacing their earlier ones while the task is open)."""
        AccessPolicy.require(who, REVIEW)
        if recommendation not in RECOMMENDATIONS:
            raise ReviewInputError("recommendation is 'pass' or 'fail'")
        plain_text(comment)
        if len(comment) > MAX_COMMENT:
            raise ReviewInputError(f"the comment is longer than {MAX_COMMENT} characters")
        with self._sessions() as session:
            seen = visible_task(session, who, task_id)
            if seen.assignment is None:
                raise AccessDeniedError("only the experts assigned to this task score it")
            if seen.task.status != "open":
                raise ReviewClosedError(f"review task {task_id} is closed; scores are final")
            checked, total = ReviewForm.from_json(seen.task.form).scored(scores)
            row = seen.assignment
            row.scores = json.dumps(checked)
            row.total = total
            row.recommendation = recommendation
            row.comment = comment
            row.submitted_at = datetime.now(UTC)
            _commit_if_open(
                session, seen.task.pk, f"review task {task_id} is closed; scores are final"
            )
            return _assignment_dict(row)

    def add_comment(self, who: Principal, task_id: int, spec: CommentSpec) -> dict[str, Any]:
        """A remark by an assigned expert or a manager, optionally at a moment of a video."""
        plain_text(spec.text, spec.sop_instance_uid or "")
        text = spec.text.strip()
        if not 1 <= len(text) <= MAX_COMMENT:
            raise ReviewInputError(f"a comment has 1 to {MAX_COMMENT} characters")
        if spec.at_seconds is not None and (not _finite(spec.at_seconds) or spec.at_seconds < 0):
            raise ReviewInputError("atSeconds is a time in seconds from the video's start")
        with self._sessions() as session:
            seen = visible_task(session, who, task_id)
            if seen.task.status != "open":
                raise ReviewClosedError(f"review task {task_id} is closed")
            videos = task_videos(session, seen.task.pk)
            video_pk = None
            if spec.sop_instance_uid:
                matches = [v.pk for v in videos if v.sop_instance_uid == spec.sop_instance_uid]
                if not matches:
                    raise ReviewInputError("that video is not part of this task")
                video_pk = matches[0]
            elif spec.at_seconds is not None:
                raise ReviewInputError("atSeconds needs the sopInstanceUid of the video")
            row = ReviewComment(
                task_pk=seen.task.pk,
                video_pk=video_pk,
                at_s=spec.at_seconds,
                author=who.name,
                text=text,
                created_at=datetime.now(UTC),
            )
            session.add(row)
            _commit_if_open(session, seen.task.pk, f"review task {task_id} is closed")
            return _comment_dict(row, {v.pk: v.sop_instance_uid for v in videos})

    def close(self, who: Principal, task_id: int) -> dict[str, Any]:
        """Close the task (idempotent): scores become final, experts lose its videos."""
        AccessPolicy.require(who, MANAGE)
        with self._sessions() as session:
            seen = visible_task(session, who, task_id)
            if not seen.manages:
                raise AccessDeniedError("only the task's managers close it")
            seen.task.status = "closed"
            session.commit()
            return self._detail(session, who, seen)

    # --- figures ---------------------------------------------------------------------------

    def statistics(
        self, who: Principal, applicant: str = "", hospital_id: str = ""
    ) -> list[dict[str, Any]]:
        """Per applicant: tasks, reviews submitted and pending, total scores (mean, min, max),
        recommendations, each criterion's mean, and the seconds the videos were watched."""
        AccessPolicy.require(who, MANAGE)
        plain_text(applicant, hospital_id)
        with self._sessions() as session:
            condition = _manager_scope(who)
            if hospital_id:
                hospital = session.scalar(
                    select(Hospital).where(Hospital.hospital_id == hospital_id)
                )
                if hospital is None:
                    raise InstanceNotFoundError(f"no hospital {hospital_id!r}")
                if not manages_all(who) and hospital.pk != who.hospital_pk:
                    raise AccessDeniedError("hospital admins see their own hospital's reviews")
                condition = condition & (ReviewTask.hospital_pk == hospital.pk)
            query = select(ReviewTask).where(condition)
            if applicant:
                query = query.where(ReviewTask.applicant == applicant)
            tasks = list(session.scalars(query.order_by(ReviewTask.applicant, ReviewTask.pk)))
            pks = [t.pk for t in tasks]
            assignments = (
                list(
                    session.scalars(
                        select(ReviewAssignment).where(ReviewAssignment.task_pk.in_(pks))
                    )
                )
                if pks
                else []
            )
            seconds: dict[int | None, float | None] = {}
            if pks:
                watched = session.execute(
                    select(VideoViewing.task_pk, func.sum(VideoViewing.duration_s))
                    .where(VideoViewing.task_pk.in_(pks))
                    .group_by(VideoViewing.task_pk)
                )
                seconds = {row[0]: row[1] for row in watched}
        by_applicant: dict[str, list[ReviewTask]] = {}
        for task in tasks:
            by_applicant.setdefault(task.applicant, []).append(task)
        return [
            _applicant_figures(name, own, assignments, seconds)
            for name, own in by_applicant.items()
        ]


def _applicant_figures(
    applicant: str,
    tasks: Sequence[ReviewTask],
    assignments: Sequence[ReviewAssignment],
    seconds: Mapping[int | None, float | None],
) -> dict[str, Any]:
    pks = {t.pk for t in tasks}
    mine = [a for a in assignments if a.task_pk in pks]
    done = [a for a in mine if a.submitted_at is not None and a.total is not None]
    totals = [float(a.total) for a in done if a.total is not None]
    labels: dict[str, str] = {}
    for task in tasks:
        for criterion in ReviewForm.from_json(task.form).criteria:
            labels.setdefault(criterion.key, criterion.label)
    points: dict[str, list[float]] = {key: [] for key in labels}
    for row in done:
        for key, value in (json.loads(row.scores) if row.scores else {}).items():
            points.setdefault(key, []).append(float(value))
    return {
        "applicant": applicant,
        "tasks": len(tasks),
        "reviewsSubmitted": len(done),
        "reviewsPending": len(mine) - len(done),
        "meanTotal": _mean(totals),
        "minTotal": min(totals) if totals else None,
        "maxTotal": max(totals) if totals else None,
        "passRecommendations": sum(1 for a in done if a.recommendation == "pass"),
        "failRecommendations": sum(1 for a in done if a.recommendation == "fail"),
        "criteria": [
            {"key": key, "label": label, "mean": _mean(points.get(key, []))}
            for key, label in labels.items()
        ],
        "viewingSeconds": round(sum(float(seconds.get(pk) or 0.0) for pk in pks), 3),
    }


def _mean(values: Sequence[float]) -> float | None:
    return round(sum(values) / len(values), 2) if values else None


STATISTICS_COLUMNS = (
    "applicant",
    "tasks",
    "reviewsSubmitted",
    "reviewsPending",
    "meanTotal",
    "minTotal",
    "maxTotal",
    "passRecommendations",
    "failRecommendations",
    "viewingSeconds",
)


def statistics_rows(applicants: Sequence[Mapping[str, Any]]) -> list[list[Any]]:
    """The figures as a table: the fixed columns, then one ``criterion:<key>`` column per
    criterion met in any task (empty where an applicant's forms lack it)."""
    keys: dict[str, str] = {}
    for item in applicants:
        for criterion in item["criteria"]:
            keys.setdefault(criterion["key"], criterion["label"])
    header = [*STATISTICS_COLUMNS, *(f"criterion:{key}" for key in keys)]
    rows: list[list[Any]] = [header]
    for item in applicants:
        means = {c["key"]: c["mean"] for c in item["criteria"]}
        rows.append([item[c] for c in STATISTICS_COLUMNS] + [means.get(key) for key in keys])
    return rows
