"""DICOM video playback: WADO-RS rendered ``video/mp4`` with HTTP Range, and video thumbnails.

The routes ``…/instances/{instance}/rendered`` and ``…/thumbnail`` are registered ahead of
`viewer_api.wado`'s: for the video SOP classes they answer here, for anything else they hand
the request to wado's own route functions, so images behave exactly as before.

The MP4 is the encapsulated Pixel Data (one fragment per stream, PS3.5 8.2.8; several are
concatenated) with the even-length pad byte removed; `viewer_api.video_clips` extracts it once
per API process into a memory LRU (small clips) or an encrypted disk LRU (large ones), so the
many Range requests of one playback read the DICOM object once and hold only what they send.

A ``<video>`` element cannot send ``Authorization``. The viewer therefore asks
``POST /viewer-api/…/instances/{instance}/media-url`` (with its bearer token) for a URL carrying
``media_token``: a signed token, valid five minutes, bound to that one instance and to the
asking principal, who is re-resolved (suspension and link revocation still apply) and
re-checked and audited like any bearer request on every use.
"""

from __future__ import annotations

import io
import re
import threading
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request, Response
from fastapi.concurrency import run_in_threadpool
from PIL import Image
from starlette.responses import StreamingResponse

from cloud.access import AccessPolicy
from cloud.archive import Archive, StoredInstance
from cloud.errors import InvalidDatasetError
from cloud.identity import AuthenticationError, TokenSigner
from cloud.videos import VIDEO_SOP_CLASSES  # endoscopic, microscopic, photographic
from collectors.multipart import parse_accept
from viewer_api import wado
from viewer_api.access_deps import (
    StudyGrant,
    TokensDep,
    _resolve,
    audit_entry,
    bearer_token,
    cache_control,
    study_access,
)
from viewer_api.deps import ApiSettings, ArchiveDep
from viewer_api.problems import HTTPProblem
from viewer_api.video_clips import CHUNK, Clip, ClipReader, VideoClips
from viewer_api.video_clips import mp4_bytes as mp4_bytes  # imported from here by others

router = APIRouter(tags=["WADO-RS video"])  # mounted under /dicom-web, before wado.router
viewer = APIRouter(prefix="/viewer-api", tags=["viewer video"])

MEDIA_TOKEN_SECONDS = 300
THUMBNAIL_AT_SECONDS = 1.0
INSTANCE = wado.INSTANCE
STREAM_ABOVE = 8 * 1024 * 1024  # bodies larger than this are streamed, not built whole
STREAM_CHUNK = CHUNK
_RANGE = re.compile(r"^bytes=\s*(\d*)\s*-\s*(\d*)\s*$")

LiveView = Annotated[StudyGrant, Depends(study_access("live_view"))]
Quality = Annotated[int, Query(ge=1, le=100)]


# --- the MP4 out of the DICOM object, cached (viewer_api.video_clips) --------------------------


_clips_lock = threading.Lock()


def clips_of(request: Request) -> VideoClips:
    """The app's clip cache, made on first use from the API settings (which also clears the
    disk tier's files of an earlier process)."""
    state = request.app.state
    with _clips_lock:
        if not hasattr(state, "video_clips"):
            state.video_clips = open_video_clips(state.api_settings)
        clips: VideoClips = state.video_clips
    return clips


def open_video_clips(settings: ApiSettings) -> VideoClips:
    """The clip cache the settings describe: memory LRU, disk LRU (default
    ``<data_dir>/cache/video-clips``)."""
    return VideoClips(
        settings.video_cache_dir or settings.data_dir / "cache" / "video-clips",
        memory_bytes=settings.video_memory_bytes,
        memory_clip_bytes=settings.video_memory_clip_bytes,
        disk_bytes=settings.video_disk_cache_bytes,
    )


def _clip(archive: Archive, clips: VideoClips, stored: StoredInstance) -> Clip:
    """The stored video's MP4; the object is read (once, whole) only when not cached."""
    return clips.clip(stored.sop_instance_uid, stored.blob_key, lambda: archive.read(stored))


