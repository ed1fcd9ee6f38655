"""The four data-quality scores of a study, from what is known about it.

Pure: no database, no blobs. `cloud.quality` gathers what the index and a few instance
headers say about a study into `StudyFacts`; `score` turns them into completeness,
timeliness, consistency and conformance (0-100 each), an overall weighted mean, and the
findings that say what lost points. Findings name attributes, never their values, so a score
can be shown to whoever may see the study's details without showing more.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone, tzinfo
from typing import Any

from pydicom import config
from pydicom.dataset import Dataset
from pydicom.uid import UID
from pydicom.valuerep import validate_value

from cloud.dataset import name_groups
from cloud.quality_policy import DIMENSIONS, QualityPolicy


@dataclass(frozen=True)
class InstanceFacts:
    """One instance as the index has it."""

    sop_class_uid: str
    transfer_syntax_uid: str
    rows: int | None
    columns: int | None
    bits_allocated: int | None
    number_of_frames: int | None  # None: no Pixel Data


@dataclass(frozen=True)
class Header:
    """The header of one instance, read for the per-instance checks."""

    series_instance_uid: str  # the series the index filed it under
    dataset: Dataset


@dataclass(frozen=True)
class ReconciliationFacts:
    """The gateway's latest audit of the study (`cloud.models.Reconciliation`)."""

    gateway_instances: int
    missing: int
    mismatched: int


@dataclass
class StudyFacts:
    """Everything the four scores are computed from."""

    study_instance_uid: str
    index: dict[str, str]  # patient and study attributes in the index, by DICOM keyword
    series: list[dict[str, str]]  # per series, by keyword (Modality, BodyPartExamined, ...)
    instances: list[InstanceFacts]
    first_received: datetime | None
    report_status: str | None  # "final", "draft", ... or None without a report
    reconciliation: ReconciliationFacts | None
    conflicts: int  # SOP Instance UIDs of the study that received a different object
    headers: list[Header] = field(default_factory=list)
    headers_skipped: int = 0  # cold without cached metadata, shredded or unreadable


@dataclass(frozen=True)
class Score:
    """One study's scores and the findings behind them."""

    values: dict[str, float]
    overall: float
    findings: list[dict[str, Any]]


class _Ledger:
    """The findings of one dimension: points lost, and notes that cost nothing."""

    def __init__(self, dimension: str) -> None:
        self.dimension = dimension
        self.findings: list[dict[str, Any]] = []

    def lose(self, code: str, points: float, detail: str, **more: Any) -> None:
        entry = {"dimension": self.dimension, "code": code, "points": round(points, 1)}
        self.findings.append({**entry, "detail": detail, **more})

    def note(self, code: str, detail: str, **more: Any) -> None:
        self.lose(code, 0, detail, **more)

    @property
    def remaining(self) -> float:
        lost = sum(float(f["points"]) for f in self.findings)
        return max(0.0, 100.0 - lost)


def score(facts: StudyFacts, policy: QualityPolicy, zone: tzinfo) -> Score:
    """The four scores of a study; ``zone`` is where a StudyTime without offset was taken."""
    ledgers = {d: _Ledger(d) for d in DIMENSIONS}
    _completeness(facts, policy, ledgers["completeness"])
    _timeliness(facts, policy, zone, ledgers["timeliness"])
    _consistency(facts, policy, ledgers["consistency"])
    _conformance(facts, policy, ledgers["conformance"])
    values = {d: round(ledger.remaining, 1) for d, ledger in ledgers.items()}
    weighted = sum(values[d] * policy.weights[d] for d in DIMENSIONS)
    overall = round(weighted / sum(policy.weights.values()), 1)
    return Score(values, overall, [f for ledger in ledgers.values() for f in ledger.findings])


# --- completeness ---------------------------------------------------------------------------

SERIES_KEYWORDS = frozenset({"Modality", "BodyPartExamined", "SeriesDescription"})


def _completeness(facts: StudyFacts, policy: QualityPolicy, ledger: _Ledger) -> None:
    share = (100.0 - policy.report_points) / len(policy.required)
    first = facts.headers[0].dataset if facts.headers else None
    for keyword in policy.required:
        if keyword in facts.index:
            if not facts.index[keyword]:
                ledger.lose("missing_attribute", share, f"{keyword} is empty", attribute=keyword)
        elif keyword in SERIES_KEYWORDS:
            empty, total = sum(1 for s in facts.series if not s.get(keyword)), len(facts.series)
            if empty:
                detail = f"{keyword} is empty in {empty} of {total} series"
                ledger.lose("missing_attribute", share * empty / total, detail, attribute=keyword)
        elif first is None:
            ledger.note("not_checked", f"{keyword}: no header readable", attribute=keyword)
        elif not present(first, keyword):
            detail = f"{keyword} is absent from the first instance"
            ledger.lose("missing_attribute", share, detail, attribute=keyword)
    if facts.report_status is None:
        ledger.lose("no_report", policy.report_points, "no report received for the study")
    elif facts.report_status != "final":
        detail = f"the current report is {facts.report_status}, not final"
        ledger.lose("report_not_final", policy.draft_penalty, detail)


