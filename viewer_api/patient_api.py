"""The patient's API under ``/api/patient``.

A patient signs in with their ID number and a one-time code (``POST /code``, then
``POST /session``) and gets a 30-minute token of kind ``patient``; with it they list their
studies at every hospital, their authorisations, and answer a hospital's QR request
(`viewer_api.share_api` makes those requests). The services and their attempt limits are
set up here (`install`) and kept on ``app.state``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path as FilePath
from typing import Annotated, Any

from fastapi import APIRouter, BackgroundTasks, Depends, FastAPI, Path, Request, Response
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field

from cloud.access import AccessDeniedError, Principal
from cloud.archive import Archive
from cloud.audit import AuditEntry
from cloud.grants import DEFAULT_HOURS, Grants
from cloud.identity import AuthenticationError
from cloud.patients import CodeDelivery, OutboxCodeDelivery, PatientCodes, patient_studies
from cloud.share_links import ReportRefs, ShareLinks, load_key
from viewer_api.access_deps import PrincipalDep, TokensDep, audit_entry, client_address
from viewer_api.deps import ArchiveDep
from viewer_api.rate_limit import FailureLimiter

logger = logging.getLogger(__name__)

PATIENT_TOKEN_SECONDS = 30 * 60


def _limiter(limit: int) -> FailureLimiter:
    return FailureLimiter(limit, 900)


@dataclass
class PatientServices:
    """The patient-facing services and their attempt limits, kept on ``app.state``."""

    codes: PatientCodes
    grants: Grants
    links: ShareLinks
    report_refs: ReportRefs
    # Wrong codes per patient ID and per address; code requests (messages sent) likewise.
    code_per_patient: FailureLimiter = field(default_factory=lambda: _limiter(5))
    code_per_address: FailureLimiter = field(default_factory=lambda: _limiter(50))
    send_per_patient: FailureLimiter = field(default_factory=lambda: _limiter(5))
    send_per_address: FailureLimiter = field(default_factory=lambda: _limiter(50))
    # Wrong share-link passwords per link and per address.
    link_per_link: FailureLimiter = field(default_factory=lambda: _limiter(5))
    link_per_address: FailureLimiter = field(default_factory=lambda: _limiter(50))


def install(
    app: FastAPI,
    archive: Archive,
    *,
    code_delivery: CodeDelivery | None = None,
    data_dir: FilePath,
) -> None:
    """Put the patient services on ``app.state`` (codes to ``<data-dir>/outbox`` by default)."""
    delivery = code_delivery or OutboxCodeDelivery(data_dir / "outbox")
    app.state.patient_services = PatientServices(
        codes=PatientCodes(archive.sessions, delivery),
        grants=Grants(archive.sessions),
        links=ShareLinks(archive.sessions),
        report_refs=ReportRefs(archive.sessions, load_key(data_dir / "keys" / "report-ref.key")),
    )


async def _services(request: Request) -> PatientServices:
    services: PatientServices = request.app.state.patient_services
    return services


ServicesDep = Annotated[PatientServices, Depends(_services)]


async def no_store(response: Response) -> None:
    """Answers carrying tokens, capability URLs or health data are never cached."""
    response.headers["Cache-Control"] = "no-store"


async def _patient(who: PrincipalDep) -> Principal:
    if who.kind != "patient":
        raise AccessDeniedError("this is the patient's own page; sign in as the patient")
    return who


PatientDep = Annotated[Principal, Depends(_patient)]


async def audit(archive: Archive, entry: AuditEntry) -> None:
    await run_in_threadpool(archive.audit.append, entry)


def patient_entry(patient_id: str, request: Request, action: str, **fields: Any) -> AuditEntry:
    """An audit entry for a patient who has no token yet (signing in)."""
    return AuditEntry(
        actor_kind="patient",
        actor=f"patient:{patient_id}",
        role="patient",
        action=action,
        patient_id=patient_id,
        client_address=client_address(request),
        **fields,
    )


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


RowId = Annotated[int, Path(ge=1, le=2**63 - 1)]  # an index key: beyond it the DB overflows
# Printable text only: PostgreSQL refuses NUL, DICOM LO refuses backslash and controls.
TEXT = r"^[^\\\x00-\x1f\x7f]*$"
PatientId = Annotated[str, Field(min_length=1, max_length=64, pattern=TEXT)]
Hours = Annotated[int, Field(ge=1, le=72)]


class CodeRequest(_Strict):
    patient_id: PatientId


class SessionRequest(_Strict):
    patient_id: PatientId
    code: Annotated[str, Field(min_length=1, max_length=16)]


class DirectGrant(_Strict):
    hospital_id: Annotated[str, Field(min_length=1, max_length=64, pattern=TEXT)]
    valid_hours: Hours = DEFAULT_HOURS


router = APIRouter(prefix="/api/patient", tags=["patient"], dependencies=[Depends(no_store)])

# --- sign-in ---------------------------------------------------------------------------------


@router.post("/code", status_code=202)
async def send_code(
    body: CodeRequest, request: Request, services: ServicesDep, background: BackgroundTasks
) -> dict[str, Any]:
    """Send a sign-in code; the answer is the same whether or not the ID is known."""
    patient_id, address = body.patient_id.strip(), client_address(request)
    services.send_per_patient.check(patient_id)
    services.send_per_address.check(address)
    services.send_per_patient.failed(patient_id)  # every request counts: each may send an SMS
    services.send_per_address.failed(address)
    # After the answer, so its timing does not tell whether the ID has studies here.
    background.add_task(_send_quietly, services.codes, patient_id)
    return {
        "detail": "if this ID has images here, a code is on its way 如有影像记录 验证码已发送",
        "expires_in": 300,
    }


def _send_quietly(codes: PatientCodes, patient_id: str) -> None:
    try:
        codes.send(patient_id)
    except Exception:
        logger.exception("sending a sign-in code failed")


@router.post("/session")
async def open_session(
    body: SessionRequest,
    request: Request,
    archive: ArchiveDep,
    services: ServicesDep,
    tokens: TokensDep,
) -> dict[str, Any]:
    patient_id, address = body.patient_id.strip(), client_address(request)
    services.code_per_patient.check(patient_id)
    services.code_per_address.check(address)
    try:
        await run_in_threadpool(services.codes.verify, patient_id, body.code)
    except AuthenticationError:
        services.code_per_patient.failed(patient_id)
        services.code_per_address.failed(address)
        await audit(archive, patient_entry(patient_id, request, "sign_in", outcome="denied"))
        raise
    services.code_per_patient.succeeded(patient_id)
    await audit(archive, patient_entry(patient_id, request, "sign_in"))
    token = tokens.issue_for(
        f"patient:{patient_id}", "patient", lifetime_seconds=PATIENT_TOKEN_SECONDS, pid=patient_id
    )
    return {"access_token": token, "token_type": "bearer", "expires_in": PATIENT_TOKEN_SECONDS}


# --- the patient's own data ------------------------------------------------------------------


@router.get("/studies")
async def my_studies(
    request: Request, who: PatientDep, archive: ArchiveDep, services: ServicesDep
) -> JSONResponse:
    """All the patient's studies at every hospital, newest first."""
    found = await run_in_threadpool(patient_studies, archive.sessions, who.patient_id)
    entry = audit_entry(
        who,
        request,
        "search",
        patient_id=who.patient_id,
        detail={"path": request.url.path, "studies": len(found)},
    )
    await audit(archive, entry)
    refs = services.report_refs
    return JSONResponse(
        [s.as_dict() | {"ref": refs.ref_of(s.pk, s.study_instance_uid)} for s in found]
    )


