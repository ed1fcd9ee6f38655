"""Access for others: share links, a hospital's grant request, the report QR code.

Share links (``/api/share-links``, ``/api/share/{token}``): a patient shares their own
studies, a staff member with the ``share`` permission the studies in their scope; every study
is checked like a read. Opening a link gives a token of kind ``share_link`` that reaches
exactly the linked studies, for at most 30 minutes and never beyond the link's own end; a
revoked link stops its opened tokens at once.

A hospital's workstation asks a patient for access with ``POST /api/grant-requests`` (shown as
a QR code the patient scans) and polls the answer; the report's QR code leads to ``/r/<ref>``.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Request, Response
from fastapi.concurrency import run_in_threadpool
from pydantic import BaseModel, ConfigDict, Field

from cloud.access import AccessDeniedError, Principal
from cloud.archive import Archive
from cloud.audit import AuditEntry
from cloud.errors import InstanceNotFoundError
from cloud.grants import DEFAULT_HOURS
from cloud.identity import AuthenticationError
from cloud.share_links import LinkView, PasswordRequiredError, check_request, token_hash
from viewer_api.access_deps import (
    PrincipalDep,
    StudyGrant,
    TokensDep,
    audit_entry,
    client_address,
    require,
    study_access,
)
from viewer_api.deps import ArchiveDep
from viewer_api.patient_api import (
    TEXT,
    Hours,
    PatientId,
    PatientServices,
    RowId,
    ServicesDep,
    audit,
    no_store,
)
from viewer_api.patient_web import qr_response

MAX_TOKEN_SECONDS = 30 * 60

router = APIRouter(tags=["share"], dependencies=[Depends(no_store)])


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class NewLink(_Strict):
    study_uids: Annotated[
        list[Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[0-9.]+$")]],
        Field(min_length=1, max_length=50),
    ]
    expires_in: int
    password: Annotated[str, Field(max_length=128)] | None = None


class OpenLink(_Strict):
    password: Annotated[str, Field(max_length=128)] | None = None


def _creator(who: Principal) -> tuple[str, str]:
    """Who owns the links this principal makes; an opened share link makes none."""
    if who.kind not in ("patient", "user"):
        raise AccessDeniedError("an opened share link cannot make or list share links")
    return who.kind, who.name


def link_urls(request: Request, token: str) -> dict[str, str]:
    url = str(request.base_url).rstrip("/") + f"/s/{token}"
    return {"url": url, "qr_png": url + "/qr.png", "qr_svg": url + "/qr.svg"}


@router.post("/api/share-links", status_code=201)
async def create_link(
    body: NewLink, request: Request, who: PrincipalDep, archive: ArchiveDep, services: ServicesDep
) -> dict[str, Any]:
    kind, creator = _creator(who)
    check_request(body.study_uids, body.expires_in, body.password)
    owners = []
    for uid in dict.fromkeys(body.study_uids):
        try:
            owners.append(await run_in_threadpool(archive.access.require_study, who, "share", uid))
        except AccessDeniedError:
            entry = audit_entry(
                who,
                request,
                "share",
                outcome="denied",
                study_instance_uid=uid,
                detail={"permission": "share"},
            )
            await audit(archive, entry)
            raise
    token, link = await run_in_threadpool(
        services.links.create, kind, creator, body.study_uids, body.expires_in, body.password
    )
    for owner in owners:
        detail = {"link": link.pk, "expires_in": body.expires_in, "password": link.has_password}
        entry = audit_entry(
            who,
            request,
            "share",
            study_instance_uid=owner.study_instance_uid,
            patient_id=owner.patient_id,
            detail=detail,
        )
        await audit(archive, entry)
    return {"id": link.pk, **link_urls(request, token), "expires_at": link.expires_at.isoformat()}


@router.get("/api/share-links")
async def my_links(who: PrincipalDep, services: ServicesDep) -> list[dict[str, Any]]:
    found = await run_in_threadpool(services.links.list_for, *_creator(who))
    return [link.as_dict() for link in found]


@router.delete("/api/share-links/{pk}")
async def revoke_link(
    pk: RowId, request: Request, who: PrincipalDep, archive: ArchiveDep, services: ServicesDep
) -> dict[str, Any]:
    link = await run_in_threadpool(services.links.revoke, pk, *_creator(who))
    entry = audit_entry(
        who, request, "share_revoke", patient_id=link.patient_id, detail={"link": link.pk}
    )
    await audit(archive, entry)
    return link.as_dict()


# --- opening a link (no sign-in: the token in the URL is the capability) -------------------


@router.get("/api/share/{token}")
async def link_status(token: str, services: ServicesDep) -> dict[str, Any]:
    """Whether the link needs a password, and until when it works (404 / 410 otherwise)."""
    link = await run_in_threadpool(services.links.status, token)
    return {
        "password": link.has_password,
        "expires_at": link.expires_at.isoformat(),
        "studies": len(link.study_uids),
    }


@router.post("/api/share/{token}/open")
async def open_link(
    token: str,
    body: OpenLink,
    request: Request,
    archive: ArchiveDep,
    services: ServicesDep,
    tokens: TokensDep,
) -> dict[str, Any]:
    per_link, address = token_hash(token), client_address(request)
    services.link_per_link.check(per_link)
    services.link_per_address.check(address)
    try:
        link = await run_in_threadpool(services.links.open, token, body.password)
    except PasswordRequiredError:
        raise  # the page asks for the password; nothing was guessed
    except AuthenticationError:
        services.link_per_link.failed(per_link)
        services.link_per_address.failed(address)
        await _audit_failure(archive, services, token, request)
        raise
    except InstanceNotFoundError:
        services.link_per_address.failed(address)  # someone trying tokens
        raise
    services.link_per_link.succeeded(per_link)
    remaining = (link.expires_at - datetime.now(UTC)).total_seconds()
    lifetime = max(1, min(MAX_TOKEN_SECONDS, int(remaining)))
    await audit(archive, _link_entry(link, request, "share_open"))
    access = tokens.issue_for(f"share-link:{link.pk}", "share_link", lifetime, link=link.pk)
    return {
        "access_token": access,
        "token_type": "bearer",
        "expires_in": lifetime,
        "study_uids": link.study_uids,
    }


async def _audit_failure(
    archive: Archive, services: PatientServices, token: str, request: Request
) -> None:
    link = await run_in_threadpool(services.links.status, token)
    detail = {"link": link.pk, "reason": "wrong password"}
    await audit(archive, _link_entry(link, request, "share_open", outcome="denied", detail=detail))


def _link_entry(link: LinkView, request: Request, action: str, **fields: Any) -> AuditEntry:
    fields.setdefault("detail", {"link": link.pk, "opened": link.opened_count})
    return AuditEntry(
        actor_kind="share_link",
        actor=f"share-link:{link.pk}",
        role="share_link",
        action=action,
        patient_id=link.patient_id,
        client_address=client_address(request),
        **fields,
    )


# --- a hospital's workstation asks the patient ----------------------------------------------


class WorkstationRequest(_Strict):
    patient_id: PatientId
    visit: Annotated[str, Field(max_length=64, pattern=TEXT)] = ""
    valid_hours: Hours = DEFAULT_HOURS


workstation = APIRouter(
    prefix="/api/grant-requests", tags=["grants"], dependencies=[Depends(no_store)]
)
LiveViewer = Annotated[Principal, Depends(require("live_view"))]


def _hospital_of(who: Principal) -> int:
    if who.kind != "user" or who.hospital_pk is None:
        raise AccessDeniedError("only a hospital's staff can ask a patient for access")
    return who.hospital_pk


@workstation.post("", status_code=201)
async def ask_patient(
    body: WorkstationRequest,
    request: Request,
    who: LiveViewer,
    archive: ArchiveDep,
    services: ServicesDep,
) -> dict[str, Any]:
    """A request for the patient to approve; show ``qr_png`` on the screen."""
    code, found = await run_in_threadpool(
        services.grants.create_request,
        body.patient_id.strip(),
        _hospital_of(who),
        who.name,
        body.visit,
        body.valid_hours,
    )
    entry = audit_entry(
        who,
        request,
        "grant_request",
        patient_id=body.patient_id.strip(),
        detail={"request": found.pk, "valid_hours": body.valid_hours},
    )
    await audit(archive, entry)
    base = str(request.base_url).rstrip("/") + f"/patient/authorise/{code}"
    return found.as_dict() | {
        "code_url": base,
        "qr_png": base + "/qr.png",
        "qr_svg": base + "/qr.svg",
    }


@workstation.get("/{pk}")
async def request_state(pk: RowId, who: LiveViewer, services: ServicesDep) -> dict[str, Any]:
    """The request's state (pending, approved, declined, expired), for the workstation."""
    found = await run_in_threadpool(services.grants.request_state, pk, _hospital_of(who))
    return found.as_dict()


# --- the QR code printed on a report ---------------------------------------------------------

Details = Annotated[StudyGrant, Depends(study_access("view_details"))]


@router.get("/api/studies/{study}/report-qr.{kind}")
async def report_qr(
    study: str, kind: Literal["png", "svg"], request: Request, services: ServicesDep, _: Details
) -> Response:
    """A QR code for the report: ``/r/<ref>`` lets a doctor or the patient open the study."""
    ref = await run_in_threadpool(services.report_refs.ref, study)
    return qr_response(str(request.base_url).rstrip("/") + f"/r/{ref}", kind)
