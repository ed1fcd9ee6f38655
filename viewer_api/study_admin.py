"""Study-level acts beyond reading: correct details (``edit_details``), delete (``delete``).

Both are audited with the principal's identity; a delete names how many instances went.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request
from fastapi.concurrency import run_in_threadpool
from pydantic import BaseModel, Field

from viewer_api.access_deps import StudyGrant, audit_entry, study_access
from viewer_api.deps import ArchiveDep

router = APIRouter(prefix="/api/studies", tags=["studies"])


class StudyDetails(BaseModel):
    study_description: str = Field(max_length=64)


@router.patch("/{study}")
async def edit_study(
    study: str,
    body: StudyDetails,
    archive: ArchiveDep,
    _grant: Annotated[StudyGrant, Depends(study_access("edit_details"))],
) -> dict[str, Any]:
    description = body.study_description.strip()
    await run_in_threadpool(archive.update_study_details, study, description)
    return {"study_instance_uid": study, "study_description": description}


@router.delete("/{study}")
async def delete_study(
    study: str,
    request: Request,
    archive: ArchiveDep,
    grant: Annotated[StudyGrant, Depends(study_access("delete"))],
) -> dict[str, Any]:
    deleted = await run_in_threadpool(archive.delete_study, study)
    entry = audit_entry(
        grant.principal,
        request,
        "deleted",
        study_instance_uid=study,
        patient_id=deleted.patient_id,
        detail={"instances": deleted.instances, "blobs": deleted.blobs_deleted},
    )
    await run_in_threadpool(archive.audit.append, entry)
    return {"study_instance_uid": study, "instances_deleted": deleted.instances}
