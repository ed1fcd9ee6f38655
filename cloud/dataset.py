"""Read a received Part-10 object, refuse what an archive cannot keep, extract index attributes.

Reading is tolerant where DICOM allows it (odd VRs, private tags) and strict where silence
would lose data: a parse that stops before the end of the bytes, Pixel Data shorter than its
header says, or missing/invalid UIDs are refused.
"""

from __future__ import annotations

import io
import re
import warnings
from dataclasses import dataclass
from typing import Any

from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.valuerep import PersonName

from cloud.errors import InvalidDatasetError, SOPClassMismatchError

_UID = re.compile(r"^(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))*$")
_NATIVE_SYNTAXES = {"1.2.840.10008.1.2", "1.2.840.10008.1.2.1", "1.2.840.10008.1.2.2"}


@dataclass(frozen=True)
class PatientAttributes:
    patient_id: str
    issuer_of_patient_id: str
    patient_name: str
    name_groups: tuple[str, str, str]  # casefolded alphabetic, ideographic, phonetic
    patient_birth_date: str
    patient_sex: str


@dataclass(frozen=True)
class ParsedInstance:
    """What the index needs of one received object."""

    sop_class_uid: str
    sop_instance_uid: str
    study_instance_uid: str
    series_instance_uid: str
    transfer_syntax_uid: str
    patient: PatientAttributes
    study: dict[str, Any]
    series: dict[str, Any]
    instance: dict[str, Any]


def check_uid(value: object, keyword: str) -> str:
    """Return ``value`` as a UID string, or refuse it with the attribute's name."""
    text = str(value or "").strip("\0 ")
    if not text:
        raise InvalidDatasetError(f"{keyword} is missing")
    if len(text) > 64 or not _UID.match(text):
        raise InvalidDatasetError(f"{keyword} {text[:80]!r} is not a valid UID")
    return text


# ISO 2022 designations (ESC, intermediates 0x20-0x2F, final 0x30-0x7E). pydicom 3.0 leaves
# some in decoded text (e.g. ESC $ ) A of GB2312); they are encoding, never content.
_ISO2022_ESCAPE = re.compile("\x1b[\x20-\x2f]+[\x30-\x7e]")


def clean_text(text: str) -> str:
    """Decoded text without leftover ISO 2022 escape sequences."""
    return _ISO2022_ESCAPE.sub("", text) if "\x1b" in text else text


def with_part10_header(data: bytes) -> bytes:
    """Add the preamble and DICM prefix to File Meta sent without them (some STOW clients)."""
    vr = data[4:6]
    if data[128:132] != b"DICM" and data[:2] == b"\x02\x00" and vr.isalpha() and vr.isupper():
        return b"\0" * 128 + b"DICM" + data
    return data


def parse_part10(data: bytes) -> tuple[Dataset, ParsedInstance]:
    """Parse a Part-10 file and validate it for archiving.

    This is the boundary where untrusted bytes meet the parser: any exception pydicom raises
    while reading or converting values (zlib, struct, recursion, unknown VRs...) is a refusal
    of the object, never a crash of the request.
    """
    if len(data) < 132 or data[128:132] != b"DICM":
        raise InvalidDatasetError("not a DICOM Part-10 file: no 128-byte preamble followed by DICM")
    stream = io.BytesIO(data)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ds = dcmread(stream)
            if stream.tell() < len(data):
                raise InvalidDatasetError(
                    f"parsing stopped at byte {stream.tell()} of {len(data)}: the object is "
                    "malformed"
                )
            return ds, extract(ds)
    except InvalidDatasetError:
        raise
    except (Exception, RecursionError) as exc:
        raise InvalidDatasetError(f"cannot parse DICOM: {type(exc).__name__}: {exc}") from exc


def _text(ds: Dataset, keyword: str) -> str:
    value = ds.get(keyword)
    if value is None:
        return ""
    if isinstance(value, (list, tuple)) or getattr(value, "is_multival", False):
        return clean_text("\\".join(str(v) for v in value))
    return clean_text(str(value).strip("\0 "))


def _int(ds: Dataset, keyword: str) -> int | None:
    value = ds.get(keyword)
    try:
        return int(value) if value not in (None, "") else None
    except (TypeError, ValueError):
        return None


