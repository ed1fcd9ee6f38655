"""Diagnostic reports: ingest from the hospital (JSON or DICOM SR), versions, display, citing.

A report is keyed by its Study Instance UID, so it may arrive before the images. Each
different content is a new version that supersedes the current one (``current`` moves, the
old rows stay for the citations made on them); content identical to any stored version is
answered with that version and changes nothing, so a retried or late duplicate never reverts
a correction. A hospital reports only on its own studies, and a report names the study's
patient. `Reports.display` gives the fields the Chongqing spec lists for a report shown with
the images or in a share link, with the study's own attributes where the report is silent.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Mapping
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from cloud import report_citations
from cloud.access import AccessDeniedError
from cloud.dataset import check_uid
from cloud.errors import ArchiveError, BackendUnavailableError, InstanceNotFoundError
from cloud.models import Hospital, Patient, Report, Series, Study
from cloud.report_citations import Citation, Citer
from cloud.report_fields import (
    NotAReportError,
    ReportFields,
    dicom_age,
    display_name,
    parse_document,
)
from cloud.report_sr import SR_SOP_CLASSES, read_sr

logger = logging.getLogger(__name__)

NOT_IMAGES = frozenset({"SR", "KO", "PR", "DOC"})  # modalities that are not the exam itself


class ReportConflictError(ArchiveError):
    """The report names another patient than its study, or than its earlier versions."""

    dimse_status = 0xC000
    http_status = 409
    title = "Report does not match its study"


@dataclass(frozen=True)
class ReportView:
    """One stored version of a study's report."""

    pk: int
    version: int
    current: bool
    fields: ReportFields
    hospital_id: str
    hospital_name: str
    source: str  # json | sr
    source_sop_instance_uid: str
    received_at: datetime
    created: bool = False  # True when this ingest made the version

    @property
    def study_instance_uid(self) -> str:
        return self.fields.study_instance_uid

    def as_dict(self, *, phi: bool = True) -> dict[str, Any]:
        f = self.fields
        found: dict[str, Any] = {
            "studyInstanceUid": f.study_instance_uid,
            "version": self.version,
            "current": self.current,
            "status": f.status,
            "source": self.source,
            "receivedAt": self.received_at.isoformat(),
            "hospital": {"id": self.hospital_id or None, "name": self.hospital_name or None},
            "examType": f.exam_type,
            "bodyPart": f.body_part,
            "examName": f.exam_name,
            "localExamCode": f.local_exam_code,
            "requestDate": f.request_date,
            "examDate": f.exam_date,
            "reportDate": f.report_date,
            "reportTime": f.report_time,
            "findings": f.findings,
            "impression": f.impression,
        }
        if phi:
            found |= {
                "patientId": f.patient_id,
                "examNumber": f.accession_number,
                "reportingPhysician": f.reporting_physician,
                "reviewingPhysician": f.reviewing_physician,
            }
        return found


