"""What each study is in regional terms (`StudyExam`): its local code, regional code, exam
class and body part — the rows mutual recognition searches.

The facts come from the DICOM JSON (cached per instance) of the first instance of the study's
first image series — the procedure attributes are study-level, so one instance is enough —
with the index as the fallback when that instance cannot be read (e.g. it is in the cold
tier). The codes service (`cloud.exam_codes.ExamCodes`) turns them into regional terms.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from sqlalchemy import select, update
from sqlalchemy.orm import Session, sessionmaker

from cloud.code_tables import insert_ignore
from cloud.models import Instance, Patient, Series, Study, StudyExam

if TYPE_CHECKING:
    from cloud.exam_codes import ExamCodes

logger = logging.getLogger(__name__)

# Series that do not show the exam itself: their attributes are a poorer guide.
NON_IMAGE_MODALITIES = frozenset({"SR", "KO", "PR", "DOC", "REG", "SEG"})
DESCRIPTION_PREFIX = "desc:"  # local "codes" made from a description, when a PACS sends none

PROCEDURE_CODE_SEQUENCE = "00081032"
REQUESTED_PROCEDURE_CODE_SEQUENCE = "00321064"
CODE_VALUE, LONG_CODE_VALUE, CODE_MEANING = "00080100", "00080119", "00080104"
REQUESTED_PROCEDURE_DESCRIPTION = "00321060"
STUDY_DESCRIPTION = "00081030"
MODALITY = "00080060"
BODY_PART_EXAMINED = "00180015"


@dataclass(frozen=True)
class StudyExamView:
    study_pk: int
    local_code: str
    regional_code: str  # "" while the local code is unmapped
    exam_class: str
    body_part: str


@dataclass(frozen=True)
class ExamFacts:
    code_value: str = ""
    code_meaning: str = ""
    description: str = ""  # Study Description, else Requested Procedure Description
    modality: str = ""
    body_part: str = ""  # Body Part Examined as sent

    def local_key(self) -> tuple[str, str]:
        """(the key a hospital's mapping is looked up by, a readable name for it): the
        procedure code, else ``desc:`` + the description in upper case."""
        if self.code_value:
            return self.code_value[:64], (self.code_meaning or self.description)[:128]
        if self.description:
            # Case and spacing vary between a PACS's own studies; the words do not.
            key = DESCRIPTION_PREFIX + " ".join(self.description.upper().split())
            return key[:64], self.description[:128]
        return "", ""


class StudyExams:
    """Normalises studies with the codes service's tables; safe to share between threads."""

    def __init__(
        self,
        sessions: sessionmaker[Session],
        codes: ExamCodes,
        metadata_json_by_pk: Callable[[int], str] | None,
    ) -> None:
        self._sessions = sessions
        self._codes = codes
        self._metadata = metadata_json_by_pk

    def normalise_study(self, study_pk: int) -> StudyExamView | None:
        """Work out (again) what the study is in regional terms; None if it is gone."""
        with self._sessions() as session:
            study = session.get(Study, study_pk)
            if study is None:
                return None
            hospital_pk, description = study.hospital_pk, study.study_description
        facts = exam_facts(self._sessions, study_pk, description, self._metadata)
        local_code, local_name = facts.local_key()
        regional = self._codes.resolve(hospital_pk, local_code, local_name) if local_code else ""
        code = self._codes.find(regional, active_only=True) if regional else None
        body_part = code.body_part if code is not None and code.body_part else ""
        body_part = body_part or self._codes.normalise_body_part(facts.body_part)
        view = StudyExamView(
            study_pk, local_code, regional, code.exam_class if code else "", body_part
        )
        self._save(view)
        return view

    def normalise_new(self, limit: int = 500) -> int:
        """Normalise up to ``limit`` studies that have no `StudyExam` yet; how many were."""
        query = (
            select(Study.pk)
            .outerjoin(StudyExam, StudyExam.study_pk == Study.pk)
            .where(StudyExam.study_pk.is_(None))
            .order_by(Study.pk)
            .limit(limit)
        )
        return self._normalise_all(query)

    def normalise_patient(self, patient_id: str, limit: int = 200) -> int:
        """Normalise this patient's studies that have no `StudyExam` yet (before a check, so
        a study received since the last periodic pass counts)."""
        query = (
            select(Study.pk)
            .join(Patient, Study.patient_pk == Patient.pk)
            .outerjoin(StudyExam, StudyExam.study_pk == Study.pk)
            .where(Patient.patient_id == patient_id, StudyExam.study_pk.is_(None))
            .order_by(Study.pk)
            .limit(limit)
        )
        return self._normalise_all(query)

    def _normalise_all(self, query: Any) -> int:
        with self._sessions() as session:
            pending = list(session.scalars(query))
        done = 0
        for study_pk in pending:
            try:
                done += self.normalise_study(study_pk) is not None
            except Exception:  # one odd study must not stop the others
                logger.exception("normalising study %s failed", study_pk)
        return done

    def study_exam(self, study_pk: int) -> StudyExamView | None:
        with self._sessions() as session:
            row = session.get(StudyExam, study_pk)
            if row is None:
                return None
            return StudyExamView(
                row.study_pk, row.local_code, row.regional_code, row.exam_class, row.body_part
            )

    def _save(self, view: StudyExamView) -> None:
        values = {
            "local_code": view.local_code,
            "regional_code": view.regional_code,
            "exam_class": view.exam_class,
            "body_part": view.body_part,
            "normalised_at": datetime.now(UTC),
        }
        with self._sessions() as session:
            # Insert-or-update that tolerates the periodic pass and a check racing on a study.
            insert_ignore(session, StudyExam.__table__, {"study_pk": view.study_pk, **values})
            session.execute(
                update(StudyExam).where(StudyExam.study_pk == view.study_pk).values(**values)
            )
            session.commit()


def exam_facts(
    sessions: sessionmaker[Session],
    study_pk: int,
    study_description: str,
    metadata_json_by_pk: Callable[[int], str] | None,
) -> ExamFacts:
    """The facts of study ``study_pk`` (see the module docstring)."""
    with sessions() as session:
        chosen = _first_image_series(session, study_pk)
        if chosen is None:
            return ExamFacts(description=study_description)
        series_pk, modality, body_part = chosen
        instance_pk = session.scalar(
            select(Instance.pk)
            .where(Instance.series_pk == series_pk)
            .order_by(Instance.instance_number, Instance.pk)
            .limit(1)
        )
    fallback = ExamFacts(description=study_description, modality=modality, body_part=body_part)
    if instance_pk is None or metadata_json_by_pk is None:
        return fallback
    try:
        document = json.loads(metadata_json_by_pk(instance_pk))
    except Exception:  # cold, missing or unreadable: the index still knows enough
        logger.warning("study %s: no metadata for instance %s", study_pk, instance_pk)
        return fallback
    return from_dicom_json(document, fallback)


def _first_image_series(session: Session, study_pk: int) -> tuple[int, str, str] | None:
    rows = session.execute(
        select(Series.pk, Series.modality, Series.body_part_examined)
        .where(Series.study_pk == study_pk)
        .order_by(Series.series_number, Series.pk)
    ).all()
    images = [row for row in rows if row[1] not in NON_IMAGE_MODALITIES]
    candidates = images or rows
    if not candidates:
        return None
    return candidates[0][0], candidates[0][1], candidates[0][2]


def from_dicom_json(document: Any, fallback: ExamFacts) -> ExamFacts:
    """The facts in one instance's DICOM JSON; what it lacks comes from ``fallback``."""
    if isinstance(document, list):  # a DICOMweb metadata array
        document = document[0] if document else {}
    if not isinstance(document, dict):
        return fallback
    code_value, code_meaning = "", ""
    for sequence in (PROCEDURE_CODE_SEQUENCE, REQUESTED_PROCEDURE_CODE_SEQUENCE):
        item = _first_item(document, sequence)
        code_value = _text(item, CODE_VALUE) or _text(item, LONG_CODE_VALUE)
        if code_value:
            code_meaning = _text(item, CODE_MEANING)
            break
    description = _text(document, STUDY_DESCRIPTION) or _text(
        document, REQUESTED_PROCEDURE_DESCRIPTION
    )
    return ExamFacts(
        code_value=code_value,
        code_meaning=code_meaning,
        description=description or fallback.description,
        modality=_text(document, MODALITY) or fallback.modality,
        body_part=_text(document, BODY_PART_EXAMINED) or fallback.body_part,
    )


def _first_item(document: dict[str, Any], tag: str) -> dict[str, Any]:
    element = document.get(tag)
    values = element.get("Value") if isinstance(element, dict) else None
    if isinstance(values, list) and values and isinstance(values[0], dict):
        return values[0]
    return {}


def _text(document: dict[str, Any], tag: str) -> str:
    element = document.get(tag)
    values = element.get("Value") if isinstance(element, dict) else None
    if not isinstance(values, list) or not values:
        return ""
    value = values[0]
    if isinstance(value, dict):  # Person Name components
        value = value.get("Alphabetic", "")
    return " ".join(str(value).split())
