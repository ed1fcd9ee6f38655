"""``POST /api/exports``: de-identified studies for teaching and research, as a ZIP download.

Each study must be within the requester's scope and their role must include ``export``; the
export is audited with its project, and the ZIP is built in a temporary file (spilled to disk
past 64 MB) so a large export never sits whole in memory.
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from typing import IO, Annotated, Literal

from fastapi import APIRouter, Depends, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import StreamingResponse
from pydantic import BaseModel, Field

from cloud.access import AccessDeniedError, Principal
from cloud.export import export_studies
from viewer_api.access_deps import audit_entry, require
from viewer_api.deps import ArchiveDep, SettingsDep

router = APIRouter(prefix="/api/exports", tags=["export"])
CHUNK = 1024 * 1024


class ExportRequest(BaseModel):
    study_uids: list[Annotated[str, Field(max_length=64)]] = Field(min_length=1, max_length=50)
    project: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
    format: Literal["dicom", "jpeg"] = "dicom"


def _chunks(handle: IO[bytes]) -> Iterator[bytes]:
    try:
        handle.seek(0)
        while chunk := handle.read(CHUNK):
            yield chunk
    finally:
        handle.close()


@router.post("")
async def export(
    body: ExportRequest,
    request: Request,
    archive: ArchiveDep,
    settings: SettingsDep,
    who: Annotated[Principal, Depends(require("export"))],
) -> StreamingResponse:
    for uid in body.study_uids:
        try:
            owner = await run_in_threadpool(archive.access.require_study, who, "export", uid)
        except AccessDeniedError:
            denied = audit_entry(who, request, "export", outcome="denied", study_instance_uid=uid)
            await run_in_threadpool(archive.audit.append, denied)
            raise
        entry = audit_entry(
            who,
            request,
            "export",
            study_instance_uid=uid,
            patient_id=owner.patient_id,
            detail={"project": body.project, "format": body.format},
        )
        await run_in_threadpool(archive.audit.append, entry)
    output = tempfile.SpooledTemporaryFile(max_size=64 * CHUNK)

    def work() -> None:
        export_studies(
            archive,
            body.study_uids,
            output,
            project=body.project,
            data_dir=settings.data_dir,
            requester=f"{who.name}@{who.hospital_id or 'region'}",
            fmt=body.format,
        )

    try:
        await run_in_threadpool(work)
    except BaseException:
        output.close()
        raise
    filename = f"{body.project}-{body.format}.zip"
    headers = {"Content-Disposition": f'attachment; filename="{filename}"'}
    return StreamingResponse(_chunks(output), media_type="application/zip", headers=headers)
