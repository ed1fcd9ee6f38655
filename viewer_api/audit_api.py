"""The audit log over HTTP: ``/api/audit/events``, ``/export``, ``/verify``, ``/alerts``.

Everything needs ``view_logs``. Auditors and platform admins see every event; hospital-scoped
holders (hospital admin, department head) see their hospital's: those of its own people and
those about the studies it owns. A role without patient identity (``phi = false``, e.g. the
auditor) sees patient IDs redacted and cannot filter by them. Reading the audit log is itself
audited (``audit_search``, ``audit_export``, ``audit_verify``).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import StreamingResponse

from cloud.access import REDACTED, AccessDeniedError, Principal
from cloud.archive import Archive
from cloud.audit_anomalies import KINDS, list_alerts
from cloud.audit_export import export_lines
from cloud.audit_query import AuditFilter, parse_moment
from cloud.errors import InvalidQueryError
from viewer_api.access_deps import audit_entry, require
from viewer_api.deps import ArchiveDep
from viewer_api.problems import HTTPProblem

router = APIRouter(prefix="/api/audit", tags=["audit"])

AuditorDep = Annotated[Principal, Depends(require("view_logs"))]
MEDIA_TYPES = {"jsonl": "application/x-ndjson", "syslog": "text/plain; charset=utf-8"}


def scope_hospital(who: Principal) -> str | None:
    """None for the whole log (platform, regional roles), else the one hospital's id."""
    if who.scope_kind in ("platform", "region"):
        return None
    if who.scope_kind in ("hospital", "department") and who.hospital_id:
        return who.hospital_id
    raise AccessDeniedError("the audit log is open to auditors and administrators only")


def _moment(name: str, text: str | None) -> datetime | None:
    if not text:
        return None
    try:
        return parse_moment(text)
    except InvalidQueryError as exc:
        raise HTTPProblem(400, "Invalid query", f"{name}: {exc.detail}") from exc


class EventQuery:
    """The filters of ``/events`` and ``/export``, validated once."""

    def __init__(
        self,
        actor: Annotated[str, Query(max_length=128)] = "",
        action: Annotated[str, Query(max_length=32)] = "",
        outcome: Literal["", "allowed", "denied"] = "",
        study: Annotated[str, Query(max_length=64, pattern=r"^[0-9.]*$")] = "",
        patient_id: Annotated[str, Query(max_length=64)] = "",
        hospital_id: Annotated[str, Query(max_length=64)] = "",
        since: Annotated[str | None, Query(description="ISO 8601; UTC without offset")] = None,
        until: Annotated[str | None, Query(description="ISO 8601, exclusive")] = None,
    ) -> None:
        self.filters = AuditFilter(
            actor=actor,
            action=action,
            outcome=outcome,
            study_instance_uid=study,
            patient_id=patient_id,
            hospital_id=hospital_id,
            since=_moment("since", since),
            until=_moment("until", until),
        )

    def for_principal(self, who: Principal) -> AuditFilter:
        wanted = self.filters
        if not who.phi and (wanted.patient_id or wanted.actor.startswith("patient:")):
            raise HTTPProblem(
                403, "Forbidden", "your role does not see patient identity; it cannot search by it"
            )
        return replace(wanted, scope_hospital_id=scope_hospital(who))


EventQueryDep = Annotated[EventQuery, Depends()]


def redact(event: dict[str, Any], who: Principal) -> dict[str, Any]:
    """The event as ``who`` may see it: without patient identity for a role without PHI."""
    if who.phi:
        return event
    shown = dict(event)
    if shown.get("patient_id"):
        shown["patient_id"] = REDACTED
    if shown.get("actor_kind") == "patient":
        shown["actor"] = f"patient:{REDACTED}"
    detail = shown.get("detail")
    if isinstance(detail, dict) and "query" in detail:  # a search's query string may name one
        shown["detail"] = {**detail, "query": REDACTED}
    return shown


async def _audit_reading(
    archive: Archive, who: Principal, request: Request, action: str, detail: dict[str, Any]
) -> None:
    entry = audit_entry(who, request, action, detail=detail)
    await run_in_threadpool(archive.audit.append, entry)


@router.get("/events")
async def events(
    request: Request,
    who: AuditorDep,
    archive: ArchiveDep,
    query: EventQueryDep,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    offset: Annotated[int, Query(ge=0, le=2**31 - 1)] = 0,
) -> dict[str, Any]:
    """Matching audit entries, newest first."""
    filters = replace(query.for_principal(who), limit=limit, offset=offset)
    await _audit_reading(archive, who, request, "audit_search", {"query": request.url.query})
    found = await run_in_threadpool(archive.audit.search, filters)
    return {
        "events": [redact(event, who) for event in found],
        "limit": limit,
        "offset": offset,
    }


@router.get("/export")
async def export(
    request: Request,
    who: AuditorDep,
    archive: ArchiveDep,
    query: EventQueryDep,
    fmt: Annotated[Literal["jsonl", "syslog"], Query(alias="format")] = "jsonl",
) -> StreamingResponse:
    """Every matching entry in seq order, streamed as JSON lines or RFC 5424 syslog lines."""
    filters = query.for_principal(who)
    await _audit_reading(archive, who, request, "audit_export", {"query": request.url.query})

    def lines() -> Iterator[str]:
        found = (redact(event, who) for event in archive.audit.iter_events(filters))
        yield from export_lines(found, fmt)

    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    suffix = "jsonl" if fmt == "jsonl" else "log"
    return StreamingResponse(
        lines(),
        media_type=MEDIA_TYPES[fmt],
        headers={"Content-Disposition": f'attachment; filename="audit-{stamp}.{suffix}"'},
    )


@router.get("/verify")
async def verify(request: Request, who: AuditorDep, archive: ArchiveDep) -> dict[str, Any]:
    """Check the whole hash chain (auditors and platform admins only)."""
    if who.scope_kind not in ("platform", "region"):
        entry = audit_entry(
            who, request, "access", outcome="denied", detail={"permission": "audit_verify"}
        )
        await run_in_threadpool(archive.audit.append, entry)
        raise AccessDeniedError(
            "checking the whole audit chain is for auditors and platform admins"
        )
    await _audit_reading(archive, who, request, "audit_verify", {})
    report = await run_in_threadpool(archive.audit.verify)
    return {
        "ok": report.ok,
        "entries": report.entries,
        "last_seq": report.last_seq,
        "last_hash": report.last_hash,
        "problems": report.problems,
    }


@router.get("/alerts")
async def alerts(
    who: AuditorDep,
    archive: ArchiveDep,
    kind: Annotated[str, Query(max_length=32)] = "",
    actor: Annotated[str, Query(max_length=128)] = "",
    since: str | None = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    offset: Annotated[int, Query(ge=0, le=2**31 - 1)] = 0,
) -> dict[str, Any]:
    """Access alerts (unusual address or hour, bursts, refusals, mass deletion), newest first."""
    if kind and kind not in KINDS:
        raise HTTPProblem(400, "Invalid query", f"kind must be one of {', '.join(KINDS)}")
    since_moment, hospital = _moment("since", since), scope_hospital(who)
    found = await run_in_threadpool(
        lambda: list_alerts(
            archive.sessions,
            kind=kind,
            actor=actor,
            hospital_id=hospital,
            since=since_moment,
            limit=limit,
            offset=offset,
        )
    )
    if not who.phi:
        for alert in found:
            if alert["actor"].startswith("patient:"):
                alert["actor"] = f"patient:{REDACTED}"
    return {"alerts": found, "limit": limit, "offset": offset}
