"""Surgical videos over HTTP: the catalogue and its search, annotations and their exports.

``GET /api/videos`` lists the catalogued recordings matching the filters (procedure, diagnosis,
surgeon, applicant, hospital, operation dates and minutes, free text, camera role, class);
``GET /api/surgical-search`` answers the same filters with videos and studies, and
``…/charts`` with counts for charts. Each search needs ``streaming_playback``, reaches only the
principal's scope and is audited as one ``search`` entry; patient identity is shown only to
principals with PHI.

``GET /api/videos/{sop}`` is one video (``streaming_playback``) with its title page and
annotations. The annotations (phases and key steps with times, tissue, instrument, action,
compliance, note and an optional voice note) and the title page are professional evaluation:
they are read with ``view_video_annotations`` (which patients and share links lack: they get
the video's summary with ``annotations: []``, no ``titlePage`` and ``annotationsVisible:
false``; the annotation routes answer them 403) and written with ``annotate_video``; every
write is audited. They export as JSON (an attachment) or as a DICOM Comprehensive SR stored
in the video's study (`cloud.video_sr`). Without ``view_video_annotations`` a search neither
counts annotations nor matches ``q`` against their text.

Each annotation has a ``version``, also sent as its ``ETag``; ``PUT`` and ``DELETE`` with
``If-Match: "<version>"`` change it only if nobody else did meanwhile (else 412); without
``If-Match`` the last writer wins, as before.

An expert (scope ``review``) reaches only the videos of their open review tasks, not the
other recordings of those studies, in these routes and in the searches. The logic is in
`cloud.video_annotations`, `cloud.video_search` and `cloud.video_sr`; these routes check,
call and audit.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Path, Query, Request, Response
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict

from cloud.access import AccessDeniedError, AccessPolicy, Principal, StudyOwner
from cloud.archive import Archive
from cloud.video_annotations import (
    MAX_VOICE_NOTE_BYTES,
    AnnotationFields,
    VideoAnnotations,
    VideoFacts,
    VoiceNoteTooLargeError,
    voice_note_type,
)
from cloud.video_search import (
    MAX_OFFSET,
    SearchContext,
    VideoFilters,
    charts,
    search_studies,
    search_videos,
    video_by_sop,
)
from cloud.video_sr import AnnotationSr, VideoReference, build, part10, study_attributes
from viewer_api.access_deps import VIEW_ACTIONS, PrincipalDep, audit_entry
from viewer_api.deps import ArchiveDep

router = APIRouter(tags=["surgical videos"])
pages = APIRouter(include_in_schema=False)  # the web pages are video_pages' (another module)

NO_STORE = {"Cache-Control": "no-store"}
PLAY = "streaming_playback"
AnnotationId = Annotated[int, Path(ge=1, le=2**31 - 1)]
ANNOTATE = "annotate_video"
READ_NOTES = "view_video_annotations"
READS = VIEW_ACTIONS | {READ_NOTES}  # reads audited as viewing


# --- request bodies ----------------------------------------------------------------------------


class AnnotationBody(BaseModel):
    """One phase or key step; times in seconds from the start of the recording."""

    model_config = ConfigDict(extra="forbid")

    kind: str
    start: float
    end: float
    label: str
    tissue: str = ""
    instrument: str = ""
    action: str = ""
    compliance: str = ""
    note: str = ""

    def fields(self) -> AnnotationFields:
        return AnnotationFields(**self.model_dump())


class TitlePageBody(BaseModel):
    """Corrections to the title page; fields left out stay as they are."""

    model_config = ConfigDict(extra="forbid")

    procedure: str | None = None
    applicant: str | None = None
    diagnosis: str | None = None
    notes: str | None = None


# --- searches ----------------------------------------------------------------------------------


def video_filters(
    procedure: str = "",
    diagnosis: str = "",
    surgeon: str = "",
    applicant: str = "",
    hospital_id: Annotated[str, Query(alias="hospitalId")] = "",
    date_from: Annotated[str, Query(alias="dateFrom")] = "",
    date_to: Annotated[str, Query(alias="dateTo")] = "",
    min_minutes: Annotated[float | None, Query(alias="minMinutes", ge=0)] = None,
    max_minutes: Annotated[float | None, Query(alias="maxMinutes", ge=0)] = None,
    q: str = "",
    camera_role: Annotated[str, Query(alias="cameraRole")] = "",
    video_class: Annotated[str, Query(alias="videoClass")] = "",
    limit: Annotated[int, Query(ge=1, le=500)] = 100,
    offset: Annotated[int, Query(ge=0, le=MAX_OFFSET)] = 0,
) -> VideoFilters:
    """The search filters of the query string, checked (400 problem when malformed)."""
    return VideoFilters(
        procedure=procedure,
        diagnosis=diagnosis,
        surgeon=surgeon,
        applicant=applicant,
        hospital_id=hospital_id,
        date_from=date_from,
        date_to=date_to,
        min_minutes=min_minutes,
        max_minutes=max_minutes,
        q=q,
        camera_role=camera_role,
        video_class=video_class,
        limit=limit,
        offset=offset,
    ).checked()


Filters = Annotated[VideoFilters, Depends(video_filters)]


@dataclass(frozen=True)
class VideoSearch:
    """Who searches for what: the filters are checked before the search is audited, so a
    refused query leaves only its refusal."""

    principal: Principal
    filters: VideoFilters


async def video_searcher(
    request: Request, who: PrincipalDep, archive: ArchiveDep, filters: Filters
) -> VideoSearch:
    """Searches of recordings need ``streaming_playback``; each is one audited ``search``."""
    if not who.may(PLAY):
        await _audit(archive, who, request, "access", outcome="denied", detail={"permission": PLAY})
        AccessPolicy.require(who, PLAY)
    detail = {"path": request.url.path, "query": str(request.url.query)[:1000]}
    await _audit(archive, who, request, "search", detail=detail)
    return VideoSearch(who, filters)


Search = Annotated[VideoSearch, Depends(video_searcher)]


def _context(archive: Archive, who: Principal) -> SearchContext:
    return SearchContext(
        archive.access.scope(who),
        who.phi,
        archive.engine.dialect.name,
        annotations=who.may(READ_NOTES),
        video_instances=_review_videos(archive, who),
    )


def _review_videos(archive: Archive, who: Principal) -> frozenset[str] | None:
    """An expert's only videos: those of their open review tasks (None: no such limit)."""
    if who.scope_kind != "review":
        return None
    _, instances = archive.access.review_instances(who.name)
    return instances


