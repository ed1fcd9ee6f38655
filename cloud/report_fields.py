"""What one report version says, checked: the fields a hospital sends, as JSON or in an SR.

`parse_document` turns a hospital's JSON into `ReportFields` or refuses it with every problem
named at once (`InvalidReportError`, HTTP 400). Dates are kept as DICOM DA (``YYYYMMDD``) and
times as TM (``HHMMSS``), whichever of the usual spellings arrived, so reports from JSON and
from DICOM SR compare and sort alike. Also here: the patient's age on the exam date, in DICOM
AS form, and the display form of a Person Name.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import astuple, dataclass, fields, replace
from datetime import date
from typing import Any

from cloud.dataset import check_uid, clean_text
from cloud.errors import ArchiveError, InvalidDatasetError

STATUSES = ("draft", "final")
CITABLE = ("findings", "impression")
MAX_TEXT = 32_000  # characters of findings or of impression: far beyond any real report

# Single-line fields and their column widths (cloud.models.Report).
LINE_LIMITS = {
    "patient_id": 64,
    "accession_number": 64,
    "exam_type": 16,
    "body_part": 64,
    "exam_name": 128,
    "local_exam_code": 64,
    "reporting_physician": 64,
    "reviewing_physician": 64,
}
DATE_FIELDS = ("request_date", "exam_date", "report_date")
DOCUMENT_KEYS = frozenset(
    {"study_instance_uid", "status", "report_time", *LINE_LIMITS, *DATE_FIELDS, *CITABLE}
)

_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_CONTROL_IN_TEXT = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")  # keeps tab and newlines
_DATE = re.compile(r"^(\d{4})-?(\d{2})-?(\d{2})$")
_TIME = re.compile(r"^(\d{2}):?(\d{2})(?::?(\d{2}))?(?:\.\d{1,6})?$")


class InvalidReportError(ArchiveError):
    """A report that cannot be kept as sent: a missing UID, a bad date, an unknown status..."""

    dimse_status = 0xC000
    http_status = 400
    title = "Invalid report"


class NotAReportError(InvalidReportError):
    """An SR that is not a diagnostic report by design (e.g. surgical video annotations)."""


@dataclass(frozen=True)
class ReportFields:
    """The content of one report version, normalised."""

    study_instance_uid: str
    status: str = "draft"
    patient_id: str = ""
    accession_number: str = ""
    exam_type: str = ""
    body_part: str = ""
    exam_name: str = ""
    local_exam_code: str = ""
    request_date: str = ""
    exam_date: str = ""
    report_date: str = ""
    report_time: str = ""
    findings: str = ""
    impression: str = ""
    reporting_physician: str = ""
    reviewing_physician: str = ""

    def content(self) -> tuple[Any, ...]:
        """What makes two versions the same report (whatever route they came by)."""
        return astuple(self)

    def as_columns(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self)}


def parse_document(document: Mapping[str, Any]) -> ReportFields:
    """A hospital's JSON report as `ReportFields`; `InvalidReportError` names every problem."""
    problems: list[str] = []
    unknown = sorted(set(document) - DOCUMENT_KEYS)
    if unknown:
        problems.append(f"unknown field(s) {', '.join(unknown)}")
    values: dict[str, str] = {}
    for key in DOCUMENT_KEYS:
        raw = document.get(key, "")
        if raw is None:
            raw = ""
        if not isinstance(raw, str):
            problems.append(f"{key} must be a string")
            continue
        values[key] = raw
    uid = values.get("study_instance_uid", "").strip()
    try:
        check_uid(uid, "study_instance_uid")
    except InvalidDatasetError as exc:
        problems.append(exc.detail)
    status = values.get("status", "").strip().lower() or "draft"
    if status not in STATUSES:
        problems.append(f"status must be one of {', '.join(STATUSES)}, not {status[:20]!r}")
    checked = {
        key: _line(key, values.get(key, ""), limit, problems) for key, limit in LINE_LIMITS.items()
    }
    dates = {key: _date(key, values.get(key, ""), problems) for key in DATE_FIELDS}
    report_time = _time("report_time", values.get("report_time", ""), problems)
    texts = {key: _text(key, values.get(key, ""), problems) for key in CITABLE}
    if not problems and not any(texts.values()):
        problems.append("a report needs findings or an impression (影像表现 或 诊断意见)")
    if problems:
        raise InvalidReportError("; ".join(problems))
    return ReportFields(
        study_instance_uid=uid,
        status=status,
        report_time=report_time,
        **checked,
        **dates,
        **texts,
    )


