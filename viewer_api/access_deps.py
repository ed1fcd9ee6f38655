"""Who is asking, and may they: the dependencies every protected route declares.

`principal` resolves the bearer token (a staff user, a signed-in patient or an opened share
link) on every request, so a suspended account or a revoked link stops working at once.
`require(permission)` guards routes without a study; `study_access(permission)` guards routes
with ``{study}`` in the path: permission, then scope, then the audit entry. An expert
(scope ``review``) reaches only the series and instances of their open tasks' videos, so
study-level routes refuse them. Refusals of a signed-in principal are audited too (outcome
``denied``), since attempts beyond one's role are what the anomaly rules watch.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Annotated, Any

from fastapi import Depends, Request
from fastapi.concurrency import run_in_threadpool

from cloud.access import AccessDeniedError, AccessPolicy, Principal, StudyOwner
from cloud.archive import Archive
from cloud.audit import AuditEntry
from cloud.identity import AuthenticationError, TokenSigner
from cloud.scope import StudyScope
from viewer_api.deps import ArchiveDep
from viewer_api.problems import HTTPProblem

# Reads that make up viewing (coalesced into viewing sessions in the audit log) versus reads
# that take a copy away (one entry each).
VIEW_ACTIONS = frozenset({"live_view", "view_details", "streaming_playback"})


def bearer_token(request: Request) -> str | None:
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    if not header:
        return None
    if scheme.lower() != "bearer" or not token.strip():
        raise HTTPProblem(401, "Unauthorized", "use 'Authorization: Bearer <credential>'")
    return token.strip()


async def token_signer(request: Request) -> TokenSigner:
    signer: TokenSigner = request.app.state.tokens
    return signer


TokensDep = Annotated[TokenSigner, Depends(token_signer)]


def client_address(request: Request) -> str:
    return request.client.host if request.client else ""


async def principal(request: Request, archive: ArchiveDep, tokens: TokensDep) -> Principal:
    """The principal of this request; 401 problem+json without a valid token."""
    cached: Principal | None = getattr(request.state, "principal", None)
    if cached is not None:
        return cached
    token = bearer_token(request)
    if token is None:
        raise AuthenticationError("sign in first: POST /api/auth/token, then send the token")
    claims = tokens.claims(token)
    found = await run_in_threadpool(_resolve, archive, claims)
    request.state.principal = found
    return found


def _resolve(archive: Archive, claims: dict[str, Any]) -> Principal:
    kind = claims.get("kind", "user")
    if kind == "user":
        user = archive.users.by_username(str(claims["sub"]))
        if user is None or user.status != "active":
            raise AuthenticationError("the account is not active")
        return AccessPolicy.for_user(user)
    if kind == "patient":
        return AccessPolicy.for_patient(str(claims["pid"]))
    if kind == "share_link":
        link = archive.access.share_link_principal(int(claims["link"]))
        if link is None:
            raise AuthenticationError("this share link has expired or was revoked")
        return link
    raise AuthenticationError("the access token is not valid")


PrincipalDep = Annotated[Principal, Depends(principal)]


def audit_entry(who: Principal, request: Request, action: str, **fields: Any) -> AuditEntry:
    return _entry(who, client_address(request), action, **fields)


def _entry(who: Principal, address: str, action: str, **fields: Any) -> AuditEntry:
    return AuditEntry(
        actor_kind=who.kind,
        actor=who.name,
        role=who.role,
        hospital_id=who.hospital_id,
        action=action,
        client_address=address,
        **fields,
    )


async def _denied(archive: Archive, who: Principal, request: Request, **fields: Any) -> None:
    entry = audit_entry(who, request, "access", outcome="denied", **fields)
    await run_in_threadpool(archive.audit.append, entry)


def require(permission: str) -> Callable[..., Awaitable[Principal]]:
    """A dependency: the principal, if they hold ``permission`` (403 otherwise)."""

    async def check(request: Request, who: PrincipalDep, archive: ArchiveDep) -> Principal:
        if not who.may(permission):
            await _denied(archive, who, request, detail={"permission": permission})
            AccessPolicy.require(who, permission)
        return who

    return check


@dataclass(frozen=True)
class StudyGrant:
    """A principal admitted to one study, for one permission."""

    principal: Principal
    owner: StudyOwner


def study_access(permission: str) -> Callable[..., Awaitable[StudyGrant]]:
    """A dependency for routes with ``{study}``: who, permission, scope, then the audit entry.

    All of it runs in one worker-thread hop: on an image request of a few milliseconds,
    each hop is a measurable share.
    """

    async def check(
        request: Request, study: str, archive: ArchiveDep, tokens: TokensDep
    ) -> StudyGrant:
        known: Principal | None = getattr(request.state, "principal", None)
        claims = None
        if known is None:
            token = bearer_token(request)
            if token is None:
                raise AuthenticationError(
                    "sign in first: POST /api/auth/token, then send the token"
                )
            claims = tokens.claims(token)
        address, path = client_address(request), request.url.path
        series, instance = _object_of(request)

        def admit() -> StudyGrant:
            who = known or _resolve(archive, claims or {})
            request.state.principal = who
            try:
                owner = archive.access.require_study(who, permission, study)
                archive.access.require_review_reach(who, series, instance)
            except AccessDeniedError:
                archive.audit.append(
                    _entry(who, address, "access", outcome="denied", study_instance_uid=study,
                           detail={"permission": permission, "path": path})
                )  # fmt: skip
                raise
            action = "view" if permission in VIEW_ACTIONS else permission
            entry = _entry(who, address, action, study_instance_uid=study,
                           patient_id=owner.patient_id, detail={"path": path})  # fmt: skip
            if action == "view":
                archive.audit.record_view(entry)
            else:
                archive.audit.append(entry)
            return StudyGrant(who, owner)

        return await run_in_threadpool(admit)

    return check


def _object_of(request: Request) -> tuple[str | None, str | None]:
    """The series and instance a study route names, if any (``{sop}`` in the viewer's frame
    renders): an expert's reach is narrower than the study, see
    `AccessPolicy.require_review_reach`."""
    params = request.path_params
    series = params.get("series")
    instance = params.get("instance", params.get("sop"))
    return (
        str(series) if series is not None else None,
        str(instance) if instance is not None else None,
    )


async def search_scope(request: Request, who: PrincipalDep, archive: ArchiveDep) -> Principal:
    """For searches: the principal needs ``view_details``; the search is audited."""
    if not who.may("view_details"):
        await _denied(archive, who, request, detail={"permission": "view_details"})
        AccessPolicy.require(who, "view_details")
    detail = {"path": request.url.path, "query": str(request.url.query)[:1000]}
    entry = audit_entry(who, request, "search", detail=detail)
    await run_in_threadpool(archive.audit.append, entry)
    return who


SearcherDep = Annotated[Principal, Depends(search_scope)]


def scope_of(archive: Archive, who: Principal) -> StudyScope:
    return archive.access.scope(who)


def cache_control(who: Principal) -> str:
    """Staff browsers may keep images a few minutes; a patient's or a share link's phone keeps
    nothing beyond the page."""
    return "private, max-age=300" if who.kind == "user" else "no-store"


def watermark_text(request: Request) -> str | None:
    """What is burned into images a share link shows: whose link, so a screenshot passed on
    still says where it came from."""
    who: Principal | None = getattr(request.state, "principal", None)
    if who is None or who.kind != "share_link":
        return None
    return f"分享查看 Shared view · link {who.share_link_pk} · {datetime.now(UTC):%Y-%m-%d}"
