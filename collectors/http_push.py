"""HTTP push receiver: hospital systems POST objects to the gateway, STOW-RS style.

Two routes, both handing every object to the sink as the exact bytes received:

* ``POST /studies`` — STOW-RS: ``multipart/related; type="application/dicom"``, one object a part;
* ``POST /instances`` — one ``application/dicom`` body, for senders that cannot do multipart.

and one for operating-room recordings (when the gateway gives a work directory):

* ``POST /videos`` — ``multipart/form-data`` with parts ``file`` (the MP4/MOV) and ``sidecar``
  (JSON, `collectors.video_wrap` fields). The upload is streamed to a file, prepared
  (`collectors.video_intake.prepare`: checked, transcoded only when it must be, wrapped) and
  the DICOM object handed to the same sink: 201 with the UIDs and the conformance report,
  or problem+json (400 unusable video or form, 413, 415 not MP4/MOV, 422 bad sidecar).

The answer is STOW-RS's: 200 when every object was stored, 202 when some failed, 409 when
none was stored, with a DICOM JSON body listing referenced (0008,1199) and failed
(0008,1198) SOP instances; a failure's reason (0008,1197) is the sink's status, so a sender
can tell "retry later" (0xA700) from "refused" (0xC000). Refusals of the request itself are
``application/problem+json``.
"""

from __future__ import annotations

import hmac
import io
import json
import logging
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pydicom
from fastapi import FastAPI, Request, Response
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from collectors.intake import CANNOT_UNDERSTAND, UNEXPECTED_FAILURE, IntakeSink, SinkResult
from collectors.multipart import MultipartError, parse_media_type, split_multipart
from collectors.video_intake import UploadSpool, prepare_upload, receive_upload
from collectors.video_probe import VideoError

logger = logging.getLogger(__name__)

__all__ = ["PushProblem", "create_push_app"]

PROBLEM_JSON = "application/problem+json"
DICOM_JSON = "application/dicom+json"
DICOM = "application/dicom"


class PushProblem(Exception):
    """A refusal of the whole request, answered as problem+json."""

    def __init__(
        self, status: int, title: str, detail: str, headers: dict[str, str] | None = None
    ) -> None:
        super().__init__(detail)
        self.status, self.title, self.detail, self.headers = status, title, detail, headers


def _problem(
    status: int, title: str, detail: str, headers: Mapping[str, str] | None = None
) -> JSONResponse:
    body = {"type": "about:blank", "title": title, "status": status, "detail": detail}
    return JSONResponse(body, status_code=status, media_type=PROBLEM_JSON, headers=headers)


@dataclass(frozen=True)
class _Received:
    content_type: str
    data: bytes


def create_push_app(
    sink: IntakeSink,
    *,
    credential: str | None,
    max_body_bytes: int,
    video_workdir: Path | None = None,
) -> FastAPI:
    """The receiver as an ASGI app; serve it with uvicorn on the gateway's push port.

    ``credential``: when set, every request needs ``Authorization: Bearer <credential>``.
    ``max_body_bytes``: larger bodies are refused with 413, counted while reading.
    ``video_workdir``: where ``POST /videos`` spools and wraps recordings (no route without).
    """
    if credential is not None and not credential:
        raise ValueError("credential must be None (no authentication) or a non-empty secret")
    if max_body_bytes <= 0:
        raise ValueError("max_body_bytes must be positive")
    app = FastAPI(title="imaging-cloud gateway push", docs_url=None, redoc_url=None)
    app.openapi_url = None
    _install_problem_handlers(app)
    expected = credential.encode("utf-8") if credential else None

    @app.post("/studies")
    async def store_studies(request: Request) -> Response:
        _authorize(request, expected)
        media = parse_media_type(request.headers.get("content-type", ""))
        if media.media_type != "multipart/related" or media.part_type not in (None, DICOM):
            raise PushProblem(
                415,
                "Unsupported media type",
                'POST /studies takes multipart/related; type="application/dicom"',
            )
        body = await _read_body(request, max_body_bytes)
        parts = split_multipart(body, media.params.get("boundary", ""))
        del body  # the parts hold their own copies
        if not parts:
            raise PushProblem(400, "Malformed multipart body", "the body holds no parts")
        received = [
            _Received(_bare_type(p.content_type) or DICOM, _with_preamble(p.content)) for p in parts
        ]
        return await _hand_over(sink, received, _origin(request))

    @app.post("/instances")
    async def store_instance(request: Request) -> Response:
        _authorize(request, expected)
        media = parse_media_type(request.headers.get("content-type", ""))
        if media.media_type != DICOM:
            raise PushProblem(
                415, "Unsupported media type", "POST /instances takes one application/dicom body"
            )
        body = await _read_body(request, max_body_bytes)
        if not body:
            raise PushProblem(400, "Empty body", "the request carries no DICOM object")
        return await _hand_over(sink, [_Received(DICOM, _with_preamble(body))], _origin(request))

    if video_workdir is not None:
        workdir = video_workdir

        @app.post("/videos")
        async def store_video(request: Request) -> Response:
            _authorize(request, expected)
            declared = request.headers.get("content-length")
            if declared is not None and (not declared.isdigit() or int(declared) > max_body_bytes):
                raise PushProblem(413, "Request too large", f"limited to {max_body_bytes} bytes")
            upload_dir = workdir / f"upload-{uuid.uuid4().hex}"
            try:
                upload = await receive_upload(
                    request.stream(),
                    request.headers.get("content-type", ""),
                    upload_dir,
                    max_body_bytes,
                )
                try:
                    return await run_in_threadpool(
                        _store_video, sink, upload, upload_dir, _origin(request)
                    )
                finally:
                    upload.close()
            except VideoError as exc:
                raise PushProblem(exc.http_status, exc.title, exc.detail) from exc
            finally:
                _remove_dir(upload_dir)

    return app