# --- timeliness -----------------------------------------------------------------------------


def _clock(time_text: str) -> tuple[int, int, int] | None:
    """HHMMSS(.ffffff), HHMM, HH or the retired HH:MM:SS; None if it is none of them."""
    text = time_text.replace(":", "").split(".")[0].strip()
    if not text.isdigit() or len(text) not in (2, 4, 6):
        return None
    hour, minute, second = int(text[:2]), int(text[2:4] or 0), int(text[4:6] or 0)
    if hour > 23 or minute > 59 or second > 60:
        return None
    return hour, minute, min(second, 59)


def _offset(text: str) -> tzinfo | None:
    """Timezone Offset From UTC (``+0800``) as a zone, or None."""
    text = text.strip()
    if len(text) != 5 or text[0] not in "+-" or not text[1:].isdigit():
        return None
    minutes = int(text[1:3]) * 60 + int(text[3:])
    if minutes > 14 * 60:
        return None
    return timezone(timedelta(minutes=minutes if text[0] == "+" else -minutes))


def acquired_at(facts: StudyFacts, zone: tzinfo) -> tuple[datetime | None, str]:
    """When the study was acquired, and what had to be assumed ("" if nothing)."""
    date_text, time_text = facts.index.get("StudyDate", ""), facts.index.get("StudyTime", "")
    notes = []
    if not date_text:
        dated = sorted((s["SeriesDate"], s["SeriesTime"]) for s in facts.series if s["SeriesDate"])
        if dated:
            date_text, time_text = dated[0]
            notes.append("StudyDate empty: the earliest SeriesDate used")
    try:
        day = datetime.strptime(date_text, "%Y%m%d")
    except ValueError:
        return None, ""
    clock = _clock(time_text)
    if clock is None:  # the benefit of the doubt: the last moment of that day
        clock = (23, 59, 59)
        notes.append("no valid StudyTime: the end of the day assumed")
    local = _offset(facts.index.get("TimezoneOffsetFromUTC", "")) or zone
    moment = day.replace(hour=clock[0], minute=clock[1], second=clock[2], tzinfo=local)
    return moment, "; ".join(notes)


def _timeliness(facts: StudyFacts, policy: QualityPolicy, zone: tzinfo, ledger: _Ledger) -> None:
    acquired, assumed = acquired_at(facts, zone)
    if acquired is None or facts.first_received is None:
        detail = "StudyDate (and every SeriesDate) is empty or not a date"
        ledger.lose("no_acquisition_date", 100, detail)
        return
    if assumed:
        ledger.note("assumed", assumed)
    hours = (facts.first_received - acquired).total_seconds() / 3600
    if hours < -policy.clock_skew_minutes / 60:
        detail = f"acquired {-hours:.1f} h after the upload: a wrong date or clock"
        ledger.lose("acquired_after_upload", 100, detail, hours=round(hours, 2))
        return
    full, zero = policy.full_marks_hours, policy.zero_marks_hours
    value = 100.0 if hours <= full else max(0.0, 100.0 * (zero - hours) / (zero - full))
    detail = f"uploaded {max(hours, 0):.1f} h after acquisition (full marks within {full:g} h"
    detail += f", none after {zero:g} h)"
    code = "late_upload" if value < 100 else "upload_delay"
    ledger.lose(code, 100 - value, detail, hours=round(hours, 2))


# --- consistency ----------------------------------------------------------------------------


