"""A surgical video's annotations as a DICOM Comprehensive SR, stored in the video's study.

The document (PS3.3 A.35.3) travels with the study to any PACS: its title is the local code
``99IMGCLOUD VIDANN`` "Surgical video annotation"; under the root CONTAINER come the title
page (procedure, applicant, hospital, surgeon, diagnosis as TEXT items) and one CONTAINER per
annotation (concept "Surgical phase" or "Key step") holding TEXT items for label, tissue,
instrument, action, compliance and note, and a TCOORD (Temporal Range Type ``SEGMENT``,
Referenced Time Offsets = [start, end] in seconds) SELECTED FROM an IMAGE item that references
the video instance.

None of its concept names is one the report intake (`cloud.report_sr`) reads as findings or
impression, so storing it never replaces the study's diagnostic report: the intake refuses it
as "no findings or impression" and the report stays as it was.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.filewriter import dcmwrite
from pydicom.sequence import Sequence as DicomSequence
from pydicom.uid import ExplicitVRLittleEndian, generate_uid
from sqlalchemy import select
from sqlalchemy.orm import Session

from cloud.errors import InstanceNotFoundError
from cloud.models import Patient, Study

COMPREHENSIVE_SR = "1.2.840.10008.5.1.4.1.1.88.33"
UID_ROOT = "1.2.826.0.1.3680043.10.1370."  # the project's root, as collectors.video_wrap
SCHEME = "99IMGCLOUD"
SERIES_NUMBER = 900  # after the acquisitions, as derived series usually are

CODES: dict[str, tuple[str, str]] = {
    "title": ("VIDANN", "Surgical video annotation"),
    "procedure": ("VIDPROC", "Procedure"),
    "applicant": ("VIDAPPL", "Applicant"),
    "hospital": ("VIDHOSP", "Hospital"),
    "surgeon": ("VIDSURG", "Surgeon"),
    "diagnosis": ("VIDDIAG", "Diagnosis"),
    "phase": ("VIDPHASE", "Surgical phase"),
    "step": ("VIDSTEP", "Key step"),
    "label": ("VIDLABEL", "Label"),
    "tissue": ("VIDTISS", "Tissue"),
    "instrument": ("VIDINST", "Instrument"),
    "action": ("VIDACT", "Action"),
    "compliance": ("VIDCOMP", "Compliance"),
    "note": ("VIDNOTE", "Note"),
    "time": ("VIDTIME", "Time range"),
    "video": ("VIDSRC", "Source video"),
}
TITLE_PAGE_ITEMS = ("procedure", "applicant", "hospital", "surgeon", "diagnosis")
ANNOTATION_TEXTS = ("label", "tissue", "instrument", "action", "compliance", "note")
# Patient and General Study attributes copied from the video, so the SR joins its study.
_PATIENT_STUDY = (
    "PatientName", "PatientID", "IssuerOfPatientID", "PatientBirthDate", "PatientSex",
    "StudyInstanceUID", "StudyDate", "StudyTime", "ReferringPhysicianName", "StudyID",
    "AccessionNumber", "StudyDescription",
)  # fmt: skip


@dataclass(frozen=True)
class VideoReference:
    study_instance_uid: str
    series_instance_uid: str
    sop_instance_uid: str
    sop_class_uid: str


@dataclass(frozen=True)
class AnnotationSr:
    """What goes into one document: the video, its study's attributes, title page and marks."""

    video: VideoReference
    study_attributes: Dataset  # patient + study attributes of the video object
    title_page: dict[str, Any]
    annotations: Sequence[dict[str, Any]]  # the annotation JSON of cloud.video_annotations
    author: str
    created: datetime
    institution_name: str = ""


def study_attributes(session: Session, study_instance_uid: str) -> Dataset:
    """The Patient and General Study attributes of a stored study, from the index (no blob
    is read, so a study whose objects went to the cold tier still gets its SR at once)."""
    found = session.execute(
        select(Study, Patient)
        .join(Patient, Study.patient_pk == Patient.pk)
        .where(Study.study_instance_uid == study_instance_uid)
    ).first()
    if found is None:
        raise InstanceNotFoundError(f"study {study_instance_uid} is not in the archive")
    study, patient = found
    ds = Dataset()
    ds.PatientName = patient.patient_name
    ds.PatientID = patient.patient_id
    ds.IssuerOfPatientID = patient.issuer_of_patient_id
    ds.PatientBirthDate = patient.patient_birth_date
    ds.PatientSex = patient.patient_sex
    ds.StudyInstanceUID = study.study_instance_uid
    ds.StudyDate = study.study_date
    ds.StudyTime = study.study_time
    ds.ReferringPhysicianName = study.referring_physician_name
    ds.StudyID = study.study_id
    ds.AccessionNumber = study.accession_number
    ds.StudyDescription = study.study_description
    return ds


def _code(key: str) -> Dataset:
    value, meaning = CODES[key]
    code = Dataset()
    code.CodeValue = value
    code.CodingSchemeDesignator = SCHEME
    code.CodeMeaning = meaning
    return code


def _item(relationship: str, value_type: str, concept: str) -> Dataset:
    item = Dataset()
    item.RelationshipType = relationship
    item.ValueType = value_type
    item.ConceptNameCodeSequence = DicomSequence([_code(concept)])
    return item


def _text(concept: str, value: str) -> Dataset:
    item = _item("CONTAINS", "TEXT", concept)
    item.TextValue = value
    return item


