"""Search across surgical videos and the studies around them, and the numbers for charts.

One set of filters (`VideoFilters`) serves three answers: the matching videos, the matching
studies (a CT before the operation, the report that names the diagnosis) and chart data. Text
filters are case-insensitive substring matches, so 胆囊 finds 腹腔镜胆囊切除术; several words in
``q`` must each match somewhere. Every query carries the principal's `StudyScope` as a join
on the studies table, so counts and pages never see what is out of scope.

Studies are matched on what applies to them: procedure against the Study Description and the
current report's exam name, diagnosis against the report's impression and findings, dates
against the study date, ``q`` against description and report text. Surgeon, applicant,
minutes, camera role and video class describe recordings only: when one is given, the study
list keeps only the studies holding the matched videos.

Annotations and the title page's notes are professional evaluation: only principals holding
``view_video_annotations`` see ``annotationCount`` or have ``q`` match that text
(`SearchContext.annotations`). An expert (scope ``review``) sees only the videos of their open
review tasks, not the other recordings of those studies (`SearchContext.video_instances`).
"""

from __future__ import annotations

import math
import re
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from typing import Any

from sqlalchemy import Select, exists, func, or_, select
from sqlalchemy.orm import Session

from cloud.errors import InvalidQueryError
from cloud.models import Hospital, Patient, Report, Series, Study, SurgicalVideo, VideoAnnotation
from cloud.report_fields import display_name
from cloud.scope import StudyScope

MAX_LIMIT = 500
MAX_OFFSET = 1_000_000_000  # far past any catalogue; keeps SQL integers in range
HISTOGRAM_BIN_MINUTES = 30
NOT_IMAGES = frozenset({"SR", "KO", "PR", "DOC"})
_DATE = re.compile(r"^(\d{4})-?(\d{2})-?(\d{2})$")


def normalise_date(value: str, name: str) -> str:
    """``YYYYMMDD`` from ``YYYYMMDD`` or ``YYYY-MM-DD``; "" stays ""."""
    text = value.strip()
    if not text:
        return ""
    found = _DATE.match(text)
    if found is None:
        raise InvalidQueryError(f"{name} must be YYYYMMDD or YYYY-MM-DD, not {value!r}")
    return "".join(found.groups())


def _check_text(value: str, name: str) -> None:
    """Control characters (NUL above all, which PostgreSQL refuses in text) and lone
    surrogates are no part of anything searchable."""
    if any(ord(c) < 32 for c in value):
        raise InvalidQueryError(f"{name} contains control characters")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise InvalidQueryError(f"{name} is not valid Unicode text") from exc


@dataclass(frozen=True)
class VideoFilters:
    """What a search asks for; empty strings and None mean "any"."""

    procedure: str = ""
    diagnosis: str = ""
    surgeon: str = ""
    applicant: str = ""
    hospital_id: str = ""
    date_from: str = ""
    date_to: str = ""
    min_minutes: float | None = None
    max_minutes: float | None = None
    q: str = ""
    camera_role: str = ""
    video_class: str = ""
    limit: int = 100
    offset: int = 0

    def checked(self) -> VideoFilters:
        """Dates normalised, ranges and paging checked (`InvalidQueryError` otherwise)."""
        if not 1 <= self.limit <= MAX_LIMIT:
            raise InvalidQueryError(f"limit must be 1..{MAX_LIMIT}, not {self.limit}")
        if not 0 <= self.offset <= MAX_OFFSET:
            raise InvalidQueryError(f"offset must be 0..{MAX_OFFSET}, not {self.offset}")
        date_from = normalise_date(self.date_from, "dateFrom")
        date_to = normalise_date(self.date_to, "dateTo")
        if date_from and date_to and date_to < date_from:
            raise InvalidQueryError(f"dateTo ({date_to}) is before dateFrom ({date_from})")
        for name in _TEXT_FIELDS:
            _check_text(getattr(self, name), name)
        low, high = self.min_minutes, self.max_minutes
        if any(v is not None and not math.isfinite(v) for v in (low, high)):
            raise InvalidQueryError("minMinutes and maxMinutes must be finite numbers")
        if (low is not None and low < 0) or (high is not None and high < 0):
            raise InvalidQueryError("minMinutes and maxMinutes must be 0 or more")
        if low is not None and high is not None and high < low:
            raise InvalidQueryError(f"maxMinutes ({high}) is below minMinutes ({low})")
        return replace(
            self,
            date_from=date_from,
            date_to=date_to,
            **{name: getattr(self, name).strip() for name in _TEXT_FIELDS},
        )

    @property
    def video_only(self) -> bool:
        """Whether a filter that only recordings have is set (it narrows the study list)."""
        return bool(
            self.surgeon
            or self.applicant
            or self.camera_role
            or self.video_class
            or self.min_minutes is not None
            or self.max_minutes is not None
        )