@router.get("/api/videos")
async def list_videos(archive: ArchiveDep, search: Search) -> JSONResponse:
    """Catalogued videos in your scope matching the filters, latest operations first."""

    def work() -> dict[str, Any]:
        context, filters = _context(archive, search.principal), search.filters
        with archive.sessions() as session:
            total, videos = search_videos(session, context, filters)
        return {"total": total, "videos": videos}

    return JSONResponse(await run_in_threadpool(work), headers=NO_STORE)


@router.get("/api/surgical-search")
async def surgical_search(archive: ArchiveDep, search: Search) -> JSONResponse:
    """Videos and studies matching the filters: each list with its total and one page."""

    def work() -> dict[str, Any]:
        context, filters = _context(archive, search.principal), search.filters
        with archive.sessions() as session:
            video_total, videos = search_videos(session, context, filters)
            study_total, studies = search_studies(session, context, filters)
        return {
            "videos": {"total": video_total, "items": videos},
            "studies": {"total": study_total, "items": studies},
        }

    return JSONResponse(await run_in_threadpool(work), headers=NO_STORE)


@router.get("/api/surgical-search/charts")
async def surgical_charts(archive: ArchiveDep, search: Search) -> JSONResponse:
    """Counts and mean minutes by procedure, month and surgeon, and the 30-minute duration
    histogram, over all matching videos (paging ignored; no patient data)."""

    def work() -> dict[str, Any]:
        context, filters = _context(archive, search.principal), search.filters
        with archive.sessions() as session:
            return charts(session, context, filters)

    return JSONResponse(await run_in_threadpool(work), headers=NO_STORE)


# --- one video ---------------------------------------------------------------------------------