@router.get("/hospitals")
async def hospitals(archive: ArchiveDep, _who: PatientDep) -> list[dict[str, str]]:
    """The region's hospitals, for granting one from the patient's page."""
    found = await run_in_threadpool(archive.hospitals.all)
    return [{"hospital_id": h.hospital_id, "name": h.name} for h in found]


@router.get("/grants")
async def my_grants(who: PatientDep, services: ServicesDep) -> list[dict[str, Any]]:
    found = await run_in_threadpool(services.grants.list_for, who.patient_id)
    return [grant.as_dict() for grant in found]


@router.post("/grants", status_code=201)
async def grant_hospital(
    body: DirectGrant, request: Request, who: PatientDep, archive: ArchiveDep, services: ServicesDep
) -> dict[str, Any]:
    grant = await run_in_threadpool(
        services.grants.grant, who.patient_id, body.hospital_id, body.valid_hours
    )
    await audit(archive, _grant_entry(who, request, "grant", grant.as_dict()))
    return grant.as_dict()


@router.post("/grants/{pk}/revoke")
async def revoke_grant(
    pk: RowId, request: Request, who: PatientDep, archive: ArchiveDep, services: ServicesDep
) -> dict[str, Any]:
    grant = await run_in_threadpool(services.grants.revoke, who.patient_id, pk)
    await audit(archive, _grant_entry(who, request, "grant_revoke", grant.as_dict()))
    return grant.as_dict()


def _grant_entry(
    who: Principal, request: Request, action: str, grant: dict[str, Any]
) -> AuditEntry:
    detail = {key: grant.get(key) for key in ("id", "hospital_id", "method", "expires_at")}
    return audit_entry(who, request, action, patient_id=who.patient_id, detail=detail)


@router.get("/grant-requests/{code}")
async def grant_request(code: str, who: PatientDep, services: ServicesDep) -> dict[str, Any]:
    """What a scanned QR code asks: which hospital, for how long."""
    found = await run_in_threadpool(services.grants.describe, code, who.patient_id)
    return found.as_dict()


@router.post("/grant-requests/{code}/approve")
async def approve(
    code: str, request: Request, who: PatientDep, archive: ArchiveDep, services: ServicesDep
) -> dict[str, Any]:
    return await _answer(code, True, request, who, archive, services)


@router.post("/grant-requests/{code}/decline")
async def decline(
    code: str, request: Request, who: PatientDep, archive: ArchiveDep, services: ServicesDep
) -> dict[str, Any]:
    return await _answer(code, False, request, who, archive, services)


async def _answer(
    code: str,
    approve: bool,
    request: Request,
    who: Principal,
    archive: Archive,
    services: PatientServices,
) -> dict[str, Any]:
    found = await run_in_threadpool(services.grants.answer, code, who.patient_id, approve)
    detail = {
        "request": found.pk,
        "hospital_id": found.hospital_id,
        "method": "qr",
        "valid_hours": found.valid_hours,
        "expires_at": found.grant_expires_at,
    }
    action = "grant" if approve else "grant_decline"
    await audit(
        archive, audit_entry(who, request, action, patient_id=who.patient_id, detail=detail)
    )
    return found.as_dict()
