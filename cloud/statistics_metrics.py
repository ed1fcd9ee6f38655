"""What each regulator's metric counts: its fact rows (``at``, ``hospital_pk`` and values,
one per study, instance, view, citation, QC review, recognition check or quality score) and
how a group of them adds up. `cloud.statistics` buckets and groups them; the module docstring
there says when each metric is counted and to which hospital.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from sqlalchemy import ColumnElement, Select, Subquery, and_, case, func, or_, select
from sqlalchemy.orm import aliased

from cloud.errors import ArchiveError
from cloud.models import (
    AuditEvent,
    Hospital,
    Instance,
    QcReview,
    RecognitionCheck,
    Report,
    ReportCitation,
    Series,
    Study,
    StudyQuality,
)

LOW_QUALITY_BELOW = 60.0  # an overall data-quality score under this counts as low quality


class UnknownMetricError(ArchiveError):
    http_status = 404
    title = "Unknown statistic"


Aggregates = Callable[[Subquery], list[ColumnElement[Any]]]


@dataclass(frozen=True)
class Metric:
    """One figure: its fact rows (``at``, ``hospital_pk`` and values) and how they add up."""

    name: str
    title: str
    columns: tuple[str, ...]  # the value columns of a row, in order
    facts: Callable[[], Select[*tuple[Any, ...]]]
    aggregates: Aggregates
    derive: Callable[[dict[str, Any]], None] = lambda _row: None
    counted_at: str = ""


def _flag(condition: ColumnElement[bool]) -> ColumnElement[int]:
    return case((condition, 1), else_=0)


def _sum(column: ColumnElement[Any], label: str) -> ColumnElement[Any]:
    return func.coalesce(func.sum(column), 0).label(label)


def _rate(part: int, whole: int) -> float | None:
    return round(100.0 * part / whole, 1) if whole else None


def _uploads() -> Select[*tuple[Any, ...]]:
    return select(Study.created_at.label("at"), Study.hospital_pk.label("hospital_pk"))


def _images() -> Select[*tuple[Any, ...]]:
    return (
        select(
            Instance.received_at.label("at"),
            Study.hospital_pk.label("hospital_pk"),
            Instance.size_bytes.label("size_bytes"),
        )
        .join(Series, Instance.series_pk == Series.pk)
        .join(Study, Series.study_pk == Study.pk)
    )


def _views() -> Select[*tuple[Any, ...]]:
    owner = aliased(Hospital)
    other_hospital = and_(
        AuditEvent.actor_kind == "user",
        AuditEvent.hospital_id != "",
        or_(owner.hospital_id.is_(None), owner.hospital_id != AuditEvent.hospital_id),
    )
    return (
        select(
            AuditEvent.at.label("at"),
            Study.hospital_pk.label("hospital_pk"),
            _flag(AuditEvent.actor_kind == "user").label("staff"),
            _flag(other_hospital).label("cross"),
        )
        .select_from(AuditEvent)
        .outerjoin(Study, Study.study_instance_uid == AuditEvent.study_instance_uid)
        .outerjoin(owner, owner.pk == Study.hospital_pk)
        .where(AuditEvent.action == "view", AuditEvent.outcome == "allowed")
    )


def _citations() -> Select[*tuple[Any, ...]]:
    owner = aliased(Hospital)
    other_hospital = and_(
        ReportCitation.hospital_id != "",
        or_(owner.hospital_id.is_(None), owner.hospital_id != ReportCitation.hospital_id),
    )
    return (
        select(
            ReportCitation.cited_at.label("at"),
            Report.hospital_pk.label("hospital_pk"),
            _flag(ReportCitation.field == "findings").label("findings"),
            _flag(other_hospital).label("cross"),
        )
        .join(Report, ReportCitation.report_pk == Report.pk)
        .outerjoin(owner, owner.pk == Report.hospital_pk)
    )


def _qc() -> Select[*tuple[Any, ...]]:
    return (
        select(
            QcReview.reviewed_at.label("at"),
            Study.hospital_pk.label("hospital_pk"),
            _flag(QcReview.passed.is_(True)).label("passed"),
        )
        .join(Study, QcReview.study_pk == Study.pk)
        .where(QcReview.state == "done", QcReview.reviewed_at.is_not(None))
    )


def _recognition() -> Select[*tuple[Any, ...]]:
    return select(
        RecognitionCheck.requested_at.label("at"),
        RecognitionCheck.hospital_pk.label("hospital_pk"),
        _flag(RecognitionCheck.prior_count > 0).label("reminder"),
        _flag(RecognitionCheck.decision == "accepted").label("accepted"),
        _flag(RecognitionCheck.decision == "declined").label("declined"),
    )


SCORES = ("overall", "completeness", "timeliness", "consistency", "conformance")


def _quality() -> Select[*tuple[Any, ...]]:
    return select(
        Study.created_at.label("at"),
        Study.hospital_pk.label("hospital_pk"),
        *(getattr(StudyQuality, score).label(score) for score in SCORES),
        _flag(StudyQuality.overall < LOW_QUALITY_BELOW).label("low"),
    ).join(Study, StudyQuality.study_pk == Study.pk)


def _derive_views(row: dict[str, Any]) -> None:
    row["patient_views"] = row["views"] - row["staff_views"]


def _derive_citations(row: dict[str, Any]) -> None:
    row["impression"] = row["citations"] - row["findings"]


def _derive_qc(row: dict[str, Any]) -> None:
    row["failed"] = row["reviewed"] - row["passed"]
    row["pass_rate"] = _rate(row["passed"], row["reviewed"])


def _derive_recognition(row: dict[str, Any]) -> None:
    row["undecided"] = row["reminders"] - row["accepted"] - row["declined"]
    row["acceptance_rate"] = _rate(row["accepted"], row["reminders"])


def _derive_quality(row: dict[str, Any]) -> None:
    for score in SCORES:
        value = row[score]
        row[score] = None if value is None else round(float(value), 1)


METRICS: dict[str, Metric] = {
    m.name: m
    for m in (
        Metric(
            "uploads",
            "Studies uploaded 上传检查数",
            ("uploads",),
            _uploads,
            lambda _facts: [func.count().label("uploads")],
            counted_at="studies.created_at",
        ),
        Metric(
            "images",
            "Images received 影像数",
            ("images", "bytes"),
            _images,
            lambda f: [func.count().label("images"), _sum(f.c.size_bytes, "bytes")],
            counted_at="instances.received_at",
        ),
        Metric(
            "views",
            "Studies viewed 调阅次数",
            ("views", "staff_views", "patient_views", "cross_hospital_views"),
            _views,
            lambda f: [
                func.count().label("views"),
                _sum(f.c.staff, "staff_views"),
                _sum(f.c.cross, "cross_hospital_views"),
            ],
            _derive_views,
            counted_at="audit_events.at (action view)",
        ),
        Metric(
            "citations",
            "Report citations 报告引用",
            ("citations", "findings", "impression", "cross_hospital_citations"),
            _citations,
            lambda f: [
                func.count().label("citations"),
                _sum(f.c.findings, "findings"),
                _sum(f.c.cross, "cross_hospital_citations"),
            ],
            _derive_citations,
            counted_at="report_citations.cited_at",
        ),
        Metric(
            "qc",
            "QC reviews 质控抽检",
            ("reviewed", "passed", "failed", "pass_rate"),
            _qc,
            lambda f: [func.count().label("reviewed"), _sum(f.c.passed, "passed")],
            _derive_qc,
            counted_at="qc_reviews.reviewed_at (state done)",
        ),
        Metric(
            "recognition",
            "Mutual recognition 互认提醒",
            ("checks", "reminders", "accepted", "declined", "undecided", "acceptance_rate"),
            _recognition,
            lambda f: [
                func.count().label("checks"),
                _sum(f.c.reminder, "reminders"),
                _sum(f.c.accepted, "accepted"),
                _sum(f.c.declined, "declined"),
            ],
            _derive_recognition,
            counted_at="recognition_checks.requested_at",
        ),
        Metric(
            "quality",
            "Data quality 数据质量",
            ("scored", *SCORES, "low_quality"),
            _quality,
            lambda f: [
                func.count().label("scored"),
                *(func.avg(f.c[score]).label(score) for score in SCORES),
                _sum(f.c.low, "low_quality"),
            ],
            _derive_quality,
            counted_at="studies.created_at of the scored study",
        ),
    )
}


def metric(name: str) -> Metric:
    found = METRICS.get(name)
    if found is None:
        raise UnknownMetricError(f"no statistic {name[:40]!r}; there are: {', '.join(METRICS)}")
    return found


def metric_catalogue() -> list[dict[str, Any]]:
    """What each metric counts, for the API's index and the dashboard's labels."""
    return [
        {"name": m.name, "title": m.title, "columns": list(m.columns), "countedAt": m.counted_at}
        for m in METRICS.values()
    ]
