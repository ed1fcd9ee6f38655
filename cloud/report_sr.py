"""A report read from a DICOM Structured Report (Basic Text, Enhanced, Comprehensive SR).

The content tree is walked for the two parts a reader wants: findings (影像表现) and the
impression (诊断意见). A part is recognised by its concept name, coded (DCM 121070/121071
Findings/Finding, 121072/121073 Impressions/Impression, 121076/121077 Conclusion(s); LOINC
18782-3 and 59776-5 findings, 19005-8 and 55110-1 impression) or, since hospitals' PACS often
use local codes, by its meaning ("Findings", "影像表现", "检查所见", "诊断意见", ...). A TEXT item
inside a recognised container belongs to it. Who reported: the Author Observer Sequence, else
the content tree's Person Observer Name (DCM 121008), else the ENT participant; who reviewed:
the Verifying Observer. A report is final when the SR's Verification Flag is VERIFIED.
"""

from __future__ import annotations

import io
import warnings
from collections.abc import Iterable
from typing import Any

from pydicom import dcmread
from pydicom.dataset import Dataset

from cloud.dataset import with_part10_header
from cloud.report_fields import (
    InvalidReportError,
    NotAReportError,
    ReportFields,
    display_name,
    fit,
)

BASIC_TEXT_SR = "1.2.840.10008.5.1.4.1.1.88.11"
ENHANCED_SR = "1.2.840.10008.5.1.4.1.1.88.22"
COMPREHENSIVE_SR = "1.2.840.10008.5.1.4.1.1.88.33"
SR_SOP_CLASSES = frozenset({BASIC_TEXT_SR, ENHANCED_SR, COMPREHENSIVE_SR})

FINDINGS_CODES = frozenset(
    {("DCM", "121070"), ("DCM", "121071"), ("LN", "18782-3"), ("LN", "59776-5")}
)
IMPRESSION_CODES = frozenset(
    {
        ("DCM", "121072"),
        ("DCM", "121073"),
        ("DCM", "121076"),
        ("DCM", "121077"),
        ("LN", "19005-8"),
        ("LN", "55110-1"),
    }
)
FINDINGS_MEANINGS = frozenset(
    {"findings", "finding", "procedure findings", "影像表现", "检查所见", "所见", "影像所见"}
)
IMPRESSION_MEANINGS = frozenset(
    {
        "impression",
        "impressions",
        "conclusion",
        "conclusions",
        "诊断意见",
        "诊断",
        "印象",
        "检查结论",
        "结论",
        "诊断结论",
        "影像诊断",
    }
)
PERSON_OBSERVER_NAME = ("DCM", "121008")


# Document titles of SRs this archive writes itself that are not reports (cloud.video_sr).
NOT_REPORTS = frozenset({("99IMGCLOUD", "VIDANN")})


def read_sr(part10: bytes) -> tuple[ReportFields, str]:
    """The report an SR object carries, and the object's SOP Instance UID;
    `InvalidReportError` if it is not an SR we can read."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ds = dcmread(io.BytesIO(with_part10_header(part10)), stop_before_pixels=True)
    except Exception as exc:  # pydicom raises many kinds on damaged input
        raise InvalidReportError(f"the SR object cannot be read: {type(exc).__name__}") from exc
    sop_class = str(ds.get("SOPClassUID", ""))
    if sop_class not in SR_SOP_CLASSES:
        raise InvalidReportError(f"SOP class {sop_class or '(none)'} is not a text SR")
    if _code(_first(ds, "ConceptNameCodeSequence")) in NOT_REPORTS:
        raise NotAReportError("a surgical video annotation SR is not a diagnostic report")
    parts: dict[str, list[str]] = {"findings": [], "impression": []}
    observers: list[str] = []
    _walk(ds.get("ContentSequence", []), None, parts, observers)
    if not parts["findings"] and not parts["impression"]:
        raise InvalidReportError(
            "the SR holds no findings or impression (no TEXT item under a concept named "
            "Findings/Impression, DCM 121070-121073, LOINC 18782-3/19005-8, 影像表现/诊断意见)"
        )
    request = _first(ds, "ReferencedRequestSequence")
    verified = str(ds.get("VerificationFlag", "")).upper() == "VERIFIED"
    found = fit(
        ReportFields(
            study_instance_uid=str(ds.get("StudyInstanceUID", "")),
            status="final" if verified else "draft",
            patient_id=_text(ds, "PatientID"),
            accession_number=_text(ds, "AccessionNumber") or _text(request, "AccessionNumber"),
            body_part=_text(ds, "BodyPartExamined"),
            exam_name=_text(request, "RequestedProcedureDescription")
            or _text(ds, "StudyDescription"),
            local_exam_code=_text(_first(request, "RequestedProcedureCodeSequence"), "CodeValue"),
            exam_date=_text(ds, "StudyDate"),
            report_date=_text(ds, "ContentDate"),
            report_time=_text(ds, "ContentTime"),
            findings="\n".join(parts["findings"]),
            impression="\n".join(parts["impression"]),
            reporting_physician=_author(ds) or (observers[0] if observers else ""),
            reviewing_physician=_person(
                _first(ds, "VerifyingObserverSequence"), "VerifyingObserverName"
            ),
        )
    )
    return found, str(ds.get("SOPInstanceUID", ""))[:64]


def _walk(
    items: Iterable[Dataset],
    section: str | None,
    parts: dict[str, list[str]],
    observers: list[str],
) -> None:
    """Collect TEXT values under the part they belong to, and observer names, in order."""
    for item in items:
        value_type = str(item.get("ValueType", "")).upper()
        concept = _first(item, "ConceptNameCodeSequence")
        part = _part_of(concept) or section
        if value_type == "TEXT" and part is not None:
            text = _text(item, "TextValue").strip()
            if text:
                parts[part].append(text)
        elif value_type == "PNAME" and _code(concept) == PERSON_OBSERVER_NAME:
            name = _person(item, "PersonName")
            if name:
                observers.append(name)
        elif value_type == "CONTAINER":
            _walk(item.get("ContentSequence", []), part, parts, observers)


def _part_of(concept: Dataset | None) -> str | None:
    if concept is None:
        return None
    code = _code(concept)
    meaning = " ".join(_text(concept, "CodeMeaning").casefold().replace(":", " ").split())
    if code in FINDINGS_CODES or meaning in FINDINGS_MEANINGS:
        return "findings"
    if code in IMPRESSION_CODES or meaning in IMPRESSION_MEANINGS:
        return "impression"
    return None


def _code(concept: Dataset | None) -> tuple[str, str]:
    if concept is None:
        return ("", "")
    return (_text(concept, "CodingSchemeDesignator").upper(), _text(concept, "CodeValue"))


def _author(ds: Dataset) -> str:
    for author in ds.get("AuthorObserverSequence", []):
        name = _person(author, "PersonName")
        if name:
            return name
    for participant in ds.get("ParticipantSequence", []):
        if str(participant.get("ParticipationType", "")).upper() == "ENT":
            name = _person(participant, "PersonName")
            if name:
                return name
    return ""


def _first(ds: Dataset | None, keyword: str) -> Dataset | None:
    if ds is None:
        return None
    sequence = ds.get(keyword)
    return sequence[0] if sequence else None


def _text(ds: Dataset | None, keyword: str) -> str:
    if ds is None:
        return ""
    value: Any = ds.get(keyword, "")
    return "" if value is None else str(value)


def _person(ds: Dataset | None, keyword: str) -> str:
    return display_name(_text(ds, keyword))
