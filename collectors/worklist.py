"""Who is on the recording: a Modality Worklist match (C-FIND, PS3.4 K.6) with pynetdicom.

An operating-room recorder often knows only the accession number (it names the file after
it). The hospital's worklist (RIS, or Orthanc's worklist plugin) knows the patient, the study
UID and the procedure. `find_worklist_item` asks for exactly one scheduled item and maps it to
the sidecar fields of `collectors.video_wrap`; no item is None, several are an error, since
guessing the patient of a surgical video is not an option. An item whose accession number
(or patient ID) is not the one asked for is not a match either: a worklist that matches
loosely (case-folding, prefix, a key it ignores) must not name the patient.

The item describes the study the recording joins (`collectors.video_intake.join_study`):
patient module, Study Instance UID, accession, Requested Procedure Description as Study
Description, Referring Physician, Requested Procedure ID as Study ID (IHE Scheduled
Workflow's mapping) and the step's scheduled start as Study Date/Time, so every device of the
procedure writes the same study attributes; the recording's own start is only its content
and acquisition time.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterator
from typing import Any

from pydicom.dataset import Dataset
from pydicom.sequence import Sequence
from pynetdicom import AE
from pynetdicom.sop_class import ModalityWorklistInformationFind  # type: ignore[attr-defined]

from collectors.video_probe import VideoError

logger = logging.getLogger(__name__)

__all__ = ["WorklistUnavailableError", "find_worklist_item", "item_to_sidecar"]

_PENDING = (0xFF00, 0xFF01)
MAX_MATCHES = 50  # more than one is already an error; stop reading at this many


class WorklistUnavailableError(VideoError):
    """The worklist could not be asked (no association, refused query): try again later."""

    dimse_status = 0xA700
    http_status = 503
    title = "Worklist unavailable"


def _query(accession_number: str | None, patient_id: str | None, date: str | None) -> Dataset:
    ds = Dataset()
    ds.PatientName = ""
    ds.PatientID = patient_id or ""
    ds.IssuerOfPatientID = ""
    ds.PatientBirthDate = ""
    ds.PatientSex = ""
    ds.AccessionNumber = accession_number or ""
    ds.StudyInstanceUID = ""
    ds.ReferringPhysicianName = ""
    ds.RequestedProcedureDescription = ""
    ds.RequestedProcedureID = ""
    step = Dataset()
    step.Modality = ""
    step.ScheduledStationAETitle = ""
    step.ScheduledProcedureStepStartDate = (date or "").replace("-", "")
    step.ScheduledProcedureStepStartTime = ""
    step.ScheduledProcedureStepDescription = ""
    step.ScheduledPerformingPhysicianName = ""
    step.ScheduledProcedureStepID = ""
    ds.ScheduledProcedureStepSequence = Sequence([step])
    return ds


def _text(ds: Dataset, keyword: str) -> str:
    value = ds.get(keyword)
    return "" if value is None else str(value).strip()


def item_to_sidecar(item: Dataset) -> dict[str, Any]:
    """The sidecar fields one worklist item gives.

    Patient and study-level fields are kept even when empty (the study's value is then empty,
    and `join_study` repeats it); the scheduled date, procedure and surgeon only when given.
    """
    steps = item.get("ScheduledProcedureStepSequence") or []
    step = steps[0] if steps else Dataset()
    birth = _text(item, "PatientBirthDate")
    sex = _text(item, "PatientSex")
    fields = {
        "patient_id": _text(item, "PatientID"),
        "issuer_of_patient_id": _text(item, "IssuerOfPatientID"),
        "patient_name": _text(item, "PatientName"),
        "birth_date": f"{birth[:4]}-{birth[4:6]}-{birth[6:8]}" if len(birth) == 8 else "",
        "sex": sex if sex in ("M", "F", "O") else "",
        "accession_number": _text(item, "AccessionNumber"),
        "study_instance_uid": _text(item, "StudyInstanceUID"),
        "study_description": _text(item, "RequestedProcedureDescription"),
        "referring_physician": _text(item, "ReferringPhysicianName"),
        "study_id": _text(item, "RequestedProcedureID"),
    }
    optional = {
        "study_date": _text(step, "ScheduledProcedureStepStartDate"),
        "study_time": _text(step, "ScheduledProcedureStepStartTime"),
        "procedure": _text(step, "ScheduledProcedureStepDescription")
        or _text(item, "RequestedProcedureDescription"),
        "surgeon": _text(step, "ScheduledPerformingPhysicianName"),
    }
    if not re.fullmatch(r"\d{8}", optional["study_date"]):  # absent, or a range: not a date
        optional["study_date"] = optional["study_time"] = ""  # a time without its date: nothing
    elif not re.fullmatch(r"\d{2}(\d{2}(\d{2}(\.\d{1,6})?)?)?", optional["study_time"]):
        optional["study_time"] = ""
    fields.update({key: value for key, value in optional.items() if value})
    return fields


def _answers_query(item: Dataset, accession_number: str | None, patient_id: str | None) -> bool:
    """Whether ``item`` has exactly the accession number and patient ID that were asked for."""
    return (
        not accession_number or _text(item, "AccessionNumber") == accession_number.strip()
    ) and (not patient_id or _text(item, "PatientID") == patient_id.strip())


def _matches(
    host: str, port: int, called_ae: str, calling_ae: str, query: Dataset, timeout: float
) -> Iterator[Dataset]:
    ae = AE(ae_title=calling_ae)
    ae.add_requested_context(ModalityWorklistInformationFind)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = timeout
    assoc = ae.associate(host, port, ae_title=called_ae)
    if not assoc.is_established:
        raise WorklistUnavailableError(
            f"no association with worklist {called_ae}@{host}:{port} "
            f"(does it know calling AE {calling_ae!r}?)"
        )
    try:
        for status, identifier in assoc.send_c_find(query, ModalityWorklistInformationFind):
            code = getattr(status, "Status", None)
            if code is None:
                raise WorklistUnavailableError(
                    f"worklist {called_ae} aborted the query or did not answer in time"
                )
            if code in _PENDING and identifier is not None:
                yield identifier
            elif code != 0x0000:
                raise WorklistUnavailableError(f"worklist {called_ae} refused: 0x{code:04X}")
    finally:
        assoc.release()


def find_worklist_item(
    host: str,
    port: int,
    called_ae: str,
    calling_ae: str,
    accession_number: str | None = None,
    patient_id: str | None = None,
    date: str | None = None,
    *,
    timeout: float = 30.0,
) -> dict[str, Any] | None:
    """The sidecar fields of the one worklist item matching, or None when nothing matches.

    Parameters
    ----------
    accession_number, patient_id, date
        Matching keys; at least the accession number or the patient ID is required. ``date``
        (YYYYMMDD or YYYY-MM-DD) matches the Scheduled Procedure Step Start Date.

    Raises
    ------
    VideoError
        Several items match ("ambiguous"), or no key was given.
    WorklistUnavailableError
        The worklist could not be reached or refused the query.
    """
    if not (accession_number or patient_id):
        raise VideoError("a worklist match needs an accession number or a patient ID")
    if len(accession_number or "") > 16 or len(patient_id or "") > 64:
        raise VideoError(
            f"cannot ask the worklist for accession {accession_number!r} / patient "
            f"{patient_id!r}: an accession number has at most 16 characters, a patient ID 64"
        )
    for key, value in (("accession number", accession_number), ("patient ID", patient_id)):
        if value and ("*" in value or "?" in value or "\\" in value):
            raise VideoError(f"the {key} {value!r} contains wildcard or separator characters")
    query = _query(accession_number, patient_id, date)
    found: list[Dataset] = []
    try:
        for item in _matches(host, port, called_ae, calling_ae, query, timeout):
            found.append(item)
            if len(found) >= MAX_MATCHES:
                break
    except (OSError, RuntimeError) as exc:
        raise WorklistUnavailableError(f"worklist {called_ae}@{host}:{port}: {exc}") from exc
    keys = ", ".join(
        f"{name} {value!r}"
        for name, value in (("accession", accession_number), ("patient", patient_id))
        if value
    )
    answering = [item for item in found if _answers_query(item, accession_number, patient_id)]
    if len(answering) < len(found):
        logger.warning(
            "worklist %s: %d item(s) for %s carry another accession or patient; ignored",
            called_ae, len(found) - len(answering), keys,
        )  # fmt: skip
    found = answering
    if not found:
        logger.info("worklist %s: no item for %s", called_ae, keys)
        return None
    if len(found) > 1:
        raise VideoError(f"worklist match is ambiguous: {len(found)} items for {keys}")
    return item_to_sidecar(found[0])
