"""Reports over HTTP: the hospital sends them, readers see and cite them, auditors trace them.

``POST /api/reports`` takes a report as JSON from a hospital's gateway credential or a user
with ``upload`` (the study must be that hospital's). ``GET /api/studies/{study}/report`` shows
the Chongqing fields with ``view_details`` on the study (anonymised without PHI; patients and
share links see final reports only); ``…/report/history`` every version;
``POST …/report/cite`` copies findings or the impression with a new citation ID, and
``GET /api/citations/{id}`` says who cited what (``view_logs``, or the citer). Every read is
audited. ``GET /report/{study}`` is the printable page (A4), which reads the same API.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Request, Response
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict

from cloud.access import AccessDeniedError, Principal
from cloud.archive import Archive
from cloud.errors import InstanceNotFoundError
from cloud.report_citations import Citer
from cloud.reports import ReportView
from viewer_api.access_deps import PrincipalDep, StudyGrant, audit_entry, study_access
from viewer_api.deps import ArchiveDep
from viewer_api.patient_web import PAGES
from viewer_api.problems import HTTPProblem
from viewer_api.stow import UploaderDep
from viewer_api.web import PAGE_HEADERS

router = APIRouter(tags=["reports"])
pages = APIRouter(tags=["report pages"], include_in_schema=False)

NO_STORE = {"Cache-Control": "no-store"}
Details = Annotated[StudyGrant, Depends(study_access("view_details"))]
Logs = Annotated[StudyGrant, Depends(study_access("view_logs"))]


class ReportDocument(BaseModel):
    """A report as a hospital's HIS/RIS sends it. Dates ``YYYYMMDD`` or ``YYYY-MM-DD``, the
    time ``HHMMSS`` or ``HH:MM:SS``; at least one of findings and impression."""

    model_config = ConfigDict(extra="forbid")

    study_instance_uid: str
    status: Literal["draft", "final"] = "draft"
    patient_id: str | None = None
    accession_number: str | None = None  # exam number 检查号
    exam_type: str | None = None  # modality 检查类型
    body_part: str | None = None
    exam_name: str | None = None
    local_exam_code: str | None = None
    request_date: str | None = None
    exam_date: str | None = None
    report_date: str | None = None
    report_time: str | None = None
    findings: str | None = None  # 影像表现
    impression: str | None = None  # 诊断意见
    reporting_physician: str | None = None
    reviewing_physician: str | None = None


class CiteRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    field: Literal["findings", "impression"]


async def _audit(
    archive: Archive, who: Principal, request: Request, action: str, **more: Any
) -> None:
    await run_in_threadpool(archive.audit.append, audit_entry(who, request, action, **more))


def _sees_drafts(who: Principal) -> bool:
    """Staff see a report as it is written; patients and share links only once it is final."""
    return who.kind == "user"


@router.post("/api/reports", status_code=201)
async def receive_report(
    body: ReportDocument, request: Request, archive: ArchiveDep, sender: UploaderDep
) -> JSONResponse:
    """Store a report version: 201 when new, 200 when the same content is already held."""
    hospital_pk: int | None
    if sender.hospital is not None:
        hospital_pk = sender.hospital.pk
    else:
        assert sender.user is not None
        hospital_pk = sender.user.hospital_pk
        if hospital_pk is None and sender.user.scope_kind != "platform":
            raise AccessDeniedError("your account belongs to no hospital; it cannot send reports")
    document = body.model_dump(exclude_none=True)
    view = await run_in_threadpool(archive.reports.ingest_json, hospital_pk, document)
    if sender.user is not None:
        detail = {"version": view.version, "created": view.created, "status": view.fields.status}
        await _audit(
            archive,
            sender.user,
            request,
            "report_upload",
            study_instance_uid=view.study_instance_uid,
            patient_id=view.fields.patient_id,
            detail=detail,
        )
    location = f"/api/studies/{view.study_instance_uid}/report"
    return JSONResponse(
        view.as_dict() | {"created": view.created},
        status_code=201 if view.created else 200,
        headers={"Location": location, **NO_STORE},
    )


@router.get("/api/studies/{study}/report")
async def study_report(
    study: str, request: Request, archive: ArchiveDep, grant: Details
) -> JSONResponse:
    """The report shown with the images: hospital, patient (name, sex, age), exam number,
    type, body part, exam name, request/exam/report dates, findings, impression, reporting
    and reviewing physician, status and version. 404 while there is none (or, for patients
    and share links, while it is not final)."""
    who = grant.principal
    found = await run_in_threadpool(
        lambda: archive.reports.display(study, phi=who.phi, final_only=not _sees_drafts(who))
    )
    detail = {"version": found["version"], "status": found["status"]}
    await _audit(
        archive,
        who,
        request,
        "report_view",
        study_instance_uid=study,
        patient_id=grant.owner.patient_id,
        detail=detail,
    )
    return JSONResponse(found, headers=NO_STORE)


@router.get("/api/studies/{study}/report/history")
async def report_history(
    study: str, request: Request, archive: ArchiveDep, grant: Details
) -> JSONResponse:
    """Every version of the report, newest first (patients and share links: final ones)."""
    who = grant.principal
    found: list[ReportView] = await run_in_threadpool(
        lambda: archive.reports.history(study, final_only=not _sees_drafts(who))
    )
    if not found:
        raise InstanceNotFoundError(f"study {study} has no report yet 报告暂未出具")
    await _audit(
        archive,
        who,
        request,
        "report_view",
        study_instance_uid=study,
        patient_id=grant.owner.patient_id,
        detail={"history": [v.version for v in found]},
    )
    body = {"studyInstanceUid": study, "versions": [v.as_dict(phi=who.phi) for v in found]}
    return JSONResponse(body, headers=NO_STORE)


@router.post("/api/studies/{study}/report/cite", status_code=201)
async def cite_report(
    study: str, body: CiteRequest, request: Request, archive: ArchiveDep, grant: Details
) -> JSONResponse:
    """Copy findings or the impression: the text, the same text with its citation ID
    appended (``quote``, what to paste), and the ID. The citation is kept and audited."""
    who = grant.principal
    citer = Citer(who.name, who.kind, who.hospital_id)
    found = await run_in_threadpool(
        lambda: archive.reports.cite(study, body.field, citer, final_only=not _sees_drafts(who))
    )
    detail = {"citation": found.citation_id, "field": found.field, "version": found.report_version}
    await _audit(
        archive,
        who,
        request,
        "report_cite",
        study_instance_uid=study,
        patient_id=grant.owner.patient_id,
        detail=detail,
    )
    answer = {
        "text": found.text,
        "quote": found.quote(),
        "citationId": found.citation_id,
        "citedAt": found.cited_at.isoformat(),
        "field": found.field,
        "reportVersion": found.report_version,
    }
    return JSONResponse(answer, status_code=201, headers=NO_STORE)


@router.get("/api/studies/{study}/report/citations")
async def report_citations(
    study: str, request: Request, archive: ArchiveDep, grant: Logs
) -> JSONResponse:
    """Who copied what from this study's report, oldest first (``view_logs``). The texts are
    included for those who may also read the report; others get their SHA-256 only."""
    who = grant.principal
    found = await run_in_threadpool(archive.reports.citations, study)
    with_text = who.may("view_details")
    await _audit(
        archive,
        who,
        request,
        "citation_read",
        study_instance_uid=study,
        patient_id=grant.owner.patient_id,
        detail={"citations": len(found)},
    )
    return JSONResponse([c.as_dict(with_text=with_text) for c in found], headers=NO_STORE)


@router.get("/api/citations/{citation_id}")
async def citation(
    citation_id: str, request: Request, who: PrincipalDep, archive: ArchiveDep
) -> JSONResponse:
    """Trace a citation ID: which study, field and report version, the text's SHA-256, who
    cited it and when. For ``view_logs`` holders whose scope reaches the study, and for
    whoever made the citation; the text itself only for those who may read the report."""
    found = await run_in_threadpool(archive.reports.citation, citation_id)
    uid = found.study_instance_uid
    own = found.actor == who.name and found.actor_kind == who.kind
    if not own and not await run_in_threadpool(_may, archive, who, "view_logs", uid):
        await _audit(
            archive,
            who,
            request,
            "citation_read",
            outcome="denied",
            study_instance_uid=uid,
            detail={"citation": citation_id},
        )
        raise AccessDeniedError(
            "a citation is traced by those who hold 'view_logs' for its study, or by its citer"
        )
    with_text = own or await run_in_threadpool(_may, archive, who, "view_details", uid)
    await _audit(
        archive,
        who,
        request,
        "citation_read",
        study_instance_uid=uid,
        patient_id=found.patient_id,
        detail={"citation": citation_id},
    )
    return JSONResponse(found.as_dict(with_text=with_text), headers=NO_STORE)


def _may(archive: Archive, who: Principal, permission: str, study: str) -> bool:
    """Whether ``who`` holds ``permission`` on ``study``; regional and platform roles keep it
    for a study since deleted (its citations outlive it)."""
    try:
        archive.access.require_study(who, permission, study)
        archive.access.require_review_reach(who, None, None)  # experts: task videos only
    except AccessDeniedError:
        return False
    except InstanceNotFoundError:
        return who.may(permission) and who.scope_kind in ("platform", "region")
    return True


# --- the printable page ------------------------------------------------------------------------


@pages.get("/report/{study}")
def printable_report(study: str) -> Response:  # noqa: ARG001 - the page reads it from its URL
    """The report on an A4 page for printing: a static page that reads the report API with
    the viewer's token (``#token=``, or the one this browser tab holds)."""
    page = PAGES.get("report-print.html")
    if page is None:
        raise HTTPProblem(404, "Not found", "the printable report page is not installed")
    return Response(page.body, media_type=page.media_type, headers=PAGE_HEADERS)
