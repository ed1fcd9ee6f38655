"""Data quality and QC over HTTP: a study's scores, regional summaries, QC plans and reviews.

- ``GET /api/studies/{study}/quality``: ``view_details`` on the study (audited as a view);
  scored on the spot if it never was or changed since.
- ``GET /api/quality/summary``: ``view_statistics``; aggregates only. Hospital-scoped roles
  get their own hospital's figures.
- ``POST /api/qc/plans``, ``POST /api/qc/plans/{id}/sample``,
  ``POST /api/qc/reviews/{id}/assignment``: ``manage_qc`` (a hospital admin: plans limited to
  their own hospital). ``GET /api/qc/plans[/{id}]``: ``manage_qc`` or ``view_statistics``.
- ``GET /api/qc/reviews``: the reviewer's queue; ``POST /api/qc/reviews/{id}``: their grades.
  Both need ``qc_review``, grading also the study in the reviewer's scope; both are audited.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Path, Query, Request
from fastapi.concurrency import run_in_threadpool
from pydantic import BaseModel, ConfigDict, Field

from cloud.access import AccessDeniedError, Principal
from cloud.archive import Archive
from cloud.qc import Criteria, QualityControl
from cloud.quality import QualityScorer
from viewer_api.access_deps import PrincipalDep, StudyGrant, audit_entry, require, study_access
from viewer_api.deps import ArchiveDep

router = APIRouter(tags=["quality"])
RowId = Annotated[int, Path(ge=1, le=2**31 - 1)]
HOSPITAL_SCOPES = ("hospital", "department")


@dataclass(frozen=True)
class QualityServices:
    scorer: QualityScorer
    qc: QualityControl


async def quality_services(request: Request, archive: ArchiveDep) -> QualityServices:
    """The app's scorer and QC service, made on first use. The composition root may put a
    scorer in ``app.state.quality_scorer`` (e.g. with the node's ``audit_timezone``)."""
    found: QualityServices | None = getattr(request.app.state, "quality", None)
    if found is None:
        scorer: QualityScorer | None = getattr(request.app.state, "quality_scorer", None)
        if scorer is None:
            scorer = await run_in_threadpool(QualityScorer, archive)
        qc = QualityControl(archive.sessions, archive.access, archive.users, scorer.policy)
        found = request.app.state.quality = QualityServices(scorer, qc)
    return found


ServicesDep = Annotated[QualityServices, Depends(quality_services)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class NewPlan(_Strict):
    name: Annotated[str, Field(min_length=1, max_length=128)]
    criteria: dict[str, Annotated[str, Field(max_length=64)] | None] = Field(default_factory=dict)
    sample_percent: Annotated[float, Field(gt=0, le=100)]


class Assignment(_Strict):
    reviewer: Annotated[str, Field(min_length=1, max_length=64)]


class Grades(_Strict):
    image_grade: Annotated[str, Field(min_length=1, max_length=8)]
    report_grade: Annotated[str, Field(min_length=1, max_length=8)]
    comment: Annotated[str, Field(max_length=4000)] = ""


def _own_hospital_only(who: Principal, hospital_id: str | None) -> None:
    """Hospital-scoped staff act on their own hospital's plans; regional roles on any."""
    if who.scope_kind in HOSPITAL_SCOPES and (not hospital_id or hospital_id != who.hospital_id):
        raise AccessDeniedError(
            f"your account acts for {who.hospital_id or 'no hospital'} only, "
            f"not for {hospital_id or 'the whole region'}"
        )


async def _audited_denial(
    archive: Archive, who: Principal, request: Request, study: str = "", **detail: Any
) -> None:
    entry = audit_entry(
        who, request, "access", outcome="denied", study_instance_uid=study, detail=detail
    )
    await run_in_threadpool(archive.audit.append, entry)


async def plan_reader(request: Request, who: PrincipalDep, archive: ArchiveDep) -> Principal:
    """Plans and their results are aggregates: ``manage_qc`` or ``view_statistics``."""
    if not (who.may("manage_qc") or who.may("view_statistics")):
        await _audited_denial(archive, who, request, permission="manage_qc|view_statistics")
        raise AccessDeniedError(
            f"your role ({who.role}) includes neither 'manage_qc' nor 'view_statistics'"
        )
    return who


# --- scores ---------------------------------------------------------------------------------


@router.get("/api/studies/{study}/quality")
async def study_quality(
    study: str,
    services: ServicesDep,
    _grant: Annotated[StudyGrant, Depends(study_access("view_details"))],
) -> dict[str, Any]:
    """Completeness, timeliness, consistency, conformance and overall (0-100), and the
    findings that say what lost points."""
    return await run_in_threadpool(services.scorer.quality, study)


@router.get("/api/quality/summary")
async def quality_summary(
    services: ServicesDep,
    who: Annotated[Principal, Depends(require("view_statistics"))],
    by: Literal["hospital", "modality", "month"] = "hospital",
    hospital_id: Annotated[str | None, Query(max_length=64)] = None,
    modality: Annotated[str | None, Query(max_length=16, pattern=r"^[A-Z0-9]+$")] = None,
    date_from: Annotated[str | None, Query(alias="from", max_length=10)] = None,
    date_to: Annotated[str | None, Query(alias="to", max_length=10)] = None,
) -> dict[str, Any]:
    """Counts and average scores by hospital, modality or month of the Study Date."""
    if who.scope_kind in HOSPITAL_SCOPES:
        _own_hospital_only(who, hospital_id or who.hospital_id)
        hospital_id = who.hospital_id
    return await run_in_threadpool(
        lambda: services.scorer.summary(
            by, hospital_id=hospital_id, modality=modality, date_from=date_from, date_to=date_to
        )
    )


# --- QC plans -------------------------------------------------------------------------------


@router.post("/api/qc/plans", status_code=201)
async def create_plan(
    body: NewPlan,
    services: ServicesDep,
    who: Annotated[Principal, Depends(require("manage_qc"))],
) -> dict[str, Any]:
    """A sampling plan: ``criteria`` {hospital_id, modality, from, to} (all optional; a
    hospital admin's plans are limited to their hospital) and ``sample_percent``."""
    given = dict(body.criteria)
    if who.scope_kind in HOSPITAL_SCOPES:
        given["hospital_id"] = given.get("hospital_id") or who.hospital_id
        _own_hospital_only(who, given["hospital_id"])
    criteria = Criteria.parse(given)
    return await run_in_threadpool(
        services.qc.create_plan, body.name, criteria, body.sample_percent, who.name
    )


@router.get("/api/qc/plans")
async def list_plans(
    services: ServicesDep, who: Annotated[Principal, Depends(plan_reader)]
) -> dict[str, Any]:
    own = who.hospital_id if who.scope_kind in HOSPITAL_SCOPES else None
    return {"plans": await run_in_threadpool(services.qc.plans, own)}


@router.get("/api/qc/plans/{plan_id}")
async def get_plan(
    plan_id: RowId, services: ServicesDep, who: Annotated[Principal, Depends(plan_reader)]
) -> dict[str, Any]:
    """The plan and its results: sampled, done, passed and pass rate, per hospital, and the
    distribution of grades."""
    _own_hospital_only(who, await run_in_threadpool(services.qc.plan_hospital, plan_id))
    return await run_in_threadpool(services.qc.plan, plan_id)


@router.get("/api/qc/results")
async def qc_results(
    services: ServicesDep,
    who: Annotated[Principal, Depends(plan_reader)],
    plan: Annotated[int | None, Query(ge=1, le=2**31 - 1)] = None,
    hospital_id: Annotated[str | None, Query(max_length=64)] = None,
) -> dict[str, Any]:
    """Pass rates of all plans' reviews (or one plan's), per hospital and in total; a
    hospital admin sees their own hospital's studies only."""
    if who.scope_kind in HOSPITAL_SCOPES:
        _own_hospital_only(who, hospital_id or who.hospital_id)
        hospital_id = who.hospital_id
    return await run_in_threadpool(services.qc.results, plan, hospital_id)


@router.post("/api/qc/plans/{plan_id}/sample")
async def sample_plan(
    plan_id: RowId,
    services: ServicesDep,
    who: Annotated[Principal, Depends(require("manage_qc"))],
) -> dict[str, Any]:
    """Draw the plan's sample into pending reviews; drawing again adds nothing unless the
    population grew."""
    _own_hospital_only(who, await run_in_threadpool(services.qc.plan_hospital, plan_id))
    drawn = await run_in_threadpool(services.qc.sample, plan_id)
    return drawn.as_dict()


# --- QC reviews -----------------------------------------------------------------------------


@router.get("/api/qc/reviews")
async def review_queue(
    request: Request,
    archive: ArchiveDep,
    services: ServicesDep,
    who: Annotated[Principal, Depends(require("qc_review"))],
    state: Literal["pending", "done"] = "pending",
    plan: Annotated[int | None, Query(ge=1, le=2**31 - 1)] = None,
) -> dict[str, Any]:
    """The reviewer's queue: reviews assigned to them and, while pending, unassigned ones of
    studies they may see; study UID, hospital, modalities and date."""
    reviews = await run_in_threadpool(services.qc.queue, who, state, plan)
    detail = {"path": request.url.path, "state": state, "count": len(reviews)}
    await run_in_threadpool(
        archive.audit.append, audit_entry(who, request, "qc_queue", detail=detail)
    )
    return {"reviews": reviews}


@router.post("/api/qc/reviews/{review_id}/assignment")
async def assign_review(
    review_id: RowId,
    body: Assignment,
    services: ServicesDep,
    who: Annotated[Principal, Depends(require("manage_qc"))],
) -> dict[str, Any]:
    """Give a pending review to a reviewer who holds ``qc_review`` and may see the study."""
    plan_id = (await run_in_threadpool(services.qc.review_view, review_id))["plan_id"]
    _own_hospital_only(who, await run_in_threadpool(services.qc.plan_hospital, plan_id))
    return await run_in_threadpool(services.qc.assign, review_id, body.reviewer)


@router.post("/api/qc/reviews/{review_id}")
async def grade_review(
    review_id: RowId,
    body: Grades,
    request: Request,
    archive: ArchiveDep,
    services: ServicesDep,
    who: Annotated[Principal, Depends(require("qc_review"))],
) -> dict[str, Any]:
    """Grade a sampled study: image and report quality A-D (甲乙丙丁) and a comment."""
    study = (await run_in_threadpool(services.qc.review_view, review_id))["study_instance_uid"]
    try:
        owner = await run_in_threadpool(archive.access.require_study, who, "qc_review", study)
    except AccessDeniedError:
        await _audited_denial(archive, who, request, permission="qc_review", study=study)
        raise
    try:
        graded = await run_in_threadpool(
            services.qc.review, review_id, who.name, body.image_grade, body.report_grade,
            body.comment,
        )  # fmt: skip
    except AccessDeniedError:  # assigned to someone else
        await _audited_denial(archive, who, request, permission="qc_review", study=study)
        raise
    detail = {
        "review": review_id,
        "image_grade": graded["image_grade"],
        "report_grade": graded["report_grade"],
        "passed": graded["passed"],
    }
    entry = audit_entry(
        who,
        request,
        "qc_review",
        study_instance_uid=study,
        patient_id=owner.patient_id,
        detail=detail,
    )
    await run_in_threadpool(archive.audit.append, entry)
    return graded