def _consistency(facts: StudyFacts, policy: QualityPolicy, ledger: _Ledger) -> None:
    points, held, found = policy.consistency, len(facts.instances), facts.reconciliation
    if found is None:
        ledger.note("not_reconciled", "no gateway reconciliation of this study yet")
    else:
        if found.gateway_instances > held:
            detail = (
                f"the gateway listed {found.gateway_instances} instances, the cloud holds {held}"
            )
            ledger.lose("reconciliation_missing", points["reconciliation_missing"], detail)
        if found.mismatched:
            detail = f"{found.mismatched} instances differ in content from the gateway's"
            ledger.lose("reconciliation_mismatched", points["reconciliation_mismatched"], detail)
    patient = (facts.index.get("PatientID", ""), name_groups(facts.index.get("PatientName", "")))
    other_patient = other_uids = 0
    for header in facts.headers:
        ds = header.dataset
        if (_text(ds, "PatientID"), name_groups(ds.get("PatientName", ""))) != patient:
            other_patient += 1
        filed = (facts.study_instance_uid, header.series_instance_uid)
        if (_text(ds, "StudyInstanceUID"), _text(ds, "SeriesInstanceUID")) != filed:
            other_uids += 1
    checked = len(facts.headers)
    if other_patient:
        detail = f"{other_patient} of {checked} checked instances name another patient (ID/name)"
        ledger.lose("patient_identity", points["patient_identity"], detail)
    if other_uids:
        detail = f"{other_uids} of {checked} checked instances carry another Study or Series UID"
        ledger.lose("uid_mismatch", points["uid_mismatch"], detail)
    if facts.conflicts:
        lost = min(points["conflict_max"], points["conflict_each"] * facts.conflicts)
        detail = f"{facts.conflicts} SOP Instance UIDs of the study received a different object"
        ledger.lose("ingest_conflict", lost, detail)


def _text(ds: Dataset, keyword: str) -> str:
    try:
        return str(ds.get(keyword, "") or "").strip("\0 ")
    except Exception:  # unreadable value: not equal to anything
        return "\0unreadable"


# --- conformance ----------------------------------------------------------------------------


def _registered(uid: str, kind: str) -> bool:
    value = UID(uid)
    return not value.is_private and value.type == kind


def _conformance(facts: StudyFacts, policy: QualityPolicy, ledger: _Ledger) -> None:
    points = policy.conformance
    classes = sorted({i.sop_class_uid for i in facts.instances})
    unknown = [uid for uid in classes if not _registered(uid, "SOP Class")]
    if unknown:
        detail = f"SOP class not in the DICOM registry: {', '.join(unknown[:5])}"
        ledger.lose("unknown_sop_class", points["unknown_sop_class"], detail)
    syntaxes = sorted({i.transfer_syntax_uid for i in facts.instances})
    strange = [uid for uid in syntaxes if not _registered(uid, "Transfer Syntax")]
    if strange:
        detail = f"transfer syntax not in the DICOM registry: {', '.join(strange[:5])}"
        ledger.lose("unknown_transfer_syntax", points["unknown_transfer_syntax"], detail)
    incomplete = sum(1 for i in facts.instances if _is_image(i) and not _has_geometry(i))
    if incomplete:
        detail = f"{incomplete} image instances lack Rows, Columns or BitsAllocated"
        ledger.lose("image_attributes", points["image_attributes"], detail)
    invalid = sorted(set().union(*(invalid_elements(h.dataset) for h in facts.headers)))
    if invalid:
        lost = min(points["invalid_value_max"], points["invalid_value_each"] * len(invalid))
        detail = f"values invalid for their VR: {', '.join(invalid[:10])}"
        ledger.lose("invalid_values", lost, detail, attributes=invalid)


def _is_image(instance: InstanceFacts) -> bool:
    return instance.number_of_frames is not None or str(UID(instance.sop_class_uid).name).endswith(
        "Image Storage"
    )


def _has_geometry(instance: InstanceFacts) -> bool:
    return bool(instance.rows and instance.columns and instance.bits_allocated)


# --- checks on one instance header ----------------------------------------------------------

# Value representations holding text whose format the standard defines.
_TEXT_VRS = frozenset("AE AS CS DA DS DT IS LO LT PN SH ST TM UC UI UR UT".split())


def present(ds: Dataset, keyword: str) -> bool:
    """Whether ``keyword`` is in ``ds`` with a non-empty value."""
    try:
        value = ds.get(keyword)
    except Exception:  # there, but unreadable: conformance counts it
        return True
    return value is not None and str(value).strip("\0 ") != ""


def invalid_elements(ds: Dataset) -> set[str]:
    """Keywords (or tags) of the top-level text elements whose value breaks its VR's rules."""
    invalid: set[str] = set()
    for tag in list(ds.keys()):
        try:
            element = ds[tag]
            if element.VR not in _TEXT_VRS or element.value in (None, ""):
                continue
            values = element.value if element.VM > 1 else [element.value]
            for value in values:
                text = getattr(value, "original_string", None) or str(value)
                validate_value(element.VR, text, config.RAISE)
        except Exception:  # pydicom cannot convert it, or the validator refuses it
            invalid.add(_element_name(ds, tag))
    return invalid


def _element_name(ds: Dataset, tag: Any) -> str:
    try:
        return str(ds[tag].keyword or ds[tag].tag)
    except Exception:
        return str(tag)
