"""Diagnostic-report SR objects for tests, built the way hospitals' RIS send them.

`text_sr` makes a Basic Text SR (TID 2000-like: a Findings container with Finding TEXT items and
an Impressions container), or, with ``sop_class`` and ``headings``, a Comprehensive SR whose
sections are named in Chinese with local codes, as Chinese RIS products do. Provenance: built
here with pydicom from PS3.16 codes (DCM 121070-121073, LOINC 18748-4); no patient data.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from pydicom.dataset import Dataset
from pydicom.uid import generate_uid

from cloud.report_sr import BASIC_TEXT_SR
from imaging_cloud.synthetic import StudySpec, to_part10

CODED_HEADINGS = (("121070", "DCM", "Findings"), ("121072", "DCM", "Impressions"))
CHINESE_HEADINGS = (("RIS-01", "99RIS", "影像表现"), ("RIS-02", "99RIS", "诊断意见"))
LOCAL_PARAGRAPH = ("RIS-09", "99RIS", "段落")


@dataclass
class SrReport:
    findings: list[str] = field(default_factory=lambda: ["右肺上叶见结节影。大小约8mm。"])
    impression: list[str] = field(default_factory=lambda: ["右肺上叶小结节。建议随访。"])
    author: str = "Wang^Fang=王^芳="
    verifier: str = "Zhang^Wei=张^伟="  # "" for an unverified (draft) report
    content_date: str = "20250311"
    content_time: str = "093000"


def code(value: str, scheme: str, meaning: str) -> Dataset:
    item = Dataset()
    item.CodeValue, item.CodingSchemeDesignator, item.CodeMeaning = value, scheme, meaning
    return item


def _text(value: str, scheme: str, meaning: str, text: str) -> Dataset:
    item = Dataset()
    item.RelationshipType, item.ValueType = "CONTAINS", "TEXT"
    item.ConceptNameCodeSequence = [code(value, scheme, meaning)]
    item.TextValue = text
    return item


def _container(heading: tuple[str, str, str], children: list[Dataset]) -> Dataset:
    item = Dataset()
    item.RelationshipType, item.ValueType, item.ContinuityOfContent = (
        "CONTAINS",
        "CONTAINER",
        "SEPARATE",
    )
    item.ConceptNameCodeSequence = [code(*heading)]
    item.ContentSequence = children
    return item


def text_sr(
    study: StudySpec,
    report: SrReport | None = None,
    *,
    sop_class: str = BASIC_TEXT_SR,
    headings: tuple[tuple[str, str, str], ...] = CODED_HEADINGS,
    paragraph: tuple[str, str, str] | None = None,
) -> Dataset:
    """An SR of ``study``'s patient holding ``report``; ``paragraph`` names every TEXT item
    with one local concept (default: DCM Finding / Impression)."""
    found = report or SrReport()
    ds = Dataset()
    ds.SpecificCharacterSet = "ISO_IR 192"
    ds.SOPClassUID, ds.SOPInstanceUID = sop_class, generate_uid()
    ds.StudyInstanceUID, ds.SeriesInstanceUID = study.study_instance_uid, generate_uid()
    ds.Modality, ds.SeriesNumber, ds.InstanceNumber = "SR", 99, 1
    ds.PatientID, ds.PatientName = study.patient.patient_id, study.patient.patient_name
    ds.PatientBirthDate, ds.PatientSex = study.patient.birth_date, study.patient.sex
    ds.StudyDate, ds.StudyTime = study.study_date, study.study_time
    ds.AccessionNumber, ds.StudyDescription = study.accession_number, study.study_description
    ds.ReferringPhysicianName, ds.StudyID = study.referring_physician_name, study.study_id
    ds.Manufacturer = "imaging-cloud tests"
    ds.ContentDate, ds.ContentTime = found.content_date, found.content_time
    ds.CompletionFlag = "COMPLETE"
    ds.VerificationFlag = "VERIFIED" if found.verifier else "UNVERIFIED"
    if found.verifier:
        verifier = Dataset()
        verifier.VerifyingObserverName = found.verifier
        verifier.VerifyingOrganization = "Radiology"
        verifier.VerificationDateTime = found.content_date + found.content_time
        verifier.VerifyingObserverIdentificationCodeSequence = []
        ds.VerifyingObserverSequence = [verifier]
    ds.ValueType, ds.ContinuityOfContent = "CONTAINER", "SEPARATE"
    ds.ConceptNameCodeSequence = [code("18748-4", "LN", "Diagnostic Imaging Report")]
    observer = Dataset()
    observer.RelationshipType, observer.ValueType = "HAS OBS CONTEXT", "PNAME"
    observer.ConceptNameCodeSequence = [code("121008", "DCM", "Person Observer Name")]
    observer.PersonName = found.author
    findings_heading, impression_heading = headings
    ds.ContentSequence = [
        observer,
        _container(
            findings_heading,
            [_text(*(paragraph or ("121071", "DCM", "Finding")), t) for t in found.findings],
        ),
        _container(
            impression_heading,
            [_text(*(paragraph or ("121073", "DCM", "Impression")), t) for t in found.impression],
        ),
    ]
    return ds


def text_sr_bytes(study: StudySpec, report: SrReport | None = None, **more: object) -> bytes:
    return to_part10(text_sr(study, report, **more))  # type: ignore[arg-type]
