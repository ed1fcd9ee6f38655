"""A study's classification and retention, legal hold and extension, over HTTP.

Reading needs ``view_details`` on the study; placing or ending a legal hold and extending
retention need ``manage_retention`` (platform admins). Every change is audited by the
retention service with the principal's identity. Destruction itself is a console command
(``imaging-cloud lifecycle destroy``), not an HTTP route.
"""

from __future__ import annotations

from datetime import date
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Path, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field

from cloud.access import Principal
from cloud.retention import Actor, Lifecycle, Retention
from viewer_api.access_deps import PrincipalDep, StudyGrant, client_address, study_access
from viewer_api.deps import ArchiveDep
from viewer_api.problems import restoring

router = APIRouter(prefix="/api/studies", tags=["lifecycle"])


async def retention_service(request: Request, archive: ArchiveDep) -> Retention:
    """The app's retention service (policy from ``config/retention.toml``), made on first use
    unless the composition root put one in ``app.state.retention``."""
    service: Retention | None = getattr(request.app.state, "retention", None)
    if service is None:
        service = await run_in_threadpool(Retention, archive)
        request.app.state.retention = service
    return service


RetentionDep = Annotated[Retention, Depends(retention_service)]


class LegalHold(BaseModel):
    reason: str = Field(min_length=1, max_length=2000)


class Extension(BaseModel):
    until: date | None = None
    years: int | None = Field(default=None, ge=1, le=100)
    approved_by: str = Field(default="", max_length=64)  # default: the principal
    reason: str = Field(default="", max_length=2000)


def _actor(who: Principal, request: Request) -> Actor:
    return Actor(who.kind, who.name, who.role, who.hospital_id, client_address(request))


def _answer(retention: Retention, found: Lifecycle) -> dict[str, Any]:
    return found.as_dict(retention.policy, retention.today())


@router.get("/{study}/lifecycle")
async def lifecycle(
    study: str,
    retention: RetentionDep,
    _grant: Annotated[StudyGrant, Depends(study_access("view_details"))],
) -> dict[str, Any]:
    """Category, level, retention class, retain-until and legal hold of the study, and the
    policy's default per series. ``stored`` is false until the study has been classified."""
    found = await run_in_threadpool(retention.lifecycle, study, with_series=True)
    return _answer(retention, found)


@router.post("/{study}/legal-hold")
async def place_legal_hold(
    study: str,
    body: LegalHold,
    request: Request,
    retention: RetentionDep,
    grant: Annotated[StudyGrant, Depends(study_access("manage_retention"))],
) -> dict[str, Any]:
    actor = _actor(grant.principal, request)
    found = await run_in_threadpool(lambda: retention.hold(study, reason=body.reason, actor=actor))
    return _answer(retention, found)


@router.delete("/{study}/legal-hold")
async def end_legal_hold(
    study: str,
    request: Request,
    retention: RetentionDep,
    grant: Annotated[StudyGrant, Depends(study_access("manage_retention"))],
    reason: str = "",
) -> dict[str, Any]:
    actor = _actor(grant.principal, request)
    found = await run_in_threadpool(lambda: retention.release(study, actor=actor, reason=reason))
    return _answer(retention, found)


@router.post("/{study}/retention-extension")
async def extend_retention(
    study: str,
    body: Extension,
    request: Request,
    retention: RetentionDep,
    grant: Annotated[StudyGrant, Depends(study_access("manage_retention"))],
) -> dict[str, Any]:
    """Retain the study until ``until``, or ``years`` longer; ``approved_by`` names who
    approved (default: the signed-in principal)."""
    actor = _actor(grant.principal, request)
    approver = body.approved_by.strip() or grant.principal.name

    def extend() -> Lifecycle:
        return retention.extend(
            study,
            approved_by=approver,
            actor=actor,
            until=body.until,
            years=body.years,
            reason=body.reason,
        )

    found = await run_in_threadpool(extend)
    return _answer(retention, found)


jobs = APIRouter(prefix="/api/lifecycle", tags=["lifecycle"])


@router.post("/{study}/restore", status_code=202)
async def restore_study(
    study: str,
    archive: ArchiveDep,
    grant: Annotated[StudyGrant, Depends(study_access("live_view"))],
) -> JSONResponse:
    """Bring a study's cold series back to the hot tier (a prefetch before reading it):
    202 with the restore job's status URL, or 200 when nothing of it is cold."""
    cold = await run_in_threadpool(archive.tiering.cold_series, study)
    if not cold:
        return JSONResponse({"status": "hot", "study": study})
    who = grant.principal
    job_pk = await run_in_threadpool(archive.request_restore, study, f"{who.kind}:{who.name}")
    return restoring(job_pk, 5, f"restoring {len(cold)} series of study {study}")


@jobs.get("/jobs/{job}")
async def lifecycle_job(
    job: Annotated[int, Path(ge=1, le=2**31 - 1)],
    archive: ArchiveDep,
    who: PrincipalDep,
) -> dict[str, Any]:
    """State and progress of a restore, tiering or scrub job. A restore job is visible to
    whoever may view its study; the others to those who manage retention."""
    view = await run_in_threadpool(archive.jobs.get, job)
    if view.kind == "restore" and view.target:
        await run_in_threadpool(archive.access.require_study, who, "live_view", view.target)
    else:
        await run_in_threadpool(archive.access.require, who, "manage_retention")
    return view.as_dict()
