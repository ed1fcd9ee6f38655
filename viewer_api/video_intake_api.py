"""Surgical video intake over HTTP (issue 8): ``POST /api/videos``.

``multipart/form-data`` with a ``file`` part (the MP4/MOV recording) and a ``sidecar`` part
(JSON: the `collectors.video_wrap` fields). With ``?accession=ACC`` the video joins the one
study the index holds with that Accession Number (within the uploader's hospital), the
cloud's counterpart of a worklist match: its study-level attributes (Study Instance UID,
Study Date/Time, Description, Accession, Referring Physician, Study ID) and patient module
are copied from the index (`collectors.video_intake.join_study`), so the study stays
consistent; the sidecar's ``procedure`` goes to the Performed Procedure Step Description only.
A sidecar naming another patient, study or accession is refused (422).

The upload is streamed to a temporary file (never held in memory), prepared in a worker
thread (`collectors.video_intake.prepare`: conformance report, transcode only when the stream
cannot be stored as is, DICOM wrap) and stored with ``archive.store``. Needs ``upload``.
Refusals are problem+json and store nothing: 400 unusable video or form, 413 too large,
415 not multipart or not MP4/MOV, 422 bad sidecar or no single study for the accession.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse
from sqlalchemy import select

from cloud.access import Principal
from cloud.archive import Archive
from cloud.models import Patient, Study
from collectors.video_intake import SidecarError, UploadSpool, prepare_upload, receive_upload
from collectors.video_probe import VideoError
from viewer_api.access_deps import audit_entry, require
from viewer_api.deps import ArchiveDep
from viewer_api.problems import HTTPProblem

router = APIRouter(tags=["video intake"])
pages = APIRouter()

# The wrapper takes at most 4 GiB of MP4 in its single Pixel Data fragment; the headroom is
# for the form's boundaries, headers and sidecar. (A larger recording that a transcode would
# shrink must come through the gateway's watched folder.)
MAX_VIDEO_UPLOAD_BYTES = 4 * 1024**3 + 16 * 1024**2
Uploader = Annotated[Principal, Depends(require("upload"))]


def study_fields_for_accession(
    archive: Archive, accession: str, hospital_pk: int | None
) -> dict[str, Any]:
    """Patient and study-level fields of the one study with ``accession`` (422 if none or
    several), as `collectors.video_intake.join_study` takes them.

    Everything comes from the index's columns (studies, patients); the patient's Other IDs
    and the study's Timezone Offset are not carried over.
    """
    query = (
        select(Study, Patient)
        .join(Patient, Study.patient_pk == Patient.pk)
        .where(Study.accession_number == accession)
        .limit(2)
    )
    if hospital_pk is not None:
        query = query.where(Study.hospital_pk == hospital_pk)
    with archive.sessions() as session:
        rows = session.execute(query).all()
    if len(rows) != 1:
        found = "no study" if not rows else "several studies"
        raise HTTPProblem(
            422, "No single study", f"{found} with accession number {accession!r} in your reach"
        )
    study, patient = rows[0]
    birth = patient.patient_birth_date
    return {
        "patient_id": patient.patient_id,
        "issuer_of_patient_id": patient.issuer_of_patient_id,
        "patient_name": patient.patient_name,
        "birth_date": f"{birth[:4]}-{birth[4:6]}-{birth[6:8]}" if len(birth) == 8 else "",
        "sex": patient.patient_sex if patient.patient_sex in ("M", "F", "O") else "",
        "study_instance_uid": study.study_instance_uid,
        "accession_number": study.accession_number,
        "study_date": study.study_date,
        "study_time": study.study_time,
        "study_description": study.study_description,
        "referring_physician": study.referring_physician_name,
        "study_id": study.study_id,
    }


def _store(
    archive: Archive,
    upload: UploadSpool,
    workdir: Path,
    accession: str | None,
    who: Principal,
) -> dict[str, Any]:
    """Accession match, sidecar, prepare and store: the worker-thread part of the request."""
    study = (
        None
        if accession is None
        else study_fields_for_accession(archive, accession, who.hospital_pk)
    )
    if upload.sidecar is None and study is None:
        raise SidecarError("the upload has no 'sidecar' part (or give ?accession=)")
    prepared, outcome = prepare_upload(
        upload,
        workdir,
        lambda data: archive.store(data, source="http-video", hospital_pk=who.hospital_pk),
        study=study,
    )
    return {
        "studyInstanceUid": outcome.study_instance_uid,
        "seriesInstanceUid": outcome.series_instance_uid,
        "sopInstanceUid": outcome.sop_instance_uid,
        "sopClassUid": outcome.sop_class_uid,
        "transferSyntaxUid": prepared.transfer_syntax_uid,
        "transcoded": prepared.transcoded,
        "conformance": prepared.report,
        "_patient_id": str(prepared.header.PatientID),
    }


@router.post("/api/videos", status_code=201)
async def upload_video(
    request: Request,
    archive: ArchiveDep,
    who: Uploader,
    accession: Annotated[str | None, Query(min_length=1, max_length=16)] = None,
) -> JSONResponse:
    """Store one operating-room recording as a DICOM video object."""
    if accession is not None and any(c in "*?\\" or ord(c) < 32 for c in accession):
        raise HTTPProblem(400, "Invalid accession", "wildcards and control characters are refused")
    declared = request.headers.get("content-length")
    if declared is not None and (not declared.isdigit() or int(declared) > MAX_VIDEO_UPLOAD_BYTES):
        raise HTTPProblem(413, "Request too large", f"limited to {MAX_VIDEO_UPLOAD_BYTES} bytes")
    workdir = Path(tempfile.mkdtemp(prefix="video-upload-"))
    try:
        try:
            upload = await receive_upload(
                request.stream(),
                request.headers.get("content-type", ""),
                workdir,
                MAX_VIDEO_UPLOAD_BYTES,
            )
        except VideoError as exc:
            raise HTTPProblem(exc.http_status, exc.title, exc.detail) from exc
        try:
            body = await run_in_threadpool(_store, archive, upload, workdir, accession, who)
        except VideoError as exc:
            raise HTTPProblem(exc.http_status, exc.title, exc.detail) from exc
        finally:
            upload.close()
    finally:
        await run_in_threadpool(shutil.rmtree, workdir, True)
    patient_id = body.pop("_patient_id")
    entry = audit_entry(
        who,
        request,
        "upload",
        study_instance_uid=body["studyInstanceUid"],
        patient_id=patient_id,
        detail={"video": body["sopInstanceUid"], "transcoded": body["transcoded"]},
    )
    await run_in_threadpool(archive.audit.append, entry)
    return JSONResponse(body, status_code=201)