_TEXT_FIELDS = (
    "procedure", "diagnosis", "surgeon", "applicant", "hospital_id", "q", "camera_role",
    "video_class",
)  # fmt: skip


@dataclass(frozen=True)
class SearchContext:
    """Whose search: the scope condition's inputs and whether identities may be shown."""

    scope: StudyScope
    phi: bool
    dialect: str = ""
    annotations: bool = False  # holds view_video_annotations
    video_instances: frozenset[str] | None = None  # the only videos it may see (experts)


def _contains(column: Any, text: str) -> Any:
    return column.icontains(text, autoescape=True)


def _terms(q: str) -> list[str]:
    return [term for term in q.split() if term]


def video_conditions(filters: VideoFilters, *, annotations: bool = False) -> list[Any]:
    """The WHERE conditions on `SurgicalVideo` for ``filters``; with ``annotations``, ``q``
    also searches the annotations' labels and notes and the title page's notes."""
    v = SurgicalVideo
    where: list[Any] = []
    for column, text in (
        (v.procedure, filters.procedure),
        (v.diagnosis, filters.diagnosis),
        (v.surgeon, filters.surgeon),
        (v.applicant, filters.applicant),
    ):
        if text:
            where.append(_contains(column, text))
    if filters.camera_role:
        where.append(func.lower(v.camera_role) == filters.camera_role.lower())
    if filters.video_class:
        where.append(func.lower(v.video_class) == filters.video_class.lower())
    if filters.date_from:
        where.append(v.operation_date >= filters.date_from)
    if filters.date_to:
        where.append(v.operation_date <= filters.date_to)
    if filters.min_minutes is not None:
        where.append(v.operation_minutes >= filters.min_minutes)
    if filters.max_minutes is not None:
        where.append(v.operation_minutes <= filters.max_minutes)
    if filters.hospital_id:
        where.append(
            v.hospital_pk.in_(
                select(Hospital.pk).where(Hospital.hospital_id == filters.hospital_id)
            )
        )
    for term in _terms(filters.q):
        matches = [_contains(column, term) for column in (v.procedure, v.diagnosis, v.surgeon,
                                                           v.applicant)]  # fmt: skip
        if annotations:
            annotated = exists().where(
                VideoAnnotation.video_pk == v.pk,
                or_(_contains(VideoAnnotation.label, term), _contains(VideoAnnotation.note, term)),
            )
            matches += [_contains(v.notes, term), annotated]
        where.append(or_(*matches))
    return where


def _videos_in_scope(context: SearchContext, filters: VideoFilters) -> Select[Any]:
    where = [
        context.scope.condition(context.dialect),
        *video_conditions(filters, annotations=context.annotations),
    ]
    if context.video_instances is not None:
        where.append(SurgicalVideo.sop_instance_uid.in_(sorted(context.video_instances)))
    return (
        select(SurgicalVideo.pk)
        .join(Study, Study.study_instance_uid == SurgicalVideo.study_instance_uid)
        .where(*where)
    )


# --- videos ------------------------------------------------------------------------------------


def video_summary(
    video: SurgicalVideo,
    hospital_id: str | None,
    annotation_count: int | None,
    patient: tuple[str, str] | None,
) -> dict[str, Any]:
    """One video as every list shows it; ``patient`` (ID, name) only for principals with PHI,
    ``annotation_count`` only for those who may read the annotations (None: left out)."""
    st, se, sop = video.study_instance_uid, video.series_instance_uid, video.sop_instance_uid
    found: dict[str, Any] = {
        "sopInstanceUid": sop,
        "studyInstanceUid": st,
        "seriesInstanceUid": se,
        "procedure": video.procedure,
        "diagnosis": video.diagnosis,
        "surgeon": video.surgeon,
        "applicant": video.applicant,
        "hospital": video.institution_name or hospital_id or "",
        "cameraRole": video.camera_role,
        "videoClass": video.video_class,
        "operationDate": video.operation_date,
        "operationMinutes": video.operation_minutes,
        "durationSeconds": video.duration_s,
        "width": video.width,
        "height": video.height,
        "definition": "HD" if video.definition == "H>S" else video.definition,  # downgrading
        "frameRate": video.frame_rate,
        "viewerUrl": f"/viewer/?study={st}",
        "renderedPath": f"/studies/{st}/series/{se}/instances/{sop}",
    }
    if annotation_count is not None:
        found["annotationCount"] = annotation_count
    if patient is not None:
        found["patientId"], found["patientName"] = patient[0], display_name(patient[1])
    return found


