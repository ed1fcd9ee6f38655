"""Citations: findings or an impression copied out of a report, each with its own ID.

Whoever copies a report's text (into an HIS note, a referral, a consultation) gets it with a
citation ID (``CIT-`` and 12 base32 characters, 60 random bits: unique and not guessable), and
the citation is kept: who, of which kind and hospital, which study, which report version and
field, the SHA-256 of the text, when. So a pasted text can be traced to its source, and the
version cited stays readable even after the report is corrected.
"""

from __future__ import annotations

import base64
import hashlib
import re
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from cloud.errors import InstanceNotFoundError
from cloud.models import Report, ReportCitation
from cloud.report_fields import CITABLE, InvalidReportError

CITATION_ID = re.compile(r"^CIT-[A-Z2-7]{12}$")


@dataclass(frozen=True)
class Citer:
    """Who copies: a user, a patient or a share link, as the audit log names them."""

    actor: str
    actor_kind: str
    hospital_id: str = ""


@dataclass(frozen=True)
class Citation:
    citation_id: str
    study_instance_uid: str
    patient_id: str
    field: str
    report_version: int
    report_status: str
    text: str  # the field as it was in the version cited
    text_sha256: str
    actor: str
    actor_kind: str
    hospital_id: str
    cited_at: datetime

    def quote(self) -> str:
        """The text as it should be pasted: the citation ID travels with it."""
        return f"{self.text}\n[引用编号 Citation {self.citation_id}]"

    def as_dict(self, *, with_text: bool = True) -> dict[str, Any]:
        found: dict[str, Any] = {
            "citationId": self.citation_id,
            "studyInstanceUid": self.study_instance_uid,
            "field": self.field,
            "reportVersion": self.report_version,
            "reportStatus": self.report_status,
            "textSha256": self.text_sha256,
            "citedBy": {
                "actor": self.actor,
                "kind": self.actor_kind,
                "hospitalId": self.hospital_id or None,
            },
            "citedAt": self.cited_at.isoformat(),
        }
        if with_text:
            found["text"] = self.text
        return found


def new_citation_id() -> str:
    return "CIT-" + base64.b32encode(secrets.token_bytes(8)).decode()[:12]


def check_citation_id(citation_id: str) -> str:
    if not CITATION_ID.match(citation_id):
        raise InvalidReportError(
            f"{citation_id[:40]!r} is not a citation ID (CIT- and 12 characters A-Z, 2-7)"
        )
    return citation_id


def check_field(field: str) -> str:
    if field not in CITABLE:
        raise InvalidReportError(f"field must be findings or impression, not {field[:20]!r}")
    return field


def record(session: Session, report: Report, field: str, citer: Citer) -> Citation:
    """Add the citation of ``field`` of ``report`` to ``session`` (committed by the caller)."""
    text = str(getattr(report, check_field(field)))
    if not text:
        label = "findings (影像表现)" if field == "findings" else "an impression (诊断意见)"
        raise InstanceNotFoundError(
            f"version {report.version} of the report of study {report.study_instance_uid} "
            f"has no {label} to cite"
        )
    row = ReportCitation(
        citation_id=new_citation_id(),
        report_pk=report.pk,
        study_instance_uid=report.study_instance_uid,
        field=field,
        text_sha256=hashlib.sha256(text.encode("utf-8")).hexdigest(),
        actor=citer.actor[:128],
        actor_kind=citer.actor_kind[:16],
        hospital_id=citer.hospital_id[:64],
        cited_at=datetime.now(UTC),
    )
    session.add(row)
    session.flush()
    return _citation(row, report)


def cite(sessions: sessionmaker[Session], report_pk: int, field: str, citer: Citer) -> Citation:
    """Cite ``field`` of the report version ``report_pk``; a fresh ID on the rare collision."""
    for _ in range(3):
        with sessions() as session:
            report = session.get(Report, report_pk)
            if report is None:
                raise InstanceNotFoundError(f"report {report_pk} is gone")
            try:
                found = record(session, report, field, citer)
                session.commit()
                return found
            except IntegrityError:
                session.rollback()
    raise RuntimeError("three citation IDs collided; the random source is broken")


def citation(sessions: sessionmaker[Session], citation_id: str) -> Citation:
    """Who cited what, when; `InstanceNotFoundError` for an unknown ID."""
    check_citation_id(citation_id)
    with sessions() as session:
        found = session.execute(
            select(ReportCitation, Report)
            .join(Report, ReportCitation.report_pk == Report.pk)
            .where(ReportCitation.citation_id == citation_id)
        ).first()
        if found is None:
            raise InstanceNotFoundError(f"there is no citation {citation_id}")
        return _citation(*found)


def citations(sessions: sessionmaker[Session], study_instance_uid: str) -> list[Citation]:
    """Every citation of the study's report, oldest first."""
    with sessions() as session:
        rows = session.execute(
            select(ReportCitation, Report)
            .join(Report, ReportCitation.report_pk == Report.pk)
            .where(ReportCitation.study_instance_uid == study_instance_uid)
            .order_by(ReportCitation.cited_at, ReportCitation.pk)
        ).all()
        return [_citation(row, report) for row, report in rows]


def _citation(row: ReportCitation, report: Report) -> Citation:
    cited_at = row.cited_at if row.cited_at.tzinfo else row.cited_at.replace(tzinfo=UTC)
    return Citation(
        citation_id=row.citation_id,
        study_instance_uid=row.study_instance_uid,
        patient_id=report.patient_id,
        field=row.field,
        report_version=report.version,
        report_status=report.status,
        text=str(getattr(report, row.field, "")),
        text_sha256=row.text_sha256,
        actor=row.actor,
        actor_kind=row.actor_kind,
        hospital_id=row.hospital_id,
        cited_at=cited_at,
    )
