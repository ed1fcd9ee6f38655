"""The gateway API: what a hospital gateway asks the cloud besides STOW-RS.

Every route needs the hospital's bearer credential and answers only about that hospital's
studies. ``/api/hospitals`` is the operators' view of all gateways (upload monitoring).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request, Response
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import StreamingResponse
from pydantic import BaseModel, Field

from cloud.access import AccessDeniedError, Principal
from cloud.dataset import check_uid
from cloud.errors import ArchiveError, InstanceNotFoundError
from cloud.hospitals import HospitalRef
from cloud.monitoring import upload_status
from collectors.multipart import new_boundary, stream_parts
from viewer_api.access_deps import bearer_token, require
from viewer_api.deps import ArchiveDep
from viewer_api.problems import HTTPProblem

router = APIRouter(prefix="/gateway-api/v1", tags=["gateway"])
operators = APIRouter(prefix="/api/hospitals", tags=["hospitals"])


def optional_hospital(request: Request, archive: ArchiveDep) -> HospitalRef | None:
    """The uploading hospital when a gateway credential is presented; a wrong one is refused."""
    token = bearer_token(request)
    if token is None:
        return None
    hospital = archive.hospitals.authenticate(token)
    if hospital is None:
        raise HTTPProblem(401, "Unauthorized", "the credential is unknown or revoked")
    return hospital


async def required_hospital(
    hospital: Annotated[HospitalRef | None, Depends(optional_hospital)],
) -> HospitalRef:
    if hospital is None:
        raise HTTPProblem(401, "Unauthorized", "the gateway API needs a hospital credential")
    return hospital


HospitalDep = Annotated[HospitalRef, Depends(required_hospital)]


class Heartbeat(BaseModel):
    queued: int = Field(ge=0)
    queued_bytes: int = Field(ge=0, default=0)
    quarantined: int = Field(ge=0, default=0)
    oldest_unsent_seconds: float | None = Field(ge=0, default=None)
    disk_free_bytes: int | None = Field(ge=0, default=None)
    consecutive_failures: int = Field(ge=0, default=0)
    last_error: str = Field(default="", max_length=4000)


class HeldQuery(BaseModel):
    sop_instance_uids: list[str] = Field(max_length=1000)


class Manifest(BaseModel):
    instances: dict[str, Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")]]


class SendBackResult(BaseModel):
    ok: bool
    detail: str = Field(default="", max_length=4000)


class SendBackRequest(BaseModel):
    study_instance_uid: str


def _valid_uid(uid: str, name: str) -> str:
    try:
        check_uid(uid, name)
    except ArchiveError as exc:
        raise HTTPProblem(400, f"Invalid {name}", exc.detail) from exc
    return uid


@router.post("/heartbeat")
async def heartbeat(beat: Heartbeat, hospital: HospitalDep, archive: ArchiveDep) -> dict[str, Any]:
    await run_in_threadpool(archive.hospitals.record_heartbeat, hospital, beat.model_dump())
    alerts = await run_in_threadpool(archive.hospitals.open_alerts, hospital)
    return {"hospital_id": hospital.hospital_id, "recorded": True, "alerts": alerts}


@router.get("/studies/{study}/manifest")
async def manifest(study: str, hospital: HospitalDep, archive: ArchiveDep) -> dict[str, Any]:
    _valid_uid(study, "StudyInstanceUID")
    held = await run_in_threadpool(archive.hospitals.study_manifest, hospital, study)
    return {
        "study_instance_uid": study,
        "instances": [
            {
                "sop_instance_uid": item.sop_instance_uid,
                "series_instance_uid": item.series_instance_uid,
                "sha256": item.sha256,
            }
            for item in held
        ],
    }


@router.post("/instances/held")
async def held(query: HeldQuery, hospital: HospitalDep, archive: ArchiveDep) -> dict[str, Any]:
    found = await run_in_threadpool(
        archive.hospitals.held_instances, hospital, query.sop_instance_uids
    )
    return {"instances": found}


@router.post("/studies/{study}/reconcile")
async def reconcile(
    study: str, manifest: Manifest, hospital: HospitalDep, archive: ArchiveDep
) -> dict[str, Any]:
    _valid_uid(study, "StudyInstanceUID")
    outcome = await run_in_threadpool(
        archive.hospitals.reconcile, hospital, study, manifest.instances
    )
    return {
        "study_instance_uid": study,
        "result": outcome.result,
        "missing": outcome.missing,
        "mismatched": outcome.mismatched,
        "cloud_instances": outcome.cloud_instances,
    }


@router.get("/send-backs")
async def send_backs(hospital: HospitalDep, archive: ArchiveDep) -> dict[str, Any]:
    pending = await run_in_threadpool(archive.hospitals.pending_send_backs, hospital)
    return {
        "send_backs": [
            {"id": row.pk, "study_instance_uid": row.study_instance_uid} for row in pending
        ]
    }


@router.get("/send-backs/{pk}/instances")
async def send_back_instances(pk: int, hospital: HospitalDep, archive: ArchiveDep) -> Response:
    request = await run_in_threadpool(archive.hospitals.send_back, pk)
    if request is None or request.hospital_pk != hospital.pk:
        raise InstanceNotFoundError(f"send-back {pk} does not exist for this hospital")
    found = await run_in_threadpool(archive.locate, request.study_instance_uid)
    boundary = new_boundary()

    def parts() -> Iterator[tuple[str, bytes]]:
        for stored in found:
            yield "application/dicom", archive.read(stored)

    return StreamingResponse(
        stream_parts(parts(), boundary),
        media_type=f'multipart/related; type="application/dicom"; boundary={boundary}',
    )


@router.post("/send-backs/{pk}")
async def finish_send_back(
    pk: int, result: SendBackResult, hospital: HospitalDep, archive: ArchiveDep
) -> dict[str, Any]:
    found = await run_in_threadpool(
        archive.hospitals.finish_send_back, hospital, pk, result.ok, result.detail
    )
    if not found:
        raise InstanceNotFoundError(f"send-back {pk} does not exist for this hospital")
    return {"id": pk, "state": "done" if result.ok else "failed"}


def _own_hospital_only(who: Principal, hospital_id: str) -> None:
    """Hospital-scoped staff act on their own hospital; regional and platform roles on any."""
    if who.scope_kind in ("hospital", "department") and who.hospital_id != hospital_id:
        raise AccessDeniedError(f"your account belongs to {who.hospital_id or 'no hospital'}")


@operators.get("")
async def hospitals_status(
    archive: ArchiveDep, who: Annotated[Principal, Depends(require("view_statistics"))]
) -> dict[str, Any]:
    found = await run_in_threadpool(upload_status, archive.sessions)
    if who.scope_kind in ("hospital", "department"):
        found = [h for h in found if h.get("hospital_id") == who.hospital_id]
    return {"hospitals": found}


@operators.post("/{hospital_id}/send-backs", status_code=202)
async def request_send_back(
    hospital_id: str,
    body: SendBackRequest,
    archive: ArchiveDep,
    who: Annotated[Principal, Depends(require("manage_hospitals"))],
) -> dict[str, Any]:
    _valid_uid(body.study_instance_uid, "StudyInstanceUID")
    _own_hospital_only(who, hospital_id)
    hospital = await run_in_threadpool(archive.hospitals.by_id, hospital_id)
    if hospital is None:
        raise InstanceNotFoundError(f"hospital {hospital_id} is not registered")
    pk = await run_in_threadpool(
        archive.hospitals.request_send_back, hospital, body.study_instance_uid
    )
    return {"id": pk, "state": "pending", "hospital_id": hospital_id}