class Reports:
    """The reports of the archive's studies; safe to share between threads."""

    def __init__(self, sessions: sessionmaker[Session]) -> None:
        self._sessions = sessions
        self._lock = threading.Lock()
        self.sr_failures = 0  # SR objects archived whose report could not be taken in

    # --- ingest ----------------------------------------------------------------------------

    def ingest_json(self, hospital_pk: int | None, document: Mapping[str, Any]) -> ReportView:
        """Take in a report the hospital sent as JSON (`cloud.report_fields.parse_document`).

        ``hospital_pk`` is the sending hospital (None: a platform operator, any study).
        Raises `InvalidReportError` (400), `AccessDeniedError` (403, another hospital's
        study or report) or `ReportConflictError` (409, another patient)."""
        return self._ingest(parse_document(document), hospital_pk, "json", "")

    def ingest_sr(self, part10: bytes, hospital_pk: int | None) -> ReportView:
        """Take in the report of a Basic Text, Enhanced or Comprehensive SR object."""
        found, sop_uid = read_sr(part10)
        check_uid(found.study_instance_uid, "StudyInstanceUID")
        return self._ingest(found, hospital_pk, "sr", sop_uid)

    def after_store(self, part10: bytes, sop_class_uid: str, hospital_pk: int | None) -> None:
        """Called for every object the archive stored: an SR's report is taken in. Never
        raises: the object is archived whatever its report holds; failures are logged and
        counted (``sr_failures``)."""
        if sop_class_uid not in SR_SOP_CLASSES:
            return
        try:
            view = self.ingest_sr(part10, hospital_pk)
        except NotAReportError:
            return  # archived like any object; not a report, by design
        except Exception as exc:
            with self._lock:
                self.sr_failures += 1
            detail = exc.detail if isinstance(exc, ArchiveError) else type(exc).__name__
            logger.warning(
                "report of a stored SR not taken in: %s",
                detail,
                exc_info=not isinstance(exc, ArchiveError),
            )
            return
        logger.info(
            "report version %d of study %s from SR (%s)",
            view.version,
            view.study_instance_uid,
            "new" if view.created else "unchanged",
        )

    def _ingest(
        self, found: ReportFields, hospital_pk: int | None, source: str, sop_uid: str
    ) -> ReportView:
        for attempt in range(3):
            try:
                with self._sessions() as session:
                    view = self._ingest_in(session, found, hospital_pk, source, sop_uid)
                    session.commit()
                    return view
            except IntegrityError:
                # Another request took the same version number: look again.
                logger.info(
                    "report version race on %s (attempt %d)", found.study_instance_uid, attempt + 1
                )
        raise BackendUnavailableError(
            f"the report of study {found.study_instance_uid} is being changed by others; retry"
        )

    def _ingest_in(
        self,
        session: Session,
        found: ReportFields,
        hospital_pk: int | None,
        source: str,
        sop_uid: str,
    ) -> ReportView:
        uid = found.study_instance_uid
        study = session.execute(
            select(Study.hospital_pk, Patient.patient_id)
            .join(Patient, Study.patient_pk == Patient.pk)
            .where(Study.study_instance_uid == uid)
        ).first()
        versions = list(
            session.scalars(
                select(Report)
                .where(Report.study_instance_uid == uid)
                .order_by(Report.version.desc())
            )
        )
        latest = versions[0] if versions else None
        owner = study[0] if study is not None else (latest.hospital_pk if latest else None)
        # A study without an owner hospital (direct upload) is no hospital's to report on;
        # a report without a study yet is its sender's, unless a platform operator sent it.
        if hospital_pk is not None and owner != hospital_pk and (study or owner is not None):
            raise AccessDeniedError(
                f"study {uid} belongs to another hospital; a hospital reports on its own "
                "studies only"
            )
        known_patient = study[1] if study is not None else (latest.patient_id if latest else "")
        if found.patient_id and known_patient and found.patient_id != known_patient:
            raise ReportConflictError(
                f"the report names patient ID {found.patient_id!r}, but study {uid} belongs "
                "to another patient"
            )
        found = replace(found, patient_id=found.patient_id or known_patient)
        for row in versions:
            if _fields(row).content() == found.content():
                return _view(session, row)
        if latest is not None:
            session.execute(
                update(Report)
                .where(Report.study_instance_uid == uid, Report.current.is_(True))
                .values(current=False)
            )
        row = Report(
            **found.as_columns(),
            version=(latest.version + 1) if latest else 1,
            current=True,
            hospital_pk=hospital_pk if hospital_pk is not None else owner,
            source=source,
            source_sop_instance_uid=sop_uid,
            received_at=datetime.now(UTC),
        )
        session.add(row)
        session.flush()
        return replace(_view(session, row), created=True)

    # --- reading ---------------------------------------------------------------------------

    def current(self, study_instance_uid: str, *, final_only: bool = False) -> ReportView:
        """The version to show: the current one, or with ``final_only`` (patients, share
        links) the newest final one. `InstanceNotFoundError` (404) when there is none."""
        with self._sessions() as session:
            return _view(session, _shown(session, study_instance_uid, final_only))

    def history(self, study_instance_uid: str, *, final_only: bool = False) -> list[ReportView]:
        """Every version, newest first (only the final ones with ``final_only``)."""
        query = select(Report).where(Report.study_instance_uid == study_instance_uid)
        if final_only:
            query = query.where(Report.status == "final")
        with self._sessions() as session:
            rows = session.scalars(query.order_by(Report.version.desc())).all()
            return [_view(session, row) for row in rows]

    def display(
        self, study_instance_uid: str, *, phi: bool, final_only: bool = False
    ) -> dict[str, Any]:
        """The report as shown with the images (Chongqing spec): hospital, patient name,
        age/sex, exam number, type, body part, exam name, request/exam/report dates,
        findings, impression, reporting and reviewing physician. Without ``phi`` the
        patient's name, ID and birth date, the exam number and the physicians are left out."""
        with self._sessions() as session:
            view = _view(session, _shown(session, study_instance_uid, final_only))
            study = session.execute(
                select(Study, Patient, Hospital)
                .join(Patient, Study.patient_pk == Patient.pk)
                .outerjoin(Hospital, Study.hospital_pk == Hospital.pk)
                .where(Study.study_instance_uid == study_instance_uid)
            ).first()
            series = session.execute(
                select(Series.modality, Series.body_part_examined)
                .join(Study, Series.study_pk == Study.pk)
                .where(Study.study_instance_uid == study_instance_uid)
                .order_by(Series.series_number, Series.pk)
            ).all()
        found = view.as_dict(phi=phi)
        if study is None:
            return found | {"patient": {}, "anonymised": not phi}
        row, patient, hospital = study
        f = view.fields
        modalities = [m for m, _ in series if m and m not in NOT_IMAGES]
        exam_date = f.exam_date or row.study_date
        found |= {
            "examType": f.exam_type or "/".join(dict.fromkeys(modalities)),
            "bodyPart": f.body_part or next((b for _, b in series if b), ""),
            "examName": f.exam_name or row.study_description,
            "examDate": exam_date,
            "anonymised": not phi,
        }
        if not view.hospital_id and hospital is not None:
            found["hospital"] = {"id": hospital.hospital_id, "name": hospital.name}
        age = dicom_age(patient.patient_birth_date, exam_date or f.report_date)
        found["patient"] = {"sex": patient.patient_sex, "age": age}
        if phi:
            found["patient"] |= {
                "name": display_name(patient.patient_name),
                "id": patient.patient_id,
                "birthDate": patient.patient_birth_date,
            }
            found["examNumber"] = f.accession_number or row.accession_number
        return found

    # --- citing ----------------------------------------------------------------------------

    def cite(
        self, study_instance_uid: str, field: str, citer: Citer, *, final_only: bool = False
    ) -> Citation:
        """Copy ``field`` (findings | impression) of the version the citer sees; the text
        comes back with a new citation ID, and the citation is recorded."""
        report_citations.check_field(field)
        shown = self.current(study_instance_uid, final_only=final_only)
        return report_citations.cite(self._sessions, shown.pk, field, citer)

    def citation(self, citation_id: str) -> Citation:
        """Who cited what, when (`InstanceNotFoundError` for an unknown ID)."""
        return report_citations.citation(self._sessions, citation_id)

    def citations(self, study_instance_uid: str) -> list[Citation]:
        """Every citation of the study's report, oldest first."""
        return report_citations.citations(self._sessions, study_instance_uid)