def name_groups(value: object) -> tuple[str, str, str]:
    """Casefolded (alphabetic, ideographic, phonetic) groups of a Person Name, for matching."""
    name = PersonName(clean_text(str(value or "")))
    return (
        name.alphabetic.casefold(),
        name.ideographic.casefold(),
        name.phonetic.casefold(),
    )


def _check_pixel_length(ds: Dataset, transfer_syntax_uid: str) -> None:
    if "PixelData" not in ds or transfer_syntax_uid not in _NATIVE_SYNTAXES:
        return
    rows, columns = _int(ds, "Rows"), _int(ds, "Columns")
    bits, samples = _int(ds, "BitsAllocated"), _int(ds, "SamplesPerPixel") or 1
    frames = _int(ds, "NumberOfFrames") or 1
    if not rows or not columns or not bits:
        raise InvalidDatasetError("Pixel Data present but Rows, Columns or BitsAllocated missing")
    expected = (rows * columns * samples * frames * bits + 7) // 8
    actual = len(ds.PixelData)
    if actual < expected:
        raise InvalidDatasetError(
            f"Pixel Data is truncated: {actual} bytes, header needs {expected}"
        )


def extract(ds: Dataset) -> ParsedInstance:
    """Pull the index attributes out of a parsed dataset, refusing missing or invalid UIDs."""
    meta = getattr(ds, "file_meta", None)
    transfer_syntax = check_uid(
        meta.get("TransferSyntaxUID") if meta else None, "TransferSyntaxUID"
    )
    sop_class = check_uid(ds.get("SOPClassUID"), "SOPClassUID")
    sop_instance = check_uid(ds.get("SOPInstanceUID"), "SOPInstanceUID")
    if meta is not None and meta.get("MediaStorageSOPInstanceUID") not in (None, "", sop_instance):
        raise SOPClassMismatchError("MediaStorageSOPInstanceUID differs from SOPInstanceUID")
    _check_pixel_length(ds, transfer_syntax)
    patient_name = ds.get("PatientName") or ""
    return ParsedInstance(
        sop_class_uid=sop_class,
        sop_instance_uid=sop_instance,
        study_instance_uid=check_uid(ds.get("StudyInstanceUID"), "StudyInstanceUID"),
        series_instance_uid=check_uid(ds.get("SeriesInstanceUID"), "SeriesInstanceUID"),
        transfer_syntax_uid=transfer_syntax,
        patient=PatientAttributes(
            patient_id=_text(ds, "PatientID")[:64],
            issuer_of_patient_id=_text(ds, "IssuerOfPatientID")[:64],
            patient_name=clean_text(str(patient_name))[:324],
            name_groups=name_groups(patient_name),
            patient_birth_date=_text(ds, "PatientBirthDate")[:8],
            patient_sex=_text(ds, "PatientSex")[:16],
        ),
        study={
            "study_date": _text(ds, "StudyDate")[:8],
            "study_time": _text(ds, "StudyTime")[:16],
            "accession_number": _text(ds, "AccessionNumber")[:16],
            "study_id": _text(ds, "StudyID")[:16],
            "study_description": _text(ds, "StudyDescription")[:64],
            "referring_physician_name": _text(ds, "ReferringPhysicianName")[:324],
            "timezone_offset_from_utc": _text(ds, "TimezoneOffsetFromUTC")[:16],
            "department": _text(ds, "InstitutionalDepartmentName")[:64],
        },
        series={
            "modality": _text(ds, "Modality")[:16],
            "series_number": _int(ds, "SeriesNumber"),
            "series_description": _text(ds, "SeriesDescription")[:64],
            "body_part_examined": _text(ds, "BodyPartExamined")[:16],
            "series_date": _text(ds, "SeriesDate")[:8],
            "series_time": _text(ds, "SeriesTime")[:16],
            "performed_procedure_step_start_date": _text(ds, "PerformedProcedureStepStartDate")[:8],
            "performed_procedure_step_start_time": _text(ds, "PerformedProcedureStepStartTime")[
                :16
            ],
        },
        instance={
            "sop_class_uid": sop_class,
            "instance_number": _int(ds, "InstanceNumber"),
            "transfer_syntax_uid": transfer_syntax,
            "rows": _int(ds, "Rows"),
            "columns": _int(ds, "Columns"),
            "number_of_frames": _int(ds, "NumberOfFrames") or (1 if "PixelData" in ds else None),
            "bits_allocated": _int(ds, "BitsAllocated"),
        },
    )