def _annotation_counts() -> Any:
    return (
        select(func.count(VideoAnnotation.pk))
        .where(VideoAnnotation.video_pk == SurgicalVideo.pk)
        .correlate(SurgicalVideo)
        .scalar_subquery()
    )


def _summary_rows() -> Select[Any]:
    return (
        select(
            SurgicalVideo,
            Hospital.hospital_id,
            _annotation_counts(),
            Patient.patient_id,
            Patient.patient_name,
        )
        .join(Study, Study.study_instance_uid == SurgicalVideo.study_instance_uid)
        .join(Patient, Study.patient_pk == Patient.pk)
        .outerjoin(Hospital, SurgicalVideo.hospital_pk == Hospital.pk)
    )


def video_by_sop(
    session: Session, sop_instance_uid: str, *, phi: bool, annotations: bool = False
) -> dict[str, Any] | None:
    """One video's summary, scope aside (the caller has admitted the principal)."""
    row = session.execute(
        _summary_rows().where(SurgicalVideo.sop_instance_uid == sop_instance_uid)
    ).first()
    if row is None:
        return None
    video, hospital_id, count, pid, name = row
    shown = (count or 0) if annotations else None
    return video_summary(video, hospital_id, shown, (pid, name) if phi else None)


def search_videos(
    session: Session, context: SearchContext, filters: VideoFilters
) -> tuple[int, list[dict[str, Any]]]:
    """The total number of matching videos in scope and one page of their summaries, the
    latest operations first."""
    matched = _videos_in_scope(context, filters).subquery()
    total = session.scalar(select(func.count()).select_from(matched)) or 0
    rows = session.execute(
        _summary_rows()
        .where(SurgicalVideo.pk.in_(select(matched.c.pk)))
        .order_by(
            SurgicalVideo.operation_date.desc(),
            SurgicalVideo.created_at.desc(),
            SurgicalVideo.pk.desc(),
        )
        .limit(filters.limit)
        .offset(filters.offset)
    ).all()
    return total, [
        video_summary(
            video,
            hospital_id,
            (count or 0) if context.annotations else None,
            (pid, name) if context.phi else None,
        )
        for video, hospital_id, count, pid, name in rows
    ]


# --- studies -----------------------------------------------------------------------------------


def _current_report() -> Any:
    return select(Report).where(Report.current.is_(True)).subquery("current_report")


def study_conditions(filters: VideoFilters, report: Any, *, annotations: bool = False) -> list[Any]:
    """The WHERE conditions on `Study` (and its current report) for ``filters``."""
    where: list[Any] = []
    if filters.procedure:
        where.append(
            or_(
                _contains(Study.study_description, filters.procedure),
                _contains(report.c.exam_name, filters.procedure),
            )
        )
    if filters.diagnosis:
        where.append(
            or_(
                _contains(report.c.impression, filters.diagnosis),
                _contains(report.c.findings, filters.diagnosis),
            )
        )
    if filters.date_from:
        where.append(Study.study_date >= filters.date_from)
    if filters.date_to:
        where.append(Study.study_date <= filters.date_to)
    if filters.hospital_id:
        where.append(
            Study.hospital_pk.in_(
                select(Hospital.pk).where(Hospital.hospital_id == filters.hospital_id)
            )
        )
    for term in _terms(filters.q):
        texts = (
            Study.study_description,
            report.c.exam_name,
            report.c.impression,
            report.c.findings,
        )
        where.append(or_(*(_contains(column, term) for column in texts)))
    if filters.video_only:
        holding = (
            select(SurgicalVideo.study_instance_uid)
            .where(*video_conditions(filters, annotations=annotations))
            .correlate(None)
        )
        where.append(Study.study_instance_uid.in_(holding))
    return where


