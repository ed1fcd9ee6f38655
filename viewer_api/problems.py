"""Every refusal as RFC 9457 problem+json, whether raised by us, FastAPI or Starlette."""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from cloud.errors import ArchiveError, RestoreInProgressError
from collectors.multipart import MultipartError

logger = logging.getLogger(__name__)

PROBLEM_JSON = "application/problem+json"


class HTTPProblem(Exception):
    """A refusal decided in the HTTP layer (bad header, unacceptable media type, ...)."""

    def __init__(
        self, status: int, title: str, detail: str, *, headers: dict[str, str] | None = None
    ) -> None:
        super().__init__(detail)
        self.status, self.title, self.detail = status, title, detail
        self.headers = headers or {}


def problem(status: int, title: str, detail: str, **extra: Any) -> JSONResponse:
    body = {"type": "about:blank", "title": title, "status": status, "detail": detail, **extra}
    return JSONResponse(body, status_code=status, media_type=PROBLEM_JSON)


def job_url(job_pk: int) -> str:
    return f"/api/lifecycle/jobs/{job_pk}"


def restoring(job_pk: int, retry_after_seconds: int, detail: str) -> JSONResponse:
    """202 Accepted: the data is coming back from cold storage; ask again at ``Location``."""
    body = {
        "status": "restoring",
        "job": job_pk,
        "statusUrl": job_url(job_pk),
        "retryAfter": retry_after_seconds,
        "detail": detail,
    }
    headers = {"Location": job_url(job_pk), "Retry-After": str(retry_after_seconds)}
    return JSONResponse(body, status_code=202, headers=headers)


def install_problem_handlers(app: FastAPI) -> None:
    """Register handlers so no error leaves the API as HTML or a bare string."""

    @app.exception_handler(ArchiveError)
    async def _archive(_request: Request, exc: ArchiveError) -> JSONResponse:
        return problem(exc.http_status, exc.title, exc.detail)

    @app.exception_handler(RestoreInProgressError)
    async def _restoring(_request: Request, exc: RestoreInProgressError) -> JSONResponse:
        return restoring(exc.job_pk, exc.retry_after_seconds, exc.detail)

    @app.exception_handler(HTTPProblem)
    async def _http_problem(_request: Request, exc: HTTPProblem) -> JSONResponse:
        response = problem(exc.status, exc.title, exc.detail)
        response.headers.update(exc.headers)
        return response

    @app.exception_handler(MultipartError)
    async def _multipart(_request: Request, exc: MultipartError) -> JSONResponse:
        return problem(400, exc.title, exc.detail)

    @app.exception_handler(RequestValidationError)
    async def _validation(_request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = [
            f"{'.'.join(str(p) for p in e.get('loc', ()))}: {e.get('msg', '')}"
            for e in exc.errors()
        ]
        return problem(400, "Invalid request", "; ".join(errors))

    @app.exception_handler(StarletteHTTPException)
    async def _starlette(_request: Request, exc: StarletteHTTPException) -> JSONResponse:
        return problem(exc.status_code, str(exc.detail), str(exc.detail))

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        logger.exception("unhandled error on %s %s", request.method, request.url.path)
        return problem(500, "Internal error", f"unexpected {type(exc).__name__}; see server log")
