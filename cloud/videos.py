"""The surgical video catalogue: one row per stored DICOM video object.

`VideoCatalogue.after_store` is called for every object the archive stores; for the video SOP
classes it reads the header (never the MP4) and records what search, annotation and expert
review need: procedure, diagnosis, surgeon, applicant, camera role, video class, operation date
and duration, picture size. Like the report intake it never fails the store: the object is
archived whatever its header holds.

Where the values come from (the wrapper, `collectors.video_wrap`, writes them from the sidecar):
procedure = Performed Procedure Step Description or Study Description; diagnosis = Admitting
Diagnoses Description; surgeon = Performing Physician's Name; applicant, camera role and video
class = the private block ``IMAGING_CLOUD VIDEO`` (0013,xx), else the surgeon, the Series
Description and the retention policy's safety-video words; operation minutes = Performed
Procedure Step start to end, else the recording's length.
"""

from __future__ import annotations

import io
import logging
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from typing import Any

from pydicom import dcmread
from pydicom.dataset import Dataset
from sqlalchemy import delete, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from cloud.models import Study, SurgicalVideo
from cloud.retention_policy import SeriesFacts, load_policy

logger = logging.getLogger(__name__)

VIDEO_SOP_CLASSES = frozenset(
    {
        "1.2.840.10008.5.1.4.1.1.77.1.1.1",  # Video Endoscopic Image Storage
        "1.2.840.10008.5.1.4.1.1.77.1.2.1",  # Video Microscopic Image Storage
        "1.2.840.10008.5.1.4.1.1.77.1.4.1",  # Video Photographic Image Storage
    }
)
PRIVATE_CREATOR = "IMAGING_CLOUD VIDEO"
PRIVATE_GROUP = 0x0013
# element offsets inside the private block
APPLICANT, CAMERA_ROLE, VIDEO_CLASS = 0x01, 0x02, 0x03
CAMERA_ROLES = ("panorama", "field", "endoscope")
CLASS_CODES = {"FIELD": "surgical_field_video", "SAFETY": "safety_video"}  # retention classes


@dataclass(frozen=True)
class VideoHeader:
    """What the catalogue keeps of one video object's header."""

    sop_instance_uid: str
    study_instance_uid: str
    series_instance_uid: str
    sop_class_uid: str
    patient_id: str
    institution_name: str
    procedure: str
    diagnosis: str
    surgeon: str
    applicant: str
    camera_role: str
    video_class: str
    operation_date: str
    operation_minutes: float | None
    duration_s: float | None
    width: int
    height: int
    frame_rate: float | None
    transfer_syntax_uid: str
    definition: str
    derived_from_uid: str


def _private(ds: Dataset, offset: int) -> str:
    try:
        block = ds.private_block(PRIVATE_GROUP, PRIVATE_CREATOR)
        return str(block[offset].value or "").strip()
    except KeyError:
        return ""


def _minutes(date: str, start: str, end_date: str, end: str) -> float | None:
    def parse(day: str, time: str) -> datetime | None:
        try:
            return datetime.strptime(day + time.split(".")[0].ljust(6, "0")[:6], "%Y%m%d%H%M%S")
        except ValueError:
            return None

    begun, ended = parse(date, start), parse(end_date or date, end)
    if begun is None or ended is None or ended <= begun:
        return None
    return round((ended - begun).total_seconds() / 60.0, 1)


def _float(value: Any) -> float | None:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if number > 0 else None


