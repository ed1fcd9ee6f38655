"""The web viewer's pages: ``GET /viewer/``, the workstation's authorisation page
``GET /viewer/authorise.html`` (also ``/viewer/authorise``), and their static files under
``/viewer/static/``.

The files are plain HTML/CSS/ES modules shipped in ``viewer_api/static/viewer/`` (no build
step, no CDN). Only the files found there when the module is imported can be served: a request
names a file of that fixed set, so no path can reach anything else.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from pathlib import Path

from fastapi import APIRouter, Request, Response
from fastapi.responses import RedirectResponse

from viewer_api.problems import HTTPProblem

STATIC_DIR = Path(__file__).resolve().parent / "static" / "viewer"

_MEDIA_TYPES = {
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".svg": "image/svg+xml",
    ".png": "image/png",
    ".html": "text/html; charset=utf-8",
}
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,100}$")

# The page talks only to this origin; images arrive as blob: URLs made from fetch() answers.
PAGE_HEADERS = {
    "Cache-Control": "no-store",
    "Content-Security-Policy": (
        "default-src 'self'; script-src 'self'; style-src 'self'; "
        "img-src 'self' blob: data:; connect-src 'self'; object-src 'none'; base-uri 'none'"
    ),
    "Referrer-Policy": "no-referrer",
    "X-Content-Type-Options": "nosniff",
}

router = APIRouter(tags=["viewer"], include_in_schema=False)


@dataclass(frozen=True)
class _StaticFile:
    body: bytes
    media_type: str
    etag: str


def load_static(folder: Path) -> dict[str, _StaticFile]:
    files: dict[str, _StaticFile] = {}
    if not folder.is_dir():
        return files
    for path in sorted(folder.iterdir()):
        media_type = _MEDIA_TYPES.get(path.suffix.lower())
        if media_type is None or not path.is_file() or not _NAME.match(path.name):
            continue
        body = path.read_bytes()
        etag = '"' + hashlib.sha256(body).hexdigest()[:32] + '"'
        files[path.name] = _StaticFile(body, media_type, etag)
    return files


_FILES = load_static(STATIC_DIR)


def _not_found(what: str) -> HTTPProblem:
    return HTTPProblem(404, "Not found", f"the viewer has no file {what!r}")


@router.get("/viewer")
def viewer_redirect(request: Request) -> RedirectResponse:
    query = request.url.query
    return RedirectResponse("/viewer/" + (f"?{query}" if query else ""), status_code=308)


def _page(name: str) -> Response:
    page = _FILES.get(name)
    if page is None:
        raise _not_found(name)
    return Response(page.body, media_type=page.media_type, headers=PAGE_HEADERS)


@router.get("/viewer/")
def viewer_page() -> Response:
    return _page("index.html")


@router.get("/viewer/authorise.html")
@router.get("/viewer/authorise")
def authorise_page() -> Response:
    """A hospital workstation asks a patient for access (QR code) and waits for the answer."""
    return _page("authorise.html")


@router.get("/viewer/static/{name}")
def viewer_static(name: str, request: Request) -> Response:
    found = _FILES.get(name) if _NAME.match(name) else None
    if found is None or name.endswith(".html"):  # pages have their own routes and headers
        raise _not_found(name)
    headers = {
        "ETag": found.etag,
        "Cache-Control": "no-cache",  # revalidate: a deployment must reach every browser
        "X-Content-Type-Options": "nosniff",
    }
    if request.headers.get("if-none-match") == found.etag:
        return Response(status_code=304, headers=headers)
    return Response(found.body, media_type=found.media_type, headers=headers)