def video_thumbnail(mp4: Clip, size: int = 256, at_seconds: float = THUMBNAIL_AT_SECONDS) -> bytes:
    """A JPEG of the first frame at or after ``at_seconds`` (or the middle of a shorter
    video), fitted into ``size`` x ``size``. PyAV reads the clip by range, not whole."""
    import av  # PyAV, imported only when a video thumbnail is asked for

    reader = io.BufferedReader(ClipReader(mp4), CHUNK)
    with av.open(reader, mode="r") as container:
        stream = container.streams.video[0]
        duration = float(container.duration or 0) / 1_000_000
        target = min(at_seconds, duration / 2) if duration else 0.0
        if target > 0 and stream.time_base:
            container.seek(int(target / stream.time_base), stream=stream, backward=True)
        chosen = None
        for frame in container.decode(stream):
            chosen = frame
            if frame.time is None or frame.time >= target - 1e-3:
                break
        if chosen is None:
            raise InvalidDatasetError("the video has no decodable frame")
        image = Image.fromarray(chosen.to_ndarray(format="rgb24"))
    image.thumbnail((size, size))
    out = io.BytesIO()
    image.save(out, format="JPEG", quality=80)
    return out.getvalue()


# --- HTTP Range (RFC 9110 14) -----------------------------------------------------------------


class RangeNotSatisfiable(Exception):
    pass


def byte_range(header: str | None, length: int) -> tuple[int, int] | None:
    """The inclusive (first, last) byte of a single ``bytes=`` range, or None to send the
    whole representation (no Range, another unit, bad syntax, or several ranges: RFC 9110
    allows a server to ignore Range, and one full 200 is simpler for clients than a
    multipart/byteranges answer). RangeNotSatisfiable when no byte of it exists."""
    if not header:
        return None
    match = _RANGE.match(header.strip())
    if match is None:
        return None
    first_text, last_text = match.groups()
    if not first_text:  # suffix: the last n bytes
        if not last_text:
            return None
        count = int(last_text)
        if count == 0 or length == 0:
            raise RangeNotSatisfiable
        return max(0, length - count), length - 1
    first = int(first_text)
    last = int(last_text) if last_text else max(first, length - 1)
    if last < first:
        return None  # invalid range-spec: ignore the header
    if first >= length:
        raise RangeNotSatisfiable
    return first, min(last, length - 1)


def ranged_response(request: Request, clip: Clip, etag: str, headers: dict[str, str]) -> Response:
    """``clip`` as ``video/mp4``: 200 whole, 206 one range, or 416. Bodies above
    ``STREAM_ABOVE`` bytes are streamed ``STREAM_CHUNK`` at a time (Content-Length still set), so a
    large video never sits whole in memory; the clip is closed once its bytes are out."""
    headers = {**headers, "Accept-Ranges": "bytes", "ETag": etag}
    wanted = request.headers.get("range")
    if_range = request.headers.get("if-range")
    if wanted and if_range is not None and if_range.strip() != etag:
        wanted = None  # the client's copy is of another version: send it all
    length = clip.length
    try:
        span = byte_range(wanted, length)
    except RangeNotSatisfiable:
        clip.close()
        headers["Content-Range"] = f"bytes */{length}"
        return Response(status_code=416, headers=headers)
    status = 200
    first, last = 0, length - 1
    if span is not None:
        status = 206
        first, last = span
        headers["Content-Range"] = f"bytes {first}-{last}/{length}"
    if last - first + 1 > STREAM_ABOVE:
        headers["Content-Length"] = str(last - first + 1)
        body = clip.chunks(first, last, STREAM_CHUNK)  # closes the clip when done
        return StreamingResponse(body, status, headers=headers, media_type="video/mp4")
    try:
        data = clip.read(first, last) if length else b""
    finally:
        clip.close()
    return Response(data, status, media_type="video/mp4", headers=headers)


# --- who may play -----------------------------------------------------------------------------


async def _admit(
    request: Request,
    study: str,
    instance: str,
    archive: Archive,
    tokens: TokenSigner,
    media_token: str,
) -> StudyGrant:
    """study_access("live_view"), with the principal taken from ``media_token`` when given."""
    if media_token and bearer_token(request) is None:
        claims = tokens.claims(media_token)
        if claims.get("kind") != "media" or claims.get("inst") != instance:
            raise AuthenticationError("this media link is for another instance")
        request.state.principal = await run_in_threadpool(_resolve, archive, claims["as"])
    grant: StudyGrant = await study_access("live_view")(request, study, archive, tokens)
    return grant