def read_header(ds: Dataset) -> VideoHeader:
    """The catalogue's view of a video object's header (Pixel Data is not needed)."""
    role = _private(ds, CAMERA_ROLE).lower()
    description = str(ds.get("SeriesDescription", "") or "")
    if role not in CAMERA_ROLES:
        role = next((r for r in CAMERA_ROLES if r in description.lower()), "")
    video_class = CLASS_CODES.get(_private(ds, VIDEO_CLASS).upper(), "")
    if not video_class:
        facts = SeriesFacts(
            str(ds.get("SeriesInstanceUID", "")),
            str(ds.get("Modality", "")),
            description,
            frozenset({str(ds.SOPClassUID)}),
        )
        video_class = load_policy().classify_series(facts).retention_class
    surgeon = str(ds.get("PerformingPhysicianName", "") or "")
    fps = _float(ds.get("CineRate")) or (
        1000.0 / frame_time if (frame_time := _float(ds.get("FrameTime"))) else None
    )
    frames = _float(ds.get("NumberOfFrames"))
    duration = round(frames / fps, 3) if frames and fps else None
    date = str(ds.get("PerformedProcedureStepStartDate", "") or ds.get("StudyDate", "") or "")
    minutes = _minutes(
        date,
        str(ds.get("PerformedProcedureStepStartTime", "") or ""),
        str(ds.get("PerformedProcedureStepEndDate", "") or ""),
        str(ds.get("PerformedProcedureStepEndTime", "") or ""),
    )
    if minutes is None and duration:
        minutes = round(duration / 60.0, 1)
    rows, columns = int(ds.get("Rows", 0) or 0), int(ds.get("Columns", 0) or 0)
    derivation = ds.get("SourceImageSequence") or []
    meta = getattr(ds, "file_meta", Dataset())
    return VideoHeader(
        sop_instance_uid=str(ds.SOPInstanceUID),
        study_instance_uid=str(ds.StudyInstanceUID),
        series_instance_uid=str(ds.get("SeriesInstanceUID", "")),
        sop_class_uid=str(ds.SOPClassUID),
        patient_id=str(ds.get("PatientID", "") or ""),
        institution_name=str(ds.get("InstitutionName", "") or ""),
        procedure=str(
            ds.get("PerformedProcedureStepDescription", "") or ds.get("StudyDescription", "") or ""
        ),
        diagnosis=str(ds.get("AdmittingDiagnosesDescription", "") or ""),
        surgeon=surgeon,
        applicant=_private(ds, APPLICANT) or surgeon,
        camera_role=role,
        video_class=video_class,
        operation_date=date[:8],
        operation_minutes=minutes,
        duration_s=duration,
        width=columns,
        height=rows,
        frame_rate=round(fps, 3) if fps else None,
        transfer_syntax_uid=str(meta.get("TransferSyntaxUID", "") or ""),
        definition="HD" if rows >= 720 else "SD",
        derived_from_uid=str(derivation[0].get("ReferencedSOPInstanceUID", ""))
        if derivation
        else "",
    )


class VideoCatalogue:
    """The `surgical_videos` table: filled at store time, read by search and review."""

    def __init__(self, sessions: sessionmaker[Session]) -> None:
        self._sessions = sessions

    def after_store(self, part10: bytes, sop_class_uid: str, hospital_pk: int | None) -> None:
        """Record a stored video object; never raises (the object is archived regardless)."""
        if sop_class_uid not in VIDEO_SOP_CLASSES:
            return
        try:
            ds = dcmread(io.BytesIO(part10), stop_before_pixels=True)
            self.record(read_header(ds), hospital_pk)
        except Exception:
            logger.warning("stored video not catalogued", exc_info=True)

    def record(self, header: VideoHeader, hospital_pk: int | None) -> int:
        """Insert the video's row (an object stored again changes nothing); returns its pk."""
        with self._sessions() as session:
            found = session.scalar(
                select(SurgicalVideo.pk).where(
                    SurgicalVideo.sop_instance_uid == header.sop_instance_uid
                )
            )
            if found is not None:
                return found
            owner = session.scalar(
                select(Study.hospital_pk).where(
                    Study.study_instance_uid == header.study_instance_uid
                )
            )
            row = SurgicalVideo(
                **asdict(header),
                hospital_pk=owner if owner is not None else hospital_pk,
                created_at=datetime.now(UTC),
            )
            session.add(row)
            try:
                session.commit()
            except IntegrityError:  # a concurrent store of the same object won
                session.rollback()
                pk = session.scalar(
                    select(SurgicalVideo.pk).where(
                        SurgicalVideo.sop_instance_uid == header.sop_instance_uid
                    )
                )
                assert pk is not None
                return pk
            return row.pk

    def by_uid(self, sop_instance_uid: str) -> SurgicalVideo | None:
        with self._sessions() as session:
            return session.scalar(
                select(SurgicalVideo).where(SurgicalVideo.sop_instance_uid == sop_instance_uid)
            )

    def forget(self, session: Session, study_instance_uid: str) -> None:
        """Drop a deleted study's videos (annotations, review links and viewings cascade)."""
        session.execute(
            delete(SurgicalVideo).where(SurgicalVideo.study_instance_uid == study_instance_uid)
        )