def search_studies(
    session: Session, context: SearchContext, filters: VideoFilters
) -> tuple[int, list[dict[str, Any]]]:
    """The total number of matching studies in scope and one page of them, latest first."""
    report = _current_report()
    base = (
        select(Study.pk)
        .outerjoin(report, report.c.study_instance_uid == Study.study_instance_uid)
        .where(
            context.scope.condition(context.dialect),
            *study_conditions(filters, report, annotations=context.annotations),
        )
    )
    matched = base.subquery()
    total = session.scalar(select(func.count(func.distinct(matched.c.pk)))) or 0
    rows = session.execute(
        select(Study, Patient, Hospital.hospital_id, Hospital.name, report.c.impression)
        .join(Patient, Study.patient_pk == Patient.pk)
        .outerjoin(Hospital, Study.hospital_pk == Hospital.pk)
        .outerjoin(report, report.c.study_instance_uid == Study.study_instance_uid)
        .where(Study.pk.in_(select(matched.c.pk)))
        .order_by(Study.study_date.desc(), Study.pk.desc())
        .limit(filters.limit)
        .offset(filters.offset)
    ).all()
    modalities = _modalities(session, [row[0].pk for row in rows])
    items = []
    for study, patient, hospital_id, hospital_name, impression in rows:
        uid = study.study_instance_uid
        item: dict[str, Any] = {
            "studyInstanceUid": uid,
            "studyDate": study.study_date,
            "modalities": modalities.get(study.pk, []),
            "studyDescription": study.study_description,
            "hospital": hospital_name or hospital_id or "",
            "reportImpression": impression,
            "viewerUrl": f"/viewer/?study={uid}",
        }
        if context.phi:
            item["patientId"] = patient.patient_id
            item["patientName"] = display_name(patient.patient_name)
        items.append(item)
    return total, items


def _modalities(session: Session, study_pks: Sequence[int]) -> dict[int, list[str]]:
    if not study_pks:
        return {}
    found: dict[int, set[str]] = defaultdict(set)
    for study_pk, modality in session.execute(
        select(Series.study_pk, Series.modality).where(Series.study_pk.in_(study_pks)).distinct()
    ):
        if modality:
            found[study_pk].add(modality)
    return {pk: sorted(values) for pk, values in found.items()}


# --- charts ------------------------------------------------------------------------------------


def _mean(values: Iterable[float | None]) -> float | None:
    known = [v for v in values if v is not None]
    return round(sum(known) / len(known), 1) if known else None


def _grouped(rows: Sequence[tuple[str, float | None]], name: str) -> list[dict[str, Any]]:
    groups: dict[str, list[float | None]] = defaultdict(list)
    for key, minutes in rows:
        groups[key].append(minutes)
    ordered = sorted(groups.items(), key=lambda item: (-len(item[1]), item[0]))
    return [
        {name: key, "count": len(values), "meanMinutes": _mean(values)} for key, values in ordered
    ]


def histogram(minutes: Iterable[float], width: int = HISTOGRAM_BIN_MINUTES) -> list[dict[str, Any]]:
    """Counts in ``width``-minute bins [from, to), from 0 to the last bin holding a video."""
    counts: dict[int, int] = defaultdict(int)
    for value in minutes:
        counts[int(value // width)] += 1
    if not counts:
        return []
    return [
        {"fromMinutes": b * width, "toMinutes": (b + 1) * width, "count": counts.get(b, 0)}
        for b in range(max(counts) + 1)
    ]


def charts(session: Session, context: SearchContext, filters: VideoFilters) -> dict[str, Any]:
    """Counts and mean operation minutes per procedure, month and surgeon, and the duration
    histogram, over every matching video in scope (no patient data)."""
    matched = _videos_in_scope(context, filters).subquery()
    rows = session.execute(
        select(
            SurgicalVideo.procedure,
            SurgicalVideo.surgeon,
            SurgicalVideo.operation_date,
            SurgicalVideo.operation_minutes,
        ).where(SurgicalVideo.pk.in_(select(matched.c.pk)))
    ).all()
    months: dict[str, int] = defaultdict(int)
    for _, _, date, _ in rows:
        if len(date) >= 6:
            months[f"{date[:4]}-{date[4:6]}"] += 1
    return {
        "total": len(rows),
        "byProcedure": _grouped([(p, m) for p, _, _, m in rows], "procedure"),
        "byMonth": [{"month": month, "count": months[month]} for month in sorted(months)],
        "bySurgeon": _grouped([(s, m) for _, s, _, m in rows], "surgeon"),
        "durationHistogram": histogram(m for _, _, _, m in rows if m is not None),
    }