def _store_video(sink: IntakeSink, upload: UploadSpool, workdir: Path, origin: str) -> Response:
    """Prepare an uploaded recording and hand the DICOM object to the sink (worker thread)."""
    prepared, result = prepare_upload(
        upload, workdir, lambda data: _call_sink(sink, data, f"{origin}/{upload.file_name}")
    )
    if result.status != 0:
        status = 503 if result.status & 0xFF00 == 0xA700 else 422
        raise PushProblem(
            status,
            "Not stored",
            f"the gateway did not keep the video: 0x{result.status:04X} {result.error_comment}",
        )
    header = prepared.header
    body = {
        "studyInstanceUid": str(header.StudyInstanceUID),
        "seriesInstanceUid": str(header.SeriesInstanceUID),
        "sopInstanceUid": str(header.SOPInstanceUID),
        "sopClassUid": str(header.SOPClassUID),
        "transferSyntaxUid": prepared.transfer_syntax_uid,
        "transcoded": prepared.transcoded,
        "conformance": prepared.report,
    }
    return JSONResponse(body, status_code=201)


def _remove_dir(path: Path) -> None:
    if not path.exists():
        return
    for child in path.iterdir():
        child.unlink(missing_ok=True)
    path.rmdir()


def _authorize(request: Request, expected: bytes | None) -> None:
    if expected is None:
        return
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    # compare_digest: the time taken must not tell how much of a guessed token was right.
    if scheme.lower() != "bearer" or not hmac.compare_digest(
        token.strip().encode("utf-8"), expected
    ):
        raise PushProblem(
            401,
            "Unauthorized",
            "a valid 'Authorization: Bearer <credential>' header is required",
            {"WWW-Authenticate": 'Bearer realm="imaging-cloud-gateway"'},
        )


async def _read_body(request: Request, limit: int) -> bytes:
    """The request body, refused with 413 as soon as it is known to exceed ``limit``."""
    too_large = PushProblem(413, "Request too large", f"bodies are limited to {limit} bytes")
    declared = request.headers.get("content-length")
    if declared is not None and (not declared.isdigit() or int(declared) > limit):
        raise too_large
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:  # a chunked body has no Content-Length to check up front
            raise too_large
        chunks.append(chunk)
    return b"".join(chunks)


def _bare_type(content_type: str | None) -> str | None:
    if not content_type:
        return None
    return content_type.split(";")[0].strip().lower()


def _with_preamble(data: bytes) -> bytes:
    """Part-10 bytes for an object sent as File Meta + dataset without the preamble.

    dicomweb-client (and pydicom's ``dcmwrite`` under it) writes a dataset built in memory
    without the 128-byte preamble and ``DICM``; the sink is promised Part-10, so the two are
    put in front. Nothing else is touched: the File Meta and dataset stay the bytes received.
    """
    if data[128:132] != b"DICM" and data[:2] == b"\x02\x00":  # starts with a (0002,xxxx) tag
        return b"\0" * 128 + b"DICM" + data
    return data


