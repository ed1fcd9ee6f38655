"""Mutual recognition of exams (检查结果互认): when a doctor orders an exam, which recent prior
exams of the patient, at any hospital of the region, could make it unnecessary.

A prior qualifies when it is of the same exam class as the ordered code (and the same body
part), its Study Date is within the code's ``recognition_days`` of today, its current report is
final, and its quality control passed: no QC reviewer failed it, and either a reviewer passed it
or its data-quality score reaches ``qc_pass_score`` (without either, ``qc_required`` decides).
Each check is stored (`RecognitionCheck`) with the priors offered, and the doctor's decision
(accepted with the prior used, or declined with a reason) is recorded once.
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from sqlalchemy import select, update
from sqlalchemy.orm import Session, sessionmaker

from cloud.access import AccessDeniedError
from cloud.code_tables import CodeNotFoundError, check_text
from cloud.errors import ArchiveError, InvalidQueryError
from cloud.exam_codes import ExamCodes, ExamCodeView
from cloud.models import (
    Hospital,
    Patient,
    PatientGrant,
    QcReview,
    RecognitionCheck,
    Report,
    Study,
    StudyExam,
    StudyQuality,
)

DECISIONS = ("accepted", "declined")
PENDING = "pending"
_ALPHABET = "ABCDEFGHJKLMNPQRSTUVWXYZ23456789"  # no 0/O, 1/I: read aloud over the phone


class UnknownExamCodeError(ArchiveError):
    """The ordered code is neither a regional code nor mapped for the ordering hospital."""

    http_status = 422
    title = "Unknown exam code"


class DecisionConflictError(ArchiveError):
    http_status = 409
    title = "Already decided"


@dataclass(frozen=True)
class Prior:
    """A prior exam offered to the ordering doctor: only what deciding needs."""

    study_instance_uid: str
    study_date: str
    hospital_id: str
    hospital_name: str
    regional_code: str
    exam_name: str
    qc_passed: bool
    qc_score: float | None
    report_status: str
    # Whether the ordering hospital already reaches the study (its own, or granted by the
    # patient); only then does the check show the report's impression.
    viewable: bool = False
    impression: str = field(default="", compare=False)

    def as_dict(self) -> dict[str, Any]:
        """The stored snapshot (no report text: that stays in the report)."""
        return {
            "studyInstanceUid": self.study_instance_uid,
            "studyDate": self.study_date,
            "hospital": {"id": self.hospital_id, "name": self.hospital_name},
            "regionalCode": self.regional_code,
            "examName": self.exam_name,
            "qc": {"passed": self.qc_passed, "score": self.qc_score},
            "report": {"status": self.report_status},
            "viewable": self.viewable,
        }


@dataclass(frozen=True)
class CheckResult:
    check_id: str
    patient_id: str
    hospital_id: str
    exam_code: str
    code: ExamCodeView
    body_part: str
    priors: list[Prior]
    requested_by: str
    requested_at: datetime


@dataclass(frozen=True)
class CheckView:
    """A stored check, as its hospital and auditors see it later."""

    check_id: str
    patient_id: str
    hospital_id: str
    hospital_pk: int | None
    exam_code: str
    regional_code: str
    body_part: str
    priors: list[dict[str, Any]]
    requested_by: str
    requested_at: datetime
    decision: str
    decision_reason: str
    accepted_study_uid: str
    decided_by: str
    decided_at: datetime | None


Clock = Callable[[], datetime]


class Recognition:
    """Checks and decisions over the index; safe to share between threads."""

    def __init__(
        self,
        sessions: sessionmaker[Session],
        exam_codes: ExamCodes,
        *,
        clock: Clock | None = None,
    ) -> None:
        self._sessions = sessions
        self._codes = exam_codes
        self.settings = exam_codes.recognition_settings
        self._clock = clock or (lambda: datetime.now(UTC))

    def today(self) -> date:
        return self._clock().astimezone(ZoneInfo(self.settings.timezone)).date()

    def check(
        self,
        patient_id: str,
        hospital_id: str,
        exam_code: str,
        body_part: str,
        requested_by: str,
    ) -> CheckResult:
        """The qualifying priors for an exam ordered at ``hospital_id``, newest first, stored
        as a new check.

        Raises
        ------
        CodeNotFoundError
            The hospital is not registered (404).
        UnknownExamCodeError
            ``exam_code`` is neither an active regional code nor mapped for the hospital (422);
            it is recorded as unmapped.
        InvalidQueryError
            ``body_part`` is not in the body-part dictionary (400).
        """
        patient_id = check_text(patient_id, "patient_id", 64)
        exam_code = check_text(exam_code, "exam_code", 64)
        hospital_pk = self._hospital_pk(hospital_id)
        regional = self._codes.resolve(hospital_pk, exam_code, "")
        code = self._codes.find(regional, active_only=True) if regional else None
        if code is None:
            raise UnknownExamCodeError(
                f"exam code {exam_code!r} is not a regional code and {hospital_id} has not "
                "mapped it to one; it is listed for the administrators (GET "
                "/api/exam-codes/unmapped)"
            )
        wanted_part = self._body_part(body_part) or code.body_part
        self._codes.normalise_patient(patient_id)
        priors = self._priors(patient_id, hospital_pk, code, wanted_part)
        now = self._clock()
        check_id = "RC-" + "".join(secrets.choice(_ALPHABET) for _ in range(16))
        with self._sessions() as session:
            session.add(
                RecognitionCheck(
                    check_id=check_id,
                    patient_id=patient_id,
                    hospital_pk=hospital_pk,
                    exam_code=exam_code.strip()[:64],
                    regional_code=code.code,
                    body_part=wanted_part,
                    priors=json.dumps([p.as_dict() for p in priors], ensure_ascii=False),
                    prior_count=len(priors),
                    requested_by=requested_by[:128],
                    requested_at=now,
                )
            )
            session.commit()
        return CheckResult(
            check_id, patient_id, hospital_id, exam_code, code, wanted_part, priors,
            requested_by, now,
        )  # fmt: skip

    def _hospital_pk(self, hospital_id: str) -> int:
        with self._sessions() as session:
            pk = session.scalar(select(Hospital.pk).where(Hospital.hospital_id == hospital_id))
        if pk is None:
            raise CodeNotFoundError(f"hospital {hospital_id!r} is not registered")
        return int(pk)

    def _body_part(self, text: str) -> str:
        if not text.strip():
            return ""
        found = self._codes.normalise_body_part(text)
        if not found:
            raise InvalidQueryError(
                f"body part {text.strip()!r} is not in the body-part dictionary "
                "(GET /api/dictionaries/body_part lists the codes and their spellings)"
            )
        return found

    def _priors(
        self, patient_id: str, hospital_pk: int, code: ExamCodeView, body_part: str
    ) -> list[Prior]:
        if code.recognition_days <= 0:
            return []  # this exam is never recognised: always done afresh
        today = self.today()
        oldest = today - timedelta(days=code.recognition_days)
        query = (
            select(Study, Hospital.hospital_id, Hospital.name, StudyExam.regional_code)
            .join(Patient, Study.patient_pk == Patient.pk)
            .join(StudyExam, StudyExam.study_pk == Study.pk)
            .outerjoin(Hospital, Study.hospital_pk == Hospital.pk)
            .where(
                Patient.patient_id == patient_id,
                StudyExam.exam_class == code.exam_class,
                Study.study_date >= oldest.strftime("%Y%m%d"),
                Study.study_date <= today.strftime("%Y%m%d"),  # a future date is bad data
            )
            .order_by(Study.study_date.desc(), Study.study_time.desc(), Study.pk.desc())
        )
        if body_part:
            query = query.where(StudyExam.body_part == body_part)
        with self._sessions() as session:
            rows = session.execute(query).all()
            studies = [row[0] for row in rows]
            judged = _Judgement.of(session, studies, self.settings.qc_pass_score)
            granted = _granted(session, patient_id, hospital_pk, self._clock())
        names = {c.code: c.name for c in self._codes.codes(include_inactive=True)}
        priors = []
        for study, hospital_id, hospital_name, regional in rows:
            report_status, impression = judged.reports.get(study.study_instance_uid, ("", ""))
            qc_passed, score = judged.qc(study.pk, self.settings.qc_required)
            if report_status != "final" or not qc_passed:
                continue
            viewable = study.hospital_pk == hospital_pk or granted
            priors.append(
                Prior(
                    study_instance_uid=study.study_instance_uid,
                    study_date=study.study_date,
                    hospital_id=hospital_id or "",
                    hospital_name=hospital_name or "",
                    regional_code=regional,
                    exam_name=names.get(regional) or study.study_description,
                    qc_passed=qc_passed,
                    qc_score=score,
                    report_status=report_status,
                    viewable=viewable,
                    impression=impression if viewable else "",
                )
            )
        return priors[: self.settings.max_priors]

    # --- reading a check, deciding ---------------------------------------------------------

    def get(self, check_id: str) -> CheckView:
        with self._sessions() as session:
            found = session.execute(
                select(RecognitionCheck, Hospital.hospital_id)
                .outerjoin(Hospital, RecognitionCheck.hospital_pk == Hospital.pk)
                .where(RecognitionCheck.check_id == check_id)
            ).first()
            if found is None:
                raise CodeNotFoundError(f"there is no recognition check {check_id!r}")
            return _check_view(found[0], found[1] or "")

    def decide(
        self,
        check_id: str,
        decision: str,
        *,
        by: str,
        reason: str = "",
        accepted_study_uid: str = "",
        hospital_pk: int | None = None,
    ) -> CheckView:
        """Record the doctor's decision, once. ``accepted`` names one of the priors offered;
        ``declined`` gives a reason. ``hospital_pk``: the decider's hospital, which must be
        the check's (403 otherwise); None skips that test."""
        if decision not in DECISIONS:
            raise InvalidQueryError(f"decision is one of {', '.join(DECISIONS)}")
        reason = check_text(reason, "reason", 2000, required=decision == "declined")
        current = self.get(check_id)
        if hospital_pk is not None and current.hospital_pk != hospital_pk:
            raise AccessDeniedError(f"check {check_id} was made by another hospital")
        if current.decision != PENDING:
            raise DecisionConflictError(_decided(current))
        offered = [p.get("studyInstanceUid") for p in current.priors]
        if decision == "accepted" and accepted_study_uid not in offered:
            raise InvalidQueryError(
                f"accepting needs study_instance_uid, one of the priors check {check_id} offered"
                + ("" if offered else "; it offered none, so it can only be declined")
            )
        if decision == "declined" and accepted_study_uid:
            raise InvalidQueryError("a declined check names no study_instance_uid")
        with self._sessions() as session:
            done = session.execute(
                update(RecognitionCheck)
                .where(
                    RecognitionCheck.check_id == check_id, RecognitionCheck.decision == PENDING
                )
                .values(
                    decision=decision, decision_reason=reason,
                    accepted_study_uid=accepted_study_uid, decided_by=by[:128],
                    decided_at=self._clock(),
                )
            )  # fmt: skip
            session.commit()
        # Someone else decided between our read and our write.
        if done.rowcount != 1:  # type: ignore[attr-defined]
            raise DecisionConflictError(_decided(self.get(check_id)))
        return self.get(check_id)


