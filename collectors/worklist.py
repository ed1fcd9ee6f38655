"""Who is on the recording: a Modality Worklist match (C-FIND, PS3.4 K.6) with pynetdicom.

An operating-room recorder often knows only the accession number (it names the file after
it). The hospital's worklist (RIS, or Orthanc's worklist plugin) knows the patient, the study
UID and the procedure. `find_worklist_item` asks for exactly one scheduled item and maps it to
the sidecar fields of `collectors.video_wrap`; no item is None, several are an error, since
guessing the patient of a surgical video is not an option.
"""

from __future__ import annotations

import logging
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
    ds.PatientBirthDate = ""
    ds.PatientSex = ""
    ds.AccessionNumber = accession_number or ""
    ds.StudyInstanceUID = ""
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
    """The sidecar fields one worklist item gives (empty ones left out)."""
    steps = item.get("ScheduledProcedureStepSequence") or []
    step = steps[0] if steps else Dataset()
    birth = _text(item, "PatientBirthDate")
    fields = {
        "patient_id": _text(item, "PatientID"),
        "patient_name": _text(item, "PatientName"),
        "birth_date": f"{birth[:4]}-{birth[4:6]}-{birth[6:8]}" if len(birth) == 8 else "",
        "sex": _text(item, "PatientSex") if _text(item, "PatientSex") in ("M", "F", "O") else "",
        "accession_number": _text(item, "AccessionNumber"),
        "study_instance_uid": _text(item, "StudyInstanceUID"),
        "procedure": _text(item, "RequestedProcedureDescription")
        or _text(step, "ScheduledProcedureStepDescription"),
        "surgeon": _text(step, "ScheduledPerformingPhysicianName"),
    }
    return {key: value for key, value in fields.items() if value}


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
    if not found:
        logger.info("worklist %s: no item for %s", called_ae, keys)
        return None
    if len(found) > 1:
        raise VideoError(f"worklist match is ambiguous: {len(found)} items for {keys}")
    return item_to_sidecar(found[0])