def _origin(request: Request) -> str:
    client = request.client.host if request.client else "unknown"
    return f"http-push:{client}{request.url.path}"


async def _hand_over(sink: IntakeSink, received: Sequence[_Received], origin: str) -> Response:
    # The sink fsyncs: keep it off the event loop so one slow disk does not stall every peer.
    stored, failed = await run_in_threadpool(_store_all, sink, received, origin)
    answer: dict[str, Any] = {}
    if failed:
        answer["00081198"] = {"vr": "SQ", "Value": failed}
    if stored:
        answer["00081199"] = {"vr": "SQ", "Value": stored}
    status = 200 if not failed else 202 if stored else 409
    return Response(
        json.dumps(answer, separators=(",", ":")), status_code=status, media_type=DICOM_JSON
    )


def _store_all(
    sink: IntakeSink, received: Sequence[_Received], origin: str
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    stored: list[dict[str, Any]] = []
    failed: list[dict[str, Any]] = []
    for index, item in enumerate(received):
        if item.content_type != DICOM:
            result = SinkResult(CANNOT_UNDERSTAND, f"part of type {item.content_type}")
        else:
            result = _call_sink(sink, item.data, origin)
        reference = _reference(item.data if item.content_type == DICOM else b"")
        if result.status == 0:
            stored.append(reference)
            continue
        logger.info(
            "push part %d from %s failed: 0x%04X %s",
            index,
            origin,
            result.status,
            result.error_comment,
        )
        reference["00081197"] = {"vr": "US", "Value": [result.status]}
        failed.append(reference)
    return stored, failed


def _call_sink(sink: IntakeSink, data: bytes, origin: str) -> SinkResult:
    try:
        return sink(data, origin)
    except Exception:
        logger.exception("sink failed unexpectedly on an object from %s", origin)
        return SinkResult(UNEXPECTED_FAILURE, "unexpected error in the sink")


def _reference(data: bytes) -> dict[str, Any]:
    """ReferencedSOPClassUID / ReferencedSOPInstanceUID of an object, as far as readable."""
    sop_class, sop_instance = _uids_of(data)
    item: dict[str, Any] = {}
    if sop_class:
        item["00081150"] = {"vr": "UI", "Value": [sop_class]}
    if sop_instance:
        item["00081155"] = {"vr": "UI", "Value": [sop_instance]}
    return item


def _uids_of(data: bytes) -> tuple[str, str]:
    if not data:
        return "", ""
    try:
        ds = pydicom.dcmread(
            io.BytesIO(data),
            stop_before_pixels=True,
            specific_tags=["SOPClassUID", "SOPInstanceUID"],
        )
        meta = ds.file_meta
        sop_class = ds.get("SOPClassUID") or meta.get("MediaStorageSOPClassUID") or ""
        sop_instance = ds.get("SOPInstanceUID") or meta.get("MediaStorageSOPInstanceUID") or ""
    except Exception:  # only for the report: the sink decides what the bytes are worth
        return "", ""
    return _plain_uid(sop_class), _plain_uid(sop_instance)


def _plain_uid(value: object) -> str:
    text = str(value).strip("\0 ")
    return text if len(text) <= 64 and all(c.isdigit() or c == "." for c in text) else ""


def _install_problem_handlers(app: FastAPI) -> None:
    """Every refusal as problem+json, including FastAPI's and Starlette's own."""

    @app.exception_handler(PushProblem)
    async def _push_problem(_request: Request, exc: PushProblem) -> JSONResponse:
        return _problem(exc.status, exc.title, exc.detail, exc.headers)

    @app.exception_handler(MultipartError)
    async def _multipart(_request: Request, exc: MultipartError) -> JSONResponse:
        return _problem(400, exc.title, exc.detail)

    @app.exception_handler(RequestValidationError)
    async def _validation(_request: Request, exc: RequestValidationError) -> JSONResponse:
        return _problem(400, "Invalid request", str(exc.errors())[:500])

    @app.exception_handler(StarletteHTTPException)
    async def _starlette(_request: Request, exc: StarletteHTTPException) -> JSONResponse:
        return _problem(exc.status_code, str(exc.detail), str(exc.detail), exc.headers)

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        logger.exception("unhandled error on %s %s", request.method, request.url.path)
        return _problem(500, "Internal error", f"unexpected {type(exc).__name__}; see the log")