async def _audit(
    archive: Archive, who: Principal, request: Request, action: str, **more: Any
) -> None:
    await run_in_threadpool(archive.audit.append, audit_entry(who, request, action, **more))


def _store(archive: Archive) -> VideoAnnotations:
    return VideoAnnotations(archive.sessions, archive.blobs)


async def _admit(
    request: Request, archive: Archive, who: Principal, sop: str, permission: str
) -> tuple[VideoFacts, StudyOwner]:
    """The video, if ``who`` holds ``permission`` on its study (404 unknown, 403 out of scope).
    A refusal is audited; a read is audited as viewing, like `study_access` does; writes are
    audited by their route, with what they changed."""

    def admit() -> tuple[VideoFacts, StudyOwner]:
        video = _store(archive).video(sop)
        study = video.study_instance_uid
        try:
            owner = archive.access.require_study(who, permission, study)
            # an expert: this video must be one of their open tasks', not just in the study
            archive.access.require_review_reach(
                who, video.series_instance_uid, video.sop_instance_uid
            )
        except AccessDeniedError:
            detail = {"permission": permission, "path": request.url.path}
            entry = audit_entry(
                who, request, "access", outcome="denied", detail=detail, study_instance_uid=study
            )
            archive.audit.append(entry)
            raise
        if permission in READS:
            entry = audit_entry(
                who,
                request,
                "view",
                study_instance_uid=study,
                patient_id=owner.patient_id,
                detail={"path": request.url.path},
            )
            archive.audit.record_view(entry)
        return video, owner

    return await run_in_threadpool(admit)


async def _audit_write(
    archive: Archive,
    who: Principal,
    request: Request,
    action: str,
    video: VideoFacts,
    owner: StudyOwner,
    **detail: Any,
) -> None:
    await _audit(
        archive,
        who,
        request,
        action,
        study_instance_uid=video.study_instance_uid,
        patient_id=owner.patient_id,
        detail={"video": video.sop_instance_uid, **detail},
    )


def _detail(archive: Archive, who: Principal, video: VideoFacts) -> dict[str, Any]:
    """The answer of ``GET /api/videos/{sop}`` (the caller has admitted ``who`` to play it);
    the title page and annotations only for those who may read them."""
    readable = who.may(READ_NOTES)
    with archive.sessions() as session:
        summary = video_by_sop(session, video.sop_instance_uid, phi=who.phi, annotations=readable)
    found: dict[str, Any] = {"video": summary or {}, "annotationsVisible": readable}
    if readable:
        found["titlePage"] = video.title_page()
    found["annotations"] = _store(archive).list(video) if readable else []
    return found


@router.get("/api/videos/{sop}")
async def video_detail(
    sop: str, request: Request, archive: ArchiveDep, who: PrincipalDep
) -> JSONResponse:
    """One video: its summary, title page and annotations (the last two with
    ``view_video_annotations``; without it ``annotations`` is empty and ``titlePage``
    absent)."""
    video, _ = await _admit(request, archive, who, sop, PLAY)
    body = await run_in_threadpool(_detail, archive, who, video)
    return JSONResponse(body, headers=NO_STORE)


@router.patch("/api/videos/{sop}/title-page")
async def edit_title_page(
    sop: str, body: TitlePageBody, request: Request, archive: ArchiveDep, who: PrincipalDep
) -> JSONResponse:
    """Correct procedure, applicant, diagnosis or notes (``annotate_video``); the detail."""
    video, owner = await _admit(request, archive, who, sop, ANNOTATE)
    changes = body.model_dump(exclude_none=True)
    video = await run_in_threadpool(_store(archive).update_title_page, sop, changes)
    await _audit_write(
        archive, who, request, "video_title_page", video, owner, fields=sorted(changes)
    )
    return JSONResponse(await run_in_threadpool(_detail, archive, who, video), headers=NO_STORE)


# --- annotations -------------------------------------------------------------------------------