def _shown(session: Session, study_instance_uid: str, final_only: bool) -> Report:
    query = select(Report).where(Report.study_instance_uid == study_instance_uid)
    if final_only:
        query = query.where(Report.status == "final").order_by(Report.version.desc()).limit(1)
    else:
        query = query.where(Report.current.is_(True))
    row = session.scalar(query)
    if row is not None:
        return row
    exists = session.scalar(
        select(Report.pk).where(Report.study_instance_uid == study_instance_uid).limit(1)
    )
    if exists is not None:
        raise InstanceNotFoundError(
            f"the report of study {study_instance_uid} is not final yet 报告尚未审核"
        )
    raise InstanceNotFoundError(f"study {study_instance_uid} has no report yet 报告暂未出具")


def _fields(row: Report) -> ReportFields:
    names = ReportFields.__dataclass_fields__
    return ReportFields(**{name: getattr(row, name) for name in names})


def _view(session: Session, row: Report) -> ReportView:
    hospital = session.get(Hospital, row.hospital_pk) if row.hospital_pk is not None else None
    received = row.received_at if row.received_at.tzinfo else row.received_at.replace(tzinfo=UTC)
    return ReportView(
        pk=row.pk,
        version=row.version,
        current=row.current,
        fields=_fields(row),
        hospital_id=hospital.hospital_id if hospital else "",
        hospital_name=hospital.name if hospital else "",
        source=row.source,
        source_sop_instance_uid=row.source_sop_instance_uid,
        received_at=received,
    )
