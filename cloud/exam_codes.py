"""Exam-code normalisation: the regional code table, hospitals' local codes mapped onto it, and
what each archived study is in regional terms (`StudyExam`).

A hospital's PACS names an exam by its own procedure code ("CT0012", "胸部CT平扫" as a Study
Description, ...). `ExamCodes.resolve` maps it through the hospital's mapping to a regional
code; a local code never seen before is recorded as *unmapped* (with how often it is seen), so
administrators see what is left to map. `normalise_study` applies this to a study: the code
from the first image's Procedure Code Sequence (0008,1032) or Requested Procedure Code Sequence
(0032,1064), else its Study Description, and Body Part Examined through the body-part
dictionary. The regional code's exam class is what mutual recognition compares.

The tables are seeded from ``config/`` on first use (`cloud.code_tables.TableSeed`); edits in
the index win over the files.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from sqlalchemy import select, update
from sqlalchemy.orm import Session, sessionmaker

from cloud.code_tables import (
    MAX_RECOGNITION_DAYS,
    CodeNotFoundError,
    RecognitionSettings,
    TableSeed,
    check_code,
    check_text,
    insert_ignore,
)
from cloud.dictionaries import Dictionaries
from cloud.errors import InvalidQueryError
from cloud.models import ExamCodeMapping, Hospital, RegionalExamCode, Study, StudyExam
from cloud.study_exams import StudyExams, StudyExamView

if TYPE_CHECKING:
    from cloud.archive import Archive

MetadataReader = Callable[[int], str]  # instance pk -> DICOM JSON text


@dataclass(frozen=True)
class ExamCodeView:
    code: str
    name: str
    modality: str
    body_part: str
    exam_class: str
    recognition_days: int
    active: bool

    def as_dict(self) -> dict[str, Any]:
        return {
            "code": self.code,
            "name": self.name,
            "modality": self.modality,
            "bodyPart": self.body_part,
            "examClass": self.exam_class,
            "recognitionDays": self.recognition_days,
            "active": self.active,
        }


@dataclass(frozen=True)
class MappingView:
    hospital_id: str
    local_code: str
    local_name: str
    regional_code: str  # "" while unmapped
    seen_count: int
    first_seen_at: datetime | None
    last_seen_at: datetime | None
    updated_by: str

    def as_dict(self) -> dict[str, Any]:
        return {
            "hospitalId": self.hospital_id,
            "localCode": self.local_code,
            "localName": self.local_name,
            "regionalCode": self.regional_code or None,
            "seenCount": self.seen_count,
            "firstSeenAt": _iso(self.first_seen_at),
            "lastSeenAt": _iso(self.last_seen_at),
            "updatedBy": self.updated_by,
        }


def _iso(moment: datetime | None) -> str | None:
    if moment is None:
        return None
    return (moment if moment.tzinfo else moment.replace(tzinfo=UTC)).isoformat()


def _code_view(row: RegionalExamCode) -> ExamCodeView:
    return ExamCodeView(
        row.code, row.name, row.modality, row.body_part, row.exam_class,
        row.recognition_days, row.active,
    )  # fmt: skip


_MAPPINGS = select(ExamCodeMapping, Hospital.hospital_id).join(
    Hospital, ExamCodeMapping.hospital_pk == Hospital.pk
)


class ExamCodes:
    """The regional code table, the hospitals' mappings and study normalisation.

    Parameters
    ----------
    sessions
        Sessions on the index.
    metadata_json_by_pk
        Reads an instance's cached DICOM JSON (``Archive.metadata_json_by_pk``); needed only by
        the ``normalise_*`` methods.
    seed
        The seed data to copy into empty tables (default: the files in ``config/``).
    """

    def __init__(
        self,
        sessions: sessionmaker[Session],
        metadata_json_by_pk: MetadataReader | None = None,
        *,
        seed: TableSeed | None = None,
    ) -> None:
        self._sessions = sessions
        self._seed = seed or TableSeed(sessions)
        self.dictionaries = Dictionaries(sessions, self._seed)
        self._studies = StudyExams(sessions, self, metadata_json_by_pk)

    @classmethod
    def of(cls, archive: Archive) -> ExamCodes:
        return cls(archive.sessions, archive.metadata_json_by_pk)

    @property
    def recognition_settings(self) -> RecognitionSettings:
        return self._seed.data.recognition

    def normalise_body_part(self, text: str) -> str:
        """The body-part code ``text`` means ("胸部", "Thorax" -> "CHEST"), or ""."""
        return self.dictionaries.normalise_body_part(text)

    # --- the regional table ----------------------------------------------------------------

    def codes(
        self, *, include_inactive: bool = False, modality: str = "", exam_class: str = ""
    ) -> list[ExamCodeView]:
        self._seed.ensure()
        query = select(RegionalExamCode).order_by(RegionalExamCode.code)
        if not include_inactive:
            query = query.where(RegionalExamCode.active)
        if modality:
            query = query.where(RegionalExamCode.modality == modality)
        if exam_class:
            query = query.where(RegionalExamCode.exam_class == exam_class)
        with self._sessions() as session:
            return [_code_view(row) for row in session.scalars(query)]

    def code(self, code: str) -> ExamCodeView:
        found = self.find(code)
        if found is None:
            raise CodeNotFoundError(f"there is no regional exam code {code!r}")
        return found

    def find(self, code: str, *, active_only: bool = False) -> ExamCodeView | None:
        self._seed.ensure()
        with self._sessions() as session:
            row = session.get(RegionalExamCode, code)
            if row is None or (active_only and not row.active):
                return None
            return _code_view(row)

    def put_code(
        self,
        code: str,
        *,
        name: str,
        modality: str,
        body_part: str = "",
        exam_class: str,
        recognition_days: int,
        active: bool = True,
    ) -> tuple[ExamCodeView, bool]:
        """Create or replace a regional code; (the code, whether it is new). Studies already
        normalised to it follow a changed exam class or body part."""
        check_code(code)
        check_code(exam_class, "exam class")
        name = check_text(name, "name", 128)
        if not self.dictionaries.is_active("device_type", modality):
            raise InvalidQueryError(f"modality {modality!r} is not in the device_type dictionary")
        if body_part and not self.dictionaries.is_active("body_part", body_part):
            raise InvalidQueryError(f"body part {body_part!r} is not in the body_part dictionary")
        if not 0 <= recognition_days <= MAX_RECOGNITION_DAYS:
            raise InvalidQueryError(f"recognition_days must be 0-{MAX_RECOGNITION_DAYS}")
        with self._sessions() as session:
            row = session.get(RegionalExamCode, code)
            created = row is None
            if row is None:
                row = RegionalExamCode(code=code)
                session.add(row)
            row.name, row.modality, row.body_part = name, modality, body_part
            row.exam_class, row.recognition_days, row.active = exam_class, recognition_days, active
            follow: dict[str, Any] = {"exam_class": exam_class if active else ""}
            if body_part:
                follow["body_part"] = body_part
            session.execute(
                update(StudyExam).where(StudyExam.regional_code == code).values(**follow)
            )
            session.commit()
            return _code_view(row), created

    def retire_code(self, code: str) -> ExamCodeView:
        """Stop using a code: it no longer resolves, and its studies no longer qualify for
        recognition (the row stays, so the seed file cannot bring it back)."""
        current = self.code(code)
        view, _ = self.put_code(
            code,
            name=current.name,
            modality=current.modality,
            body_part=current.body_part,
            exam_class=current.exam_class,
            recognition_days=current.recognition_days,
            active=False,
        )
        return view

    # --- hospitals' local codes ------------------------------------------------------------

    def map(
        self, hospital_pk: int, local_code: str, regional_code: str, by: str, local_name: str = ""
    ) -> MappingView:
        """Map a hospital's local code to an active regional code; the hospital's studies
        already normalised under that local code follow."""
        local_code = check_text(local_code, "local code", 64)
        local_name = check_text(local_name, "local name", 128, required=False)
        target = self.find(regional_code, active_only=True)
        if target is None:
            raise InvalidQueryError(f"{regional_code!r} is not an active regional exam code")
        now = datetime.now(UTC)
        with self._sessions() as session:
            if session.get(Hospital, hospital_pk) is None:
                raise CodeNotFoundError(f"hospital {hospital_pk} is not registered")
            row = self._mapping(session, hospital_pk, local_code)
            if row is None:
                row = ExamCodeMapping(
                    hospital_pk=hospital_pk, local_code=local_code, seen_count=0,
                    first_seen_at=None, last_seen_at=None,
                )  # fmt: skip
                session.add(row)
            row.regional_code, row.updated_by, row.updated_at = target.code, by[:64], now
            if local_name:
                row.local_name = local_name
            self._follow(session, hospital_pk, local_code, target)
            session.commit()
        return self.mapping(hospital_pk, local_code)

    def unmap(self, hospital_pk: int, local_code: str, by: str) -> MappingView:
        """Take a mapping back: the local code is listed as unmapped again."""
        with self._sessions() as session:
            row = self._mapping(session, hospital_pk, local_code)
            if row is None:
                raise CodeNotFoundError(f"no mapping for local code {local_code!r}")
            row.regional_code, row.updated_by, row.updated_at = "", by[:64], datetime.now(UTC)
            self._follow(session, hospital_pk, local_code, None)
            session.commit()
        return self.mapping(hospital_pk, local_code)

    def mapping(self, hospital_pk: int, local_code: str) -> MappingView:
        query = _MAPPINGS.where(
            ExamCodeMapping.hospital_pk == hospital_pk, ExamCodeMapping.local_code == local_code
        )
        with self._sessions() as session:
            found = session.execute(query).first()
            if found is None:
                raise CodeNotFoundError(f"no mapping for local code {local_code!r}")
            return _mapping_view(found[0], found[1])

    def mappings(self, hospital_pk: int | None = None, state: str = "all") -> list[MappingView]:
        """The hospitals' local codes: ``state`` all, mapped or unmapped (most seen first)."""
        if state not in ("all", "mapped", "unmapped"):
            raise InvalidQueryError("state is one of all, mapped, unmapped")
        query = _MAPPINGS
        if hospital_pk is not None:
            query = query.where(ExamCodeMapping.hospital_pk == hospital_pk)
        if state == "mapped":
            query = query.where(ExamCodeMapping.regional_code != "")
        elif state == "unmapped":
            query = query.where(ExamCodeMapping.regional_code == "")
        query = query.order_by(
            ExamCodeMapping.seen_count.desc(), Hospital.hospital_id, ExamCodeMapping.local_code
        )
        with self._sessions() as session:
            return [_mapping_view(row, hospital_id) for row, hospital_id in session.execute(query)]

    def unmapped(self, hospital_pk: int | None = None) -> list[MappingView]:
        """Local codes seen but not mapped yet, most seen first."""
        return self.mappings(hospital_pk, "unmapped")

    def resolve(self, hospital_pk: int | None, local_code: str, local_name: str = "") -> str:
        """The active regional code ``local_code`` stands for at this hospital, or "".

        The hospital's mapping comes first; a code that is itself an active regional code
        resolves to itself. Anything else is recorded as unmapped; every call counts as a
        sighting (``seen_count``)."""
        key = local_code.strip()[:64]
        if not key:
            return ""
        self._seed.ensure()
        now = datetime.now(UTC)
        with self._sessions() as session:
            row = None if hospital_pk is None else self._mapping(session, hospital_pk, key)
            mapped = row.regional_code if row is not None else ""
            if mapped and not _active(session, mapped):
                mapped = ""  # mapped to a code retired since
            if not mapped and _active(session, key.upper()):
                return key.upper()
            if hospital_pk is None:
                return mapped
            if row is None:
                insert_ignore(session, ExamCodeMapping.__table__, {
                    "hospital_pk": hospital_pk, "local_code": key, "local_name": local_name[:128],
                    "regional_code": "", "seen_count": 0, "first_seen_at": now,
                })  # fmt: skip
            session.execute(
                update(ExamCodeMapping)
                .where(
                    ExamCodeMapping.hospital_pk == hospital_pk, ExamCodeMapping.local_code == key
                )
                .values(seen_count=ExamCodeMapping.seen_count + 1, last_seen_at=now)
            )
            if row is not None and not row.local_name and local_name:
                row.local_name = local_name[:128]
            session.commit()
            return mapped

    @staticmethod
    def _mapping(session: Session, hospital_pk: int, local_code: str) -> ExamCodeMapping | None:
        return session.scalar(
            select(ExamCodeMapping).where(
                ExamCodeMapping.hospital_pk == hospital_pk,
                ExamCodeMapping.local_code == local_code,
            )
        )

    @staticmethod
    def _follow(
        session: Session, hospital_pk: int, local_code: str, target: ExamCodeView | None
    ) -> None:
        """Re-point the hospital's studies normalised under ``local_code``."""
        values: dict[str, Any] = {
            "regional_code": target.code if target else "",
            "exam_class": target.exam_class if target else "",
        }
        if target is not None and target.body_part:
            values["body_part"] = target.body_part
        own = select(Study.pk).where(Study.hospital_pk == hospital_pk)
        session.execute(
            update(StudyExam)
            .where(StudyExam.local_code == local_code, StudyExam.study_pk.in_(own))
            .values(**values)
        )

    # --- studies (cloud.study_exams) -------------------------------------------------------

    def normalise_study(self, study_pk: int) -> StudyExamView | None:
        """Work out (again) what the study is in regional terms; None if it is gone."""
        return self._studies.normalise_study(study_pk)

    def normalise_new(self, limit: int = 500) -> int:
        """Normalise up to ``limit`` studies that have no `StudyExam` yet; how many were."""
        return self._studies.normalise_new(limit)

    def normalise_patient(self, patient_id: str, limit: int = 200) -> int:
        """Normalise this patient's studies that have no `StudyExam` yet (before a check, so
        a study received since the last periodic pass counts)."""
        return self._studies.normalise_patient(patient_id, limit)

    def study_exam(self, study_pk: int) -> StudyExamView | None:
        return self._studies.study_exam(study_pk)


def _active(session: Session, code: str) -> bool:
    row = session.get(RegionalExamCode, code)
    return row is not None and row.active


def _mapping_view(row: ExamCodeMapping, hospital_id: str) -> MappingView:
    return MappingView(
        hospital_id, row.local_code, row.local_name, row.regional_code, row.seen_count,
        row.first_seen_at, row.last_seen_at, row.updated_by,
    )  # fmt: skip