@router.get("/api/videos/{sop}/annotations")
async def list_annotations(
    sop: str, request: Request, archive: ArchiveDep, who: PrincipalDep
) -> JSONResponse:
    video, _ = await _admit(request, archive, who, sop, READ_NOTES)
    found = await run_in_threadpool(_store(archive).list, video)
    return JSONResponse({"annotations": found}, headers=NO_STORE)


@router.post("/api/videos/{sop}/annotations", status_code=201)
async def create_annotation(
    sop: str, body: AnnotationBody, request: Request, archive: ArchiveDep, who: PrincipalDep
) -> JSONResponse:
    """A new phase or step (``annotate_video``): 201 with the annotation."""
    video, owner = await _admit(request, archive, who, sop, ANNOTATE)
    made = await run_in_threadpool(_store(archive).create, video, body.fields(), who.name)
    await _audit_write(
        archive, who, request, "video_annotation_create", video, owner, annotation=made["id"]
    )
    location = f"/api/videos/{sop}/annotations/{made['id']}"
    headers = {"Location": location, **_etag(made), **NO_STORE}
    return JSONResponse(made, status_code=201, headers=headers)


@router.get("/api/videos/{sop}/annotations.json")
async def export_annotations(
    sop: str, request: Request, archive: ArchiveDep, who: PrincipalDep
) -> Response:
    """The title page, video and annotations as a JSON file to download."""
    video, owner = await _admit(request, archive, who, sop, READ_NOTES)

    def work() -> dict[str, Any]:
        found = _detail(archive, who, video)
        summary = found["video"]
        document: dict[str, Any] = {
            "titlePage": found["titlePage"],
            "video": {
                "studyInstanceUid": video.study_instance_uid,
                "seriesInstanceUid": video.series_instance_uid,
                "sopInstanceUid": video.sop_instance_uid,
                "sopClassUid": video.sop_class_uid,
                "durationSeconds": video.duration_s,
                **{k: summary.get(k) for k in ("cameraRole", "width", "height", "frameRate")},
            },
            "annotations": found["annotations"],
            "exportedAt": datetime.now(UTC).isoformat(),
            "exportedBy": who.name,
        }
        if who.phi:
            document["patient"] = {
                "patientId": summary.get("patientId", ""),
                "patientName": summary.get("patientName", ""),
            }
        return document

    document = await run_in_threadpool(work)
    await _audit_write(
        archive,
        who,
        request,
        "video_annotation_export",
        video,
        owner,
        format="json",
        annotations=len(document["annotations"]),
    )
    disposition = f'attachment; filename="video-annotations-{sop}.json"'
    return Response(
        json.dumps(document, ensure_ascii=False, indent=2),
        media_type="application/json",
        headers={"Content-Disposition": disposition, **NO_STORE},
    )


@router.post("/api/videos/{sop}/annotations/sr", status_code=201)
async def export_sr(
    sop: str, request: Request, archive: ArchiveDep, who: PrincipalDep
) -> JSONResponse:
    """The annotations as a DICOM Comprehensive SR, stored in the video's study (new series,
    Modality SR): 201 with its UIDs."""
    video, owner = await _admit(request, archive, who, sop, ANNOTATE)

    def work() -> tuple[str, str, int]:
        annotations = _store(archive).list(video)
        with archive.sessions() as session:
            attributes = study_attributes(session, video.study_instance_uid)
        document = AnnotationSr(
            video=VideoReference(
                video.study_instance_uid,
                video.series_instance_uid,
                video.sop_instance_uid,
                video.sop_class_uid,
            ),
            study_attributes=attributes,
            title_page=video.title_page(),
            annotations=annotations,
            author=who.name,
            created=datetime.now(),
            institution_name=video.hospital,
        )
        ds = build(document)
        archive.store(
            part10(ds),
            source="video-annotation",
            expected_study_instance_uid=video.study_instance_uid,
            hospital_pk=owner.hospital_pk,
        )
        return str(ds.SeriesInstanceUID), str(ds.SOPInstanceUID), len(annotations)

    series, instance, count = await run_in_threadpool(work)
    await _audit_write(
        archive, who, request, "video_annotation_sr", video, owner, sr=instance, annotations=count
    )
    body = {
        "studyInstanceUid": video.study_instance_uid,
        "seriesInstanceUid": series,
        "sopInstanceUid": instance,
    }
    return JSONResponse(body, status_code=201, headers=NO_STORE)