async def _require_streaming(request: Request, archive: Archive, grant: StudyGrant) -> None:
    who = grant.principal
    if who.may("streaming_playback"):
        return
    detail = {"permission": "streaming_playback", "path": request.url.path}
    study = grant.owner.study_instance_uid
    entry = audit_entry(
        who, request, "access", outcome="denied", study_instance_uid=study, detail=detail
    )
    await run_in_threadpool(archive.audit.append, entry)
    AccessPolicy.require(who, "streaming_playback")


def _wants_mp4(request: Request) -> bool:
    for entry in parse_accept(request.headers.get("accept")):
        if entry.media_type in ("*/*", "video/*", "video/mp4"):
            return True
    return False


@router.get(INSTANCE + "/rendered", response_model=None)
async def rendered_instance(
    study: str,
    series: str,
    instance: str,
    request: Request,
    archive: ArchiveDep,
    tokens: TokensDep,
    media_token: str = "",
    window: str | None = None,
    viewport: str | None = None,
    quality: Quality = 90,
) -> Response:
    """Video instances as ``video/mp4`` (Range-capable); other instances as wado renders them."""
    grant = await _admit(request, study, instance, archive, tokens, media_token)
    stored = (await run_in_threadpool(archive.locate, study, series, instance))[0]
    if stored.sop_class_uid not in VIDEO_SOP_CLASSES:
        return await wado.rendered_instance(
            study, series, instance, request, archive, grant, window, viewport, quality
        )
    await _require_streaming(request, archive, grant)
    if not _wants_mp4(request):
        raise HTTPProblem(406, "Not acceptable", "a video instance is rendered as video/mp4")
    clip = await run_in_threadpool(_clip, archive, clips_of(request), stored)
    etag = f'"{stored.blob_key.rsplit("/", 1)[-1][:32]}"'
    headers = {"Cache-Control": cache_control(grant.principal)}
    return await run_in_threadpool(ranged_response, request, clip, etag, headers)


@router.get(INSTANCE + "/thumbnail", response_model=None)
async def instance_thumbnail(
    study: str,
    series: str,
    instance: str,
    request: Request,
    archive: ArchiveDep,
    tokens: TokensDep,
    media_token: str = "",
    viewport: str | None = None,
) -> Response:
    """A JPEG of the frame about one second into a video; images as wado renders them."""
    grant = await _admit(request, study, instance, archive, tokens, media_token)
    stored = (await run_in_threadpool(archive.locate, study, series, instance))[0]
    if stored.sop_class_uid not in VIDEO_SOP_CLASSES:
        return await wado.instance_thumbnail(
            study, series, instance, request, archive, grant, viewport
        )
    clips = clips_of(request)

    def work() -> bytes:
        key = (stored.sop_instance_uid, stored.blob_key, "thumbnail")
        image = clips.get(key)
        if image is None:
            clip = _clip(archive, clips, stored)
            try:
                image = video_thumbnail(clip)
            finally:
                clip.close()
            clips.put(key, image)
        return image

    image = await run_in_threadpool(work)
    headers = {"Cache-Control": cache_control(grant.principal)}
    return Response(image, media_type="image/jpeg", headers=headers)


@viewer.post("/studies/{study}/series/{series}/instances/{instance}/media-url")
async def media_url(
    study: str,
    series: str,
    instance: str,
    request: Request,
    archive: ArchiveDep,
    tokens: TokensDep,
    grant: LiveView,
) -> dict[str, Any]:
    """A URL a ``<video>`` element can play: this instance only, for five minutes."""
    await _require_streaming(request, archive, grant)
    await run_in_threadpool(archive.locate, study, series, instance)  # 404 if unknown
    token = bearer_token(request)
    assert token is not None  # study_access admitted a bearer
    claims = tokens.claims(token)
    acting = {k: claims[k] for k in ("sub", "kind", "pid", "link") if k in claims}
    media = tokens.issue_for(str(claims["sub"]), "media", MEDIA_TOKEN_SECONDS, inst=instance,
                             **{"as": acting})  # fmt: skip
    path = f"/dicom-web/studies/{study}/series/{series}/instances/{instance}"
    return {
        "url": f"{path}/rendered?media_token={media}",
        "thumbnail": f"{path}/thumbnail?media_token={media}",
        "expires_in": MEDIA_TOKEN_SECONDS,
    }