def _container(relationship: str, concept: str, children: list[Dataset]) -> Dataset:
    item = _item(relationship, "CONTAINER", concept) if relationship else Dataset()
    if not relationship:  # the root has no relationship
        item.ValueType = "CONTAINER"
        item.ConceptNameCodeSequence = DicomSequence([_code(concept)])
    item.ContinuityOfContent = "SEPARATE"
    item.ContentSequence = DicomSequence(children)
    return item


def _image(video: VideoReference) -> Dataset:
    item = _item("SELECTED FROM", "IMAGE", "video")
    reference = Dataset()
    reference.ReferencedSOPClassUID = video.sop_class_uid
    reference.ReferencedSOPInstanceUID = video.sop_instance_uid
    item.ReferencedSOPSequence = DicomSequence([reference])
    return item


def _seconds(value: float) -> str:
    """A DS of at most 16 characters."""
    text = f"{float(value):.3f}".rstrip("0").rstrip(".")
    return text or "0"


def _time_range(video: VideoReference, start: float, end: float) -> Dataset:
    item = _item("CONTAINS", "TCOORD", "time")
    item.TemporalRangeType = "SEGMENT"
    item.ReferencedTimeOffsets = [_seconds(start), _seconds(end)]
    item.ContentSequence = DicomSequence([_image(video)])
    return item


def _annotation(video: VideoReference, annotation: dict[str, Any]) -> Dataset:
    concept = "step" if annotation.get("kind") == "step" else "phase"
    children = [
        _text(key, str(annotation[key]))
        for key in ANNOTATION_TEXTS
        if str(annotation.get(key) or "").strip()
    ]
    children.append(_time_range(video, float(annotation["start"]), float(annotation["end"])))
    return _container("CONTAINS", concept, children)


def _evidence(video: VideoReference) -> DicomSequence:
    """Hierarchical SOP Instance Reference to the video (Current Requested Procedure
    Evidence: what the document was made from)."""
    instance = Dataset()
    instance.ReferencedSOPClassUID = video.sop_class_uid
    instance.ReferencedSOPInstanceUID = video.sop_instance_uid
    series = Dataset()
    series.SeriesInstanceUID = video.series_instance_uid
    series.ReferencedSOPSequence = DicomSequence([instance])
    study = Dataset()
    study.StudyInstanceUID = video.study_instance_uid
    study.ReferencedSeriesSequence = DicomSequence([series])
    return DicomSequence([study])


def build(document: AnnotationSr) -> Dataset:
    """The Comprehensive SR dataset, with its File Meta Information."""
    video = document.video
    ds = Dataset()
    ds.SpecificCharacterSet = "ISO_IR 192"
    ds.SOPClassUID = COMPREHENSIVE_SR
    ds.SOPInstanceUID = generate_uid(UID_ROOT)
    for keyword in _PATIENT_STUDY:
        value = document.study_attributes.get(keyword, "")
        setattr(ds, keyword, value if value is not None else "")
    ds.StudyInstanceUID = video.study_instance_uid
    # SR Document Series
    ds.Modality = "SR"
    ds.SeriesInstanceUID = generate_uid(UID_ROOT)
    ds.SeriesNumber = SERIES_NUMBER
    ds.SeriesDescription = "Surgical video annotation"
    ds.ReferencedPerformedProcedureStepSequence = DicomSequence()
    # General Equipment
    ds.Manufacturer = "imaging-cloud"
    ds.InstitutionName = document.institution_name[:64]
    # SR Document General
    ds.InstanceNumber = 1
    ds.ContentDate = document.created.strftime("%Y%m%d")
    ds.ContentTime = document.created.strftime("%H%M%S")
    ds.CompletionFlag = "COMPLETE"
    ds.VerificationFlag = "UNVERIFIED"
    ds.PerformedProcedureCodeSequence = DicomSequence()
    ds.CurrentRequestedProcedureEvidenceSequence = _evidence(video)
    author = Dataset()
    author.ObserverType = "PSN"
    author.PersonName = document.author[:64]
    author.InstitutionName = document.institution_name[:64]
    ds.AuthorObserverSequence = DicomSequence([author])
    # SR Document Content: the root container and its tree
    children = [
        _text(key, str(document.title_page[key]))
        for key in TITLE_PAGE_ITEMS
        if str(document.title_page.get(key) or "").strip()
    ]
    ordered = sorted(document.annotations, key=lambda a: (float(a["start"]), float(a["end"])))
    children += [_annotation(video, annotation) for annotation in ordered]
    root = _container("", "title", children)
    for keyword in ("ValueType", "ConceptNameCodeSequence", "ContinuityOfContent"):
        setattr(ds, keyword, root[keyword].value)
    ds.ContentSequence = root.ContentSequence
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = ds.SOPClassUID
    meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta = meta
    return ds


def part10(ds: Dataset) -> bytes:
    """The dataset as a DICOM Part-10 file (Explicit VR Little Endian)."""
    buffer = io.BytesIO()
    dcmwrite(buffer, ds, enforce_file_format=True)
    return buffer.getvalue()


def time_ranges(ds: Dataset) -> list[tuple[str, float, float, str]]:
    """(kind, start, end, referenced SOP Instance UID) of each annotation container, in order:
    what a reader of the document gets back."""
    found = []
    for item in ds.get("ContentSequence", []):
        if item.ValueType != "CONTAINER":
            continue
        kind = item.ConceptNameCodeSequence[0].CodeMeaning
        for child in item.get("ContentSequence", []):
            if child.ValueType == "TCOORD":
                start, end = (float(v) for v in child.ReferencedTimeOffsets)
                image = child.ContentSequence[0].ReferencedSOPSequence[0]
                found.append((kind, start, end, str(image.ReferencedSOPInstanceUID)))
    return found