@router.put("/api/videos/{sop}/annotations/{annotation_id}")
async def update_annotation(
    sop: str,
    annotation_id: AnnotationId,
    body: AnnotationBody,
    request: Request,
    archive: ArchiveDep,
    who: PrincipalDep,
) -> JSONResponse:
    """Replace the annotation; with ``If-Match: "<version>"`` only if it is still that version
    (412 otherwise), without it unconditionally. Answers the annotation and its new ETag."""
    video, owner = await _admit(request, archive, who, sop, ANNOTATE)
    expected = if_match(request)
    changed = await run_in_threadpool(
        _store(archive).update, video, annotation_id, body.fields(), expected
    )
    await _audit_write(
        archive, who, request, "video_annotation_update", video, owner, annotation=annotation_id
    )
    return JSONResponse(changed, headers={**_etag(changed), **NO_STORE})


@router.delete("/api/videos/{sop}/annotations/{annotation_id}", status_code=204)
async def delete_annotation(
    sop: str, annotation_id: AnnotationId, request: Request, archive: ArchiveDep, who: PrincipalDep
) -> Response:
    """Remove the annotation; ``If-Match`` as for ``PUT``."""
    video, owner = await _admit(request, archive, who, sop, ANNOTATE)
    expected = if_match(request)
    await run_in_threadpool(_store(archive).delete, video, annotation_id, expected)
    await _audit_write(
        archive, who, request, "video_annotation_delete", video, owner, annotation=annotation_id
    )
    return Response(status_code=204)


def _etag(annotation: dict[str, Any]) -> dict[str, str]:
    return {"ETag": f'"{annotation["version"]}"'}


def if_match(request: Request) -> str | None:
    """The version an ``If-Match`` header asks for: None without one (or ``*``, any current
    version); of a list only the first tag counts (a client sends the one it read); a weak
    or malformed tag matches no version (strong comparison, RFC 9110)."""
    header = request.headers.get("if-match", "").strip()
    if not header or header == "*":
        return None
    tag = header.split(",")[0].strip()
    if len(tag) >= 2 and tag[0] == tag[-1] == '"':
        return tag[1:-1]
    return "(not a strong entity tag)"


async def _body_at_most(request: Request, limit: int) -> bytes:
    """The request body, refused (413) as soon as it passes ``limit`` bytes."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise VoiceNoteTooLargeError(f"a voice note may be at most {limit} bytes")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise VoiceNoteTooLargeError(f"a voice note may be at most {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


@router.put("/api/videos/{sop}/annotations/{annotation_id}/voice-note")
async def put_voice_note(
    sop: str, annotation_id: AnnotationId, request: Request, archive: ArchiveDep, who: PrincipalDep
) -> JSONResponse:
    """A recorded note as the raw body (audio/webm, ogg, mp4, mpeg or wav; at most 10 MiB);
    replaces any earlier one. Answers the annotation."""
    video, owner = await _admit(request, archive, who, sop, ANNOTATE)
    content_type = request.headers.get("content-type", "")
    voice_note_type(content_type)  # 415 before reading the body
    data = await _body_at_most(request, MAX_VOICE_NOTE_BYTES)
    changed = await run_in_threadpool(
        _store(archive).put_voice_note, video, annotation_id, data, content_type
    )
    await _audit_write(
        archive,
        who,
        request,
        "video_voice_note",
        video,
        owner,
        annotation=annotation_id,
        bytes=len(data),
    )
    return JSONResponse(changed, headers=NO_STORE)


@router.get("/api/videos/{sop}/annotations/{annotation_id}/voice-note")
async def get_voice_note(
    sop: str, annotation_id: AnnotationId, request: Request, archive: ArchiveDep, who: PrincipalDep
) -> Response:
    video, _ = await _admit(request, archive, who, sop, READ_NOTES)
    data, media_type = await run_in_threadpool(_store(archive).voice_note, video, annotation_id)
    return Response(data, media_type=media_type, headers={"Cache-Control": "private, no-store"})
