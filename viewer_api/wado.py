"""WADO-RS (PS3.18 10.4): instances, metadata, frames, bulk data, rendered and thumbnails."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from typing import Annotated

from fastapi import APIRouter, Depends, Query, Request, Response
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import StreamingResponse
from pydicom.dataset import Dataset

import mpr
from cloud.access import Principal
from cloud.archive import Archive, StoredInstance
from cloud.errors import InstanceNotFoundError, InvalidDatasetError
from cloud.metadata import BULK_BASE
from cloud.metadata import bulk_value as read_bulk_value
from collectors.multipart import new_boundary, parse_accept, stream_parts
from viewer_api import anonymise
from viewer_api.access_deps import StudyGrant, cache_control, study_access, watermark_text
from viewer_api.deps import ArchiveDep, dicomweb_base
from viewer_api.problems import HTTPProblem
from viewer_api.transcode import (
    FRAME_MEDIA_TYPES,
    TranscodeError,
    choose_dicom_syntax,
    to_explicit_little_endian,
)

router = APIRouter(tags=["WADO-RS"])

Download = Annotated[StudyGrant, Depends(study_access("download"))]
Details = Annotated[StudyGrant, Depends(study_access("view_details"))]
LiveView = Annotated[StudyGrant, Depends(study_access("live_view"))]

INSTANCE = "/studies/{study}/series/{series}/instances/{instance}"
_FRAME_LIST = re.compile(r"^[1-9][0-9]{0,6}(,[1-9][0-9]{0,6})*$")


def _multipart(parts: Iterator[tuple[str, bytes]], part_type: str) -> StreamingResponse:
    boundary = new_boundary()
    media_type = f'multipart/related; type="{part_type}"; boundary={boundary}'
    return StreamingResponse(stream_parts(parts, boundary), media_type=media_type)


def _instances_response(
    request: Request, archive: Archive, found: list[StoredInstance]
) -> Response:
    accepted = parse_accept(request.headers.get("accept"))
    plans = [(s, choose_dicom_syntax(accepted, s.transfer_syntax_uid)) for s in found]

    def parts() -> Iterator[tuple[str, bytes]]:
        for stored, syntax in plans:
            data = archive.read(stored)
            if syntax != stored.transfer_syntax_uid:
                data = to_explicit_little_endian(data)
            yield f"application/dicom; transfer-syntax={syntax}", data

    return _multipart(parts(), "application/dicom")


@router.get("/studies/{study}")
async def retrieve_study(
    study: str, request: Request, archive: ArchiveDep, _grant: Download
) -> Response:
    found = await run_in_threadpool(archive.locate, study)
    return _instances_response(request, archive, found)


@router.get("/studies/{study}/series/{series}")
async def retrieve_series(
    study: str, series: str, request: Request, archive: ArchiveDep, _grant: Download
) -> Response:
    found = await run_in_threadpool(archive.locate, study, series)
    return _instances_response(request, archive, found)


@router.get(INSTANCE)
async def retrieve_instance(
    study: str, series: str, instance: str, request: Request, archive: ArchiveDep, _grant: Download
) -> Response:
    found = await run_in_threadpool(archive.locate, study, series, instance)
    return _instances_response(request, archive, found)


def _metadata_response(
    request: Request, archive: Archive, found: list[StoredInstance], phi: bool
) -> Response:
    base = dicomweb_base(request)

    def body() -> Iterator[bytes]:
        yield b"["
        for index, stored in enumerate(found):
            url = (
                f"{base}/studies/{stored.study_instance_uid}/series/"
                f"{stored.series_instance_uid}/instances/{stored.sop_instance_uid}/bulkdata/"
            )
            text = archive.metadata_json(stored).replace(BULK_BASE, url)
            if not phi:
                text = json.dumps(anonymise.strip_json(json.loads(text)), ensure_ascii=False)
            yield (b"," if index else b"") + text.encode("utf-8")
        yield b"]"

    return StreamingResponse(body(), media_type="application/dicom+json")


@router.get("/studies/{study}/metadata")
async def study_metadata(
    study: str, request: Request, archive: ArchiveDep, grant: Details
) -> Response:
    return _metadata_response(
        request, archive, await run_in_threadpool(archive.locate, study), grant.principal.phi
    )


@router.get("/studies/{study}/series/{series}/metadata")
async def series_metadata(
    study: str, series: str, request: Request, archive: ArchiveDep, grant: Details
) -> Response:
    found = await run_in_threadpool(archive.locate, study, series)
    return _metadata_response(request, archive, found, grant.principal.phi)


@router.get(INSTANCE + "/metadata")
async def instance_metadata(
    study: str, series: str, instance: str, request: Request, archive: ArchiveDep, grant: Details
) -> Response:
    found = await run_in_threadpool(archive.locate, study, series, instance)
    return _metadata_response(request, archive, found, grant.principal.phi)


@router.get(INSTANCE + "/bulkdata/{tag}")
async def bulk_data(
    study: str, series: str, instance: str, tag: str, archive: ArchiveDep, _grant: Download
) -> Response:
    if not re.fullmatch(r"[0-9A-Fa-f]{8}", tag):
        raise HTTPProblem(400, "Invalid bulk data reference", f"{tag!r} is not an 8-digit tag")
    stored = (await run_in_threadpool(archive.locate, study, series, instance))[0]
    data = await run_in_threadpool(archive.read, stored)
    try:
        value = read_bulk_value(data, int(tag, 16))
    except KeyError:
        raise InstanceNotFoundError(f"instance has no bulk data element {tag}") from None
    return _multipart(iter([("application/octet-stream", value)]), "application/octet-stream")


def _load(
    archive: Archive, study: str, series: str, instance: str
) -> tuple[StoredInstance, Dataset]:
    stored = archive.locate(study, series, instance)[0]
    return stored, archive.read_dataset(stored)


def _frame_numbers(text: str, available: int) -> list[int]:
    if not _FRAME_LIST.match(text):
        raise HTTPProblem(400, "Invalid frame list", f"{text!r} is not a list of frame numbers")
    numbers = [int(n) for n in text.split(",")]
    missing = [n for n in numbers if n > available]
    if missing:
        raise InstanceNotFoundError(f"frames {missing} do not exist; the instance has {available}")
    return numbers


def _frame_plan(request: Request, stored_syntax: str) -> tuple[str, bool]:
    """Media type of each frame part, and whether to send the compressed bitstream as is."""
    for entry in parse_accept(request.headers.get("accept")):
        part = entry.part_type if entry.media_type == "multipart/related" else entry.media_type
        if part in (None, "*/*", "application/octet-stream"):
            return "application/octet-stream", False
        syntaxes = FRAME_MEDIA_TYPES.get(part or "", set())
        wanted = entry.transfer_syntax
        if stored_syntax in syntaxes and wanted in (None, "*", stored_syntax):
            return f"{part}; transfer-syntax={stored_syntax}", True
    raise TranscodeError(
        f"frames are available as application/octet-stream or, stored as {stored_syntax}, "
        "in their original compressed media type"
    )


@router.get(INSTANCE + "/frames/{frames}")
async def retrieve_frames(
    study: str,
    series: str,
    instance: str,
    frames: str,
    request: Request,
    archive: ArchiveDep,
    _grant: LiveView,
) -> Response:
    stored, ds = await run_in_threadpool(_load, archive, study, series, instance)
    numbers = _frame_numbers(frames, _frames_in(ds))
    media_type, passthrough = _frame_plan(request, stored.transfer_syntax_uid)
    extract = mpr.encapsulated_frame if passthrough else mpr.native_frame_bytes

    def work() -> list[tuple[str, bytes]]:
        return [(media_type, extract(ds, n - 1)) for n in numbers]

    parts = await run_in_threadpool(work)
    return _multipart(iter(parts), media_type.split(";")[0])


def _frames_in(ds: Dataset) -> int:
    try:
        return mpr.number_of_frames(ds)
    except mpr.PixelDecodeError as exc:
        raise InstanceNotFoundError(f"instance has no frames: {exc}") from exc


def _render_type(request: Request) -> str:
    for entry in parse_accept(request.headers.get("accept")):
        if entry.media_type in ("*/*", "image/*"):
            return "image/jpeg"
        if entry.media_type in mpr.SUPPORTED_MEDIA_TYPES:
            return entry.media_type
    raise HTTPProblem(406, "Not acceptable", "rendered images are image/jpeg or image/png")


def _viewport(text: str | None) -> tuple[int, int] | None:
    if text is None:
        return None
    match = re.fullmatch(r"\s*(\d{1,5})\s*,\s*(\d{1,5})\s*", text)
    if not match or not all(1 <= int(v) <= 8192 for v in match.groups()):
        raise HTTPProblem(400, "Invalid viewport", "viewport must be columns,rows in 1..8192")
    return int(match[1]), int(match[2])


def _window(text: str | None) -> mpr.Window | None:
    if text is None:
        return None
    try:
        return mpr.Window.parse(text)
    except ValueError as exc:
        raise HTTPProblem(400, "Invalid window", str(exc)) from exc


Quality = Annotated[int, Query(ge=1, le=100)]


async def _render(
    archive: Archive,
    request: Request,
    path: tuple[str, str, str],
    frame: int,
    *,
    window: str | None,
    viewport: str | None,
    quality: int,
    thumbnail: bool,
    who: Principal,
) -> Response:
    media_type = _render_type(request)
    parsed_window, parsed_viewport = _window(window), _viewport(viewport)
    mark = watermark_text(request)

    def work() -> bytes:
        # Load and render in one worker-thread hop: each hop costs a measurable share of a
        # ~3 ms request.
        _, ds = _load(archive, *path)
        _frame_numbers(str(frame), _frames_in(ds))
        try:
            if thumbnail and parsed_viewport is None:
                return mpr.thumbnail(ds, frame - 1, media_type=media_type, watermark=mark)
            return mpr.render_frame(
                ds,
                frame - 1,
                window=parsed_window,
                viewport=parsed_viewport,
                media_type=media_type,
                quality=quality,
                watermark=mark,
            )
        except mpr.PixelDecodeError as exc:
            raise InvalidDatasetError(f"cannot render: {exc}") from exc

    image = await run_in_threadpool(work)
    return Response(image, media_type=media_type, headers={"Cache-Control": cache_control(who)})


# Not a route of its own: `viewer_api.video_api` serves this path (video as video/mp4) and
# hands every other instance to this function.
async def rendered_instance(
    study: str,
    series: str,
    instance: str,
    request: Request,
    archive: ArchiveDep,
    grant: LiveView,
    window: str | None = None,
    viewport: str | None = None,
    quality: Quality = 90,
) -> Response:
    path = (study, series, instance)
    return await _render(
        archive, request, path, 1, window=window, viewport=viewport, quality=quality,
        thumbnail=False, who=grant.principal,
    )  # fmt: skip


@router.get(INSTANCE + "/frames/{frame}/rendered")
async def rendered_frame(
    study: str,
    series: str,
    instance: str,
    frame: int,
    request: Request,
    archive: ArchiveDep,
    grant: LiveView,
    window: str | None = None,
    viewport: str | None = None,
    quality: Quality = 90,
) -> Response:
    path = (study, series, instance)
    return await _render(
        archive, request, path, frame, window=window, viewport=viewport, quality=quality,
        thumbnail=False, who=grant.principal,
    )  # fmt: skip


# Served through `viewer_api.video_api` like `rendered_instance`.
async def instance_thumbnail(
    study: str,
    series: str,
    instance: str,
    request: Request,
    archive: ArchiveDep,
    grant: LiveView,
    viewport: str | None = None,
) -> Response:
    path = (study, series, instance)
    return await _render(
        archive,
        request,
        path,
        1,
        window=None,
        viewport=viewport,
        quality=80,
        thumbnail=True,
        who=grant.principal,
    )


@router.get(INSTANCE + "/frames/{frame}/thumbnail")
async def frame_thumbnail(
    study: str,
    series: str,
    instance: str,
    frame: int,
    request: Request,
    archive: ArchiveDep,
    grant: LiveView,
    viewport: str | None = None,
) -> Response:
    path = (study, series, instance)
    return await _render(
        archive,
        request,
        path,
        frame,
        window=None,
        viewport=viewport,
        quality=80,
        thumbnail=True,
        who=grant.principal,
    )