def fit(found: ReportFields) -> ReportFields:
    """Fields read from a DICOM object, cut to the columns and cleaned rather than refused:
    the object itself is already archived, so its report is kept as well as it can be."""
    lines = {
        key: _CONTROL.sub(" ", clean_text(getattr(found, key))).strip()[:limit]
        for key, limit in LINE_LIMITS.items()
    }
    texts = {
        key: _CONTROL_IN_TEXT.sub("", clean_text(getattr(found, key)))
        .replace("\r\n", "\n")
        .strip()[:MAX_TEXT]
        for key in CITABLE
    }
    dates = {key: _date(key, getattr(found, key), []) for key in DATE_FIELDS}
    return replace(
        found,
        report_time=_time("report_time", found.report_time, []),
        **lines,
        **texts,
        **dates,
    )


def _line(key: str, value: str, limit: int, problems: list[str]) -> str:
    text = value.strip()
    if _CONTROL.search(text) or "\\" in text:
        problems.append(f"{key} must be one line of printable text, without backslashes")
    elif len(text) > limit:
        problems.append(f"{key} is longer than {limit} characters")
    return text


def _text(key: str, value: str, problems: list[str]) -> str:
    text = value.replace("\r\n", "\n").strip()
    if _CONTROL_IN_TEXT.search(text):
        problems.append(f"{key} holds control characters")
    elif len(text) > MAX_TEXT:
        problems.append(f"{key} is longer than {MAX_TEXT} characters")
    return text


def _date(key: str, value: str, problems: list[str]) -> str:
    """``YYYYMMDD`` from ``YYYYMMDD`` or ``YYYY-MM-DD``; "" stays ""; a bad date is a problem
    (or, for what an SR said, simply dropped: ``problems`` is then thrown away)."""
    text = value.strip()
    if not text:
        return ""
    found = _DATE.match(text)
    try:
        if found is None:
            raise ValueError(text)
        date(int(found[1]), int(found[2]), int(found[3]))
    except ValueError:
        problems.append(f"{key} {text[:20]!r} is not a date (YYYYMMDD or YYYY-MM-DD)")
        return ""
    return found[1] + found[2] + found[3]


def _time(key: str, value: str, problems: list[str]) -> str:
    """``HHMMSS`` from ``HHMMSS``, ``HHMM``, ``HH:MM[:SS]`` (a fraction is dropped)."""
    text = value.strip()
    if not text:
        return ""
    found = _TIME.match(text)
    if found is None or int(found[1]) > 23 or int(found[2]) > 59 or int(found[3] or 0) > 60:
        problems.append(f"{key} {text[:20]!r} is not a time (HHMMSS or HH:MM:SS)")
        return ""
    return found[1] + found[2] + (found[3] or "00")


def dicom_age(birth_date: str, on: str) -> str:
    """The age on ``on`` of someone born on ``birth_date`` (both ``YYYYMMDD``), as DICOM AS:
    ``045Y``, or ``008M`` / ``012D`` for infants; "" when either date is unknown."""
    try:
        born = date(int(birth_date[:4]), int(birth_date[4:6]), int(birth_date[6:8]))
        day = date(int(on[:4]), int(on[4:6]), int(on[6:8]))
    except (ValueError, IndexError):
        return ""
    if day < born:
        return ""
    months = (day.year - born.year) * 12 + day.month - born.month - (day.day < born.day)
    if months >= 24:
        return f"{months // 12:03d}Y"
    if months >= 1:
        return f"{months:03d}M"
    return f"{(day - born).days:03d}D"


def display_name(person_name: str) -> str:
    """A DICOM Person Name for reading: the ideographic group (王^小东 → 王小东) when there is
    one, else the alphabetic one with its components spaced (Wang^XiaoDong → Wang XiaoDong)."""
    groups = clean_text(person_name).split("=")
    ideographic = groups[1] if len(groups) > 1 else ""
    if ideographic.strip("^ "):
        return "".join(part for part in ideographic.split("^") if part).strip()
    return " ".join(part for part in groups[0].split("^") if part).strip()
