"""Expert review of surgical videos and viewing records (issue 8) (routes).

Review tasks (`cloud.video_review`): ``POST /api/video-reviews/tasks`` (``manage_video_review``)
sets one up; ``GET …/tasks`` and ``…/tasks/{id}`` show them (managers: their scope's tasks
with every reviewer's scores; experts: their own tasks, blind, anonymised);
``PUT …/tasks/{id}/scores`` (``video_review``) scores; ``…/comments`` holds the remarks;
``POST …/tasks/{id}/close`` closes; ``GET /api/video-reviews/statistics`` gives per-applicant
figures as JSON or, with ``format=csv``, UTF-8 CSV with a byte-order mark.

Viewing records (`cloud.video_viewings`): ``POST /api/videos/{sop}/viewings`` when playback
starts, ``…/viewings/{id}/end`` when it stops, ``GET /api/videos/{sop}/viewings`` and
``GET /api/video-reviews/tasks/{id}/viewings`` to read them. Every viewing start, task
creation, score, comment and close is audited.

The page ``/video-review/`` (static files in ``viewer_api/static/review/``, the viewer's CSP)
lists an expert's tasks, plays the videos, records the viewings and sends the scores.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Path, Query, Request, Response
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field

from cloud.access import AccessDeniedError, Principal
from cloud.archive import Archive
from cloud.video_review import (
    MANAGE,
    REVIEW,
    CommentSpec,
    TaskSpec,
    VideoReviews,
    statistics_rows,
)
from cloud.video_viewings import VideoViewings
from viewer_api.access_deps import PrincipalDep, audit_entry, require
from viewer_api.csv_export import csv_response
from viewer_api.deps import ArchiveDep
from viewer_api.problems import HTTPProblem
from viewer_api.video_pages import static_pages
from viewer_api.web import PAGE_HEADERS, STATIC_DIR, load_static

router = APIRouter(tags=["video review"])
pages = APIRouter(tags=["video review pages"], include_in_schema=False)

NO_STORE = {"Cache-Control": "no-store"}
ManagerDep = Annotated[Principal, Depends(require(MANAGE))]
ExpertDep = Annotated[Principal, Depends(require(REVIEW))]
Text = Annotated[str, Query(max_length=128)]
TaskId = Annotated[int, Path(ge=1, le=2**31 - 1)]


def _reviews(archive: Archive) -> VideoReviews:
    return VideoReviews(archive.sessions, archive.access, archive.users)


def _viewings(archive: Archive) -> VideoViewings:
    return VideoViewings(archive.sessions, archive.access)


async def _audit(
    archive: Archive, who: Principal, request: Request, action: str, **more: Any
) -> None:
    await run_in_threadpool(archive.audit.append, audit_entry(who, request, action, **more))


async def _audit_patients(
    archive: Archive, who: Principal, request: Request, task: dict[str, Any]
) -> None:
    """A task shown with its videos' patient IDs (managers with PHI) is a read of patient
    identity: one ``view`` entry per study, with the patient, like any other study read."""
    seen: dict[str, str] = {}
    for video in task.get("videos", []):
        if "patientId" in video:
            seen.setdefault(video["studyInstanceUid"], video["patientId"])
    for study, patient in seen.items():
        detail = {"path": request.url.path, "task": task["id"]}
        await _audit(archive, who, request, "view", study_instance_uid=study,
                     patient_id=patient, detail=detail)  # fmt: skip


# --- request bodies (camelCase, as every answer) -------------------------------------------------


class CriterionBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    key: str = Field(max_length=32)
    label: str = Field(max_length=200)
    max: float


class FormBody(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    criteria: list[CriterionBody] = Field(min_length=1, max_length=50)
    pass_mark: float = Field(alias="passMark")


class TaskBody(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    title: str = Field(min_length=1, max_length=256)
    applicant: str = Field(min_length=1, max_length=128)
    videos: list[Annotated[str, Field(max_length=64)]] = Field(min_length=1, max_length=100)
    reviewers: list[Annotated[str, Field(max_length=128)]] = Field(min_length=1, max_length=50)
    form: FormBody | None = None
    due_at: datetime | None = Field(default=None, alias="dueAt")


class ScoresBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    scores: dict[str, float]
    recommendation: Literal["pass", "fail"]
    comment: str = Field(default="", max_length=4000)


class CommentBody(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    text: str = Field(min_length=1, max_length=4000)
    sop_instance_uid: str | None = Field(default=None, alias="sopInstanceUid", max_length=64)
    at_seconds: float | None = Field(default=None, alias="atSeconds", ge=0)


class ViewingBody(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    task_id: int | None = Field(default=None, alias="taskId", ge=1, le=2**31 - 1)


# --- tasks ---------------------------------------------------------------------------------------


@router.post("/api/video-reviews/tasks", status_code=201)
async def create_task(
    body: TaskBody, request: Request, archive: ArchiveDep, who: ManagerDep
) -> JSONResponse:
    """A review task: the applicant's videos (in your scope), the experts, the form (the
    default of ``config/video_review.toml`` unless given) and the deadline."""
    due = body.due_at
    if due is not None and due.tzinfo is None:
        due = due.replace(tzinfo=UTC)
    spec = TaskSpec(
        title=body.title,
        applicant=body.applicant,
        videos=[uid.strip() for uid in body.videos],
        reviewers=[name.strip() for name in body.reviewers],
        form=body.form.model_dump(by_alias=True) if body.form else None,
        due_at=due,
    )
    reviews = _reviews(archive)
    try:
        task_id = await run_in_threadpool(reviews.create_task, who, spec)
    except AccessDeniedError:
        await _audit(archive, who, request, "video_review_task", outcome="denied",
                     detail={"videos": list(spec.videos)})  # fmt: skip
        raise
    detail = {"task": task_id, "applicant": spec.applicant, "videos": list(spec.videos),
              "reviewers": list(spec.reviewers)}  # fmt: skip
    await _audit(archive, who, request, "video_review_task", detail=detail)
    found = await run_in_threadpool(reviews.task, who, task_id)
    await _audit_patients(archive, who, request, found)
    headers = {"Location": f"/api/video-reviews/tasks/{task_id}", **NO_STORE}
    return JSONResponse(found, status_code=201, headers=headers)


@router.get("/api/video-reviews/tasks")
async def list_tasks(archive: ArchiveDep, who: PrincipalDep) -> JSONResponse:
    """Managers: the tasks in their scope; experts: theirs, with ``mySubmitted``."""
    found = await run_in_threadpool(_reviews(archive).list_tasks, who)
    return JSONResponse({"tasks": found}, headers=NO_STORE)


@router.get("/api/video-reviews/tasks/{task_id}")
async def get_task(
    task_id: TaskId, request: Request, archive: ArchiveDep, who: PrincipalDep
) -> JSONResponse:
    """The task, its form, videos and comments; managers also see every reviewer, experts
    their own assignment only. Patient IDs shown are audited as reads of those studies."""
    found = await run_in_threadpool(_reviews(archive).task, who, task_id)
    await _audit_patients(archive, who, request, found)
    return JSONResponse(found, headers=NO_STORE)


@router.put("/api/video-reviews/tasks/{task_id}/scores")
async def submit_scores(
    task_id: TaskId, body: ScoresBody, request: Request, archive: ArchiveDep, who: ExpertDep
) -> JSONResponse:
    """An assigned expert's scores: every criterion, 0 to its maximum; the total is computed.
    Sending again replaces them while the task is open (409 once it is closed)."""
    found = await run_in_threadpool(
        _reviews(archive).submit_scores,
        who,
        task_id,
        body.scores,
        body.recommendation,
        body.comment,
    )
    detail = {"task": task_id, "total": found["total"], "recommendation": body.recommendation}
    await _audit(archive, who, request, "video_review_score", detail=detail)
    return JSONResponse(found, headers=NO_STORE)


@router.post("/api/video-reviews/tasks/{task_id}/comments", status_code=201)
async def add_comment(
    task_id: TaskId, body: CommentBody, request: Request, archive: ArchiveDep, who: PrincipalDep
) -> JSONResponse:
    """A remark by an assigned expert or a manager, optionally at a time of one video."""
    spec = CommentSpec(body.text, body.sop_instance_uid, body.at_seconds)
    found = await run_in_threadpool(_reviews(archive).add_comment, who, task_id, spec)
    await _audit(archive, who, request, "video_review_comment",
                 detail={"task": task_id, "comment": found["id"]})  # fmt: skip
    return JSONResponse(found, status_code=201, headers=NO_STORE)


@router.get("/api/video-reviews/tasks/{task_id}/comments")
async def list_comments(task_id: TaskId, archive: ArchiveDep, who: PrincipalDep) -> JSONResponse:
    found = await run_in_threadpool(_reviews(archive).comments, who, task_id)
    return JSONResponse(found, headers=NO_STORE)


@router.post("/api/video-reviews/tasks/{task_id}/close")
async def close_task(
    task_id: TaskId, request: Request, archive: ArchiveDep, who: ManagerDep
) -> JSONResponse:
    """Close the task: scores become final and the experts no longer reach its videos."""
    found = await run_in_threadpool(_reviews(archive).close, who, task_id)
    await _audit(archive, who, request, "video_review_close", detail={"task": task_id})
    await _audit_patients(archive, who, request, found)
    return JSONResponse(found, headers=NO_STORE)


@router.get("/api/video-reviews/tasks/{task_id}/viewings")
async def task_viewings(
    task_id: TaskId, request: Request, archive: ArchiveDep, who: ManagerDep
) -> JSONResponse:
    found = await run_in_threadpool(_viewings(archive).for_task, who, task_id)
    await _audit(archive, who, request, "video_viewing_read", detail={"task": task_id})
    return JSONResponse(found, headers=NO_STORE)


@router.get("/api/video-reviews/statistics", response_model=None)
async def statistics(
    request: Request,
    archive: ArchiveDep,
    who: ManagerDep,
    applicant: Text = "",
    hospital_id: Annotated[str, Query(alias="hospitalId", max_length=64)] = "",
    format: Literal["json", "csv"] = "json",
) -> Response:
    """Per applicant: tasks, reviews submitted/pending, mean/min/max total, recommendations,
    each criterion's mean and the seconds watched (hospital admins: their hospital only)."""
    found = await run_in_threadpool(
        _reviews(archive).statistics, who, applicant.strip(), hospital_id.strip()
    )
    detail = {"path": request.url.path, "query": str(request.url.query)[:1000]}
    await _audit(archive, who, request, "statistics", detail=detail)
    if format == "csv":
        return csv_response(statistics_rows(found), "video-review-statistics.csv")
    return JSONResponse({"applicants": found}, headers=NO_STORE)