@dataclass
class _Judgement:
    """Reports and QC of the candidate studies, read in three queries."""

    reports: dict[str, tuple[str, str]]  # study uid -> (status, impression) of the current
    scores: dict[int, float]
    reviews: dict[int, set[bool]]
    threshold: float

    @classmethod
    def of(cls, session: Session, studies: list[Study], threshold: float) -> _Judgement:
        uids = [s.study_instance_uid for s in studies]
        pks = [s.pk for s in studies]
        if not studies:
            return cls({}, {}, {}, threshold)
        reports = {
            uid: (status, impression or "")
            for uid, status, impression in session.execute(
                select(Report.study_instance_uid, Report.status, Report.impression).where(
                    Report.study_instance_uid.in_(uids), Report.current
                )
            )
        }
        scored = select(StudyQuality.study_pk, StudyQuality.overall)
        scores: dict[int, float] = dict(
            session.execute(scored.where(StudyQuality.study_pk.in_(pks))).all()
        )
        reviews: dict[int, set[bool]] = {}
        for study_pk, passed in session.execute(
            select(QcReview.study_pk, QcReview.passed).where(
                QcReview.study_pk.in_(pks), QcReview.passed.is_not(None)
            )
        ):
            reviews.setdefault(study_pk, set()).add(bool(passed))
        return cls(reports, scores, reviews, threshold)

    def qc(self, study_pk: int, qc_required: bool) -> tuple[bool, float | None]:
        """(passed, automatic score): a failed review fails, a passed review passes (a
        reviewer outranks the automatic score), else the score decides."""
        score = self.scores.get(study_pk)
        verdicts = self.reviews.get(study_pk, set())
        if False in verdicts:
            return False, score
        if True in verdicts:
            return True, score
        if score is None:
            return not qc_required, None
        return score >= self.threshold, score


def _granted(session: Session, patient_id: str, hospital_pk: int, now: datetime) -> bool:
    return (
        session.scalar(
            select(PatientGrant.pk)
            .where(
                PatientGrant.patient_id == patient_id,
                PatientGrant.hospital_pk == hospital_pk,
                PatientGrant.revoked_at.is_(None),
                PatientGrant.expires_at > now,
            )
            .limit(1)
        )
        is not None
    )


def _check_view(row: RecognitionCheck, hospital_id: str) -> CheckView:
    try:
        priors = [p for p in json.loads(row.priors or "[]") if isinstance(p, dict)]
    except ValueError:
        priors = []
    return CheckView(
        row.check_id, row.patient_id, hospital_id, row.hospital_pk, row.exam_code,
        row.regional_code, row.body_part, priors, row.requested_by, _utc(row.requested_at),
        row.decision, row.decision_reason, row.accepted_study_uid, row.decided_by,
        None if row.decided_at is None else _utc(row.decided_at),
    )  # fmt: skip


def _utc(moment: datetime) -> datetime:
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def _decided(view: CheckView) -> str:
    when = f" at {view.decided_at.isoformat()}" if view.decided_at else ""
    return f"check {view.check_id} was already {view.decision} by {view.decided_by}{when}"