# --- viewing records -----------------------------------------------------------------------------


@router.post("/api/videos/{sop}/viewings", status_code=201)
async def start_viewing(
    sop: str,
    request: Request,
    archive: ArchiveDep,
    who: PrincipalDep,
    body: ViewingBody | None = None,
) -> JSONResponse:
    """Playback began: a record with a random id to end it by (experts: send ``taskId``)."""
    task_id = body.task_id if body else None
    try:
        started = await run_in_threadpool(_viewings(archive).start, who, sop, task_id)
    except AccessDeniedError:
        await _audit(archive, who, request, "video_viewing", outcome="denied",
                     detail={"sop": sop, "task": task_id})  # fmt: skip
        raise
    detail = {"viewing": started.viewing_id, "sop": sop, "task": task_id}
    await _audit(
        archive,
        who,
        request,
        "video_viewing",
        study_instance_uid=started.study_instance_uid,
        patient_id=started.patient_id,
        detail=detail,
    )
    answer = {"viewingId": started.viewing_id, "startedAt": started.started_at.isoformat()}
    return JSONResponse(answer, status_code=201, headers=NO_STORE)


@router.post("/api/videos/{sop}/viewings/{viewing_id}/end")
async def end_viewing(
    sop: str, viewing_id: str, archive: ArchiveDep, who: PrincipalDep
) -> JSONResponse:
    """Playback stopped: the duration (a second end keeps the first)."""
    seconds = await run_in_threadpool(_viewings(archive).end, who, sop, viewing_id)
    return JSONResponse({"viewingId": viewing_id, "durationSeconds": seconds}, headers=NO_STORE)


@router.get("/api/videos/{sop}/viewings")
async def video_viewings(
    sop: str, request: Request, archive: ArchiveDep, who: PrincipalDep
) -> JSONResponse:
    """Who watched this video, from where and how long (``manage_video_review`` or
    ``view_logs``, in scope)."""
    study, found = await run_in_threadpool(_viewings(archive).for_video, who, sop)
    await _audit(archive, who, request, "video_viewing_read", study_instance_uid=study,
                 detail={"sop": sop})  # fmt: skip
    return JSONResponse(found, headers=NO_STORE)


# --- the page ------------------------------------------------------------------------------------

PAGES = load_static(STATIC_DIR.parent / "review")
static_pages(pages, "/video-review", PAGES)


@pages.get("/video-review/")
def review_page() -> Response:
    """The experts' page: their tasks, the videos, the scoring form and the comments."""
    page = PAGES.get("index.html")
    if page is None:
        raise HTTPProblem(404, "Not found", "the review page is not installed")
    return Response(page.body, media_type=page.media_type, headers=PAGE_HEADERS)
