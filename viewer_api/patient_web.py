"""The patient's pages on the phone, and the QR codes that lead to them.

``/patient/`` (sign in, exams, images, sharing, authorisations; also ``/patient/authorise/
<code>``, the target of a hospital's QR request), ``/s/<token>`` (a share link) and
``/r/<ref>`` (the QR code on a report). Plain HTML, CSS and ES modules from
``viewer_api/static/patient/`` under the viewer's CSP; the pages keep their tokens in memory
only, and every answer is ``no-store``.
"""

from __future__ import annotations

import html
import io
from typing import Literal

import segno
from fastapi import APIRouter, Request, Response
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import RedirectResponse

from cloud.errors import ArchiveError
from viewer_api.patient_api import ServicesDep
from viewer_api.problems import HTTPProblem
from viewer_api.web import PAGE_HEADERS, STATIC_DIR, load_static

PAGES = load_static(STATIC_DIR.parent / "patient")
QR_SCALE = 8  # pixels per module: readable from a screen at arm's length
QR_BORDER = 4  # the quiet zone the QR standard asks for

router = APIRouter(tags=["patient pages"], include_in_schema=False)


def qr_response(url: str, kind: Literal["png", "svg"]) -> Response:
    """``url`` as a QR code (error correction M), PNG or SVG, never cached."""
    code = segno.make(url, error="m", micro=False)
    buffer = io.BytesIO()
    if kind == "png":
        code.save(buffer, kind="png", scale=QR_SCALE, border=QR_BORDER)
        media_type = "image/png"
    else:
        code.save(
            buffer,
            kind="svg",
            scale=QR_SCALE,
            border=QR_BORDER,
            xmldecl=False,
            title="QR",
            svgclass="qr",
        )
        media_type = "image/svg+xml"
    headers = {"Cache-Control": "no-store", "Referrer-Policy": "no-referrer"}
    return Response(buffer.getvalue(), media_type=media_type, headers=headers)


def _page(name: str) -> Response:
    page = PAGES.get(name)
    if page is None:
        raise HTTPProblem(404, "Not found", f"the patient pages have no {name!r}")
    return Response(page.body, media_type=page.media_type, headers=PAGE_HEADERS)


@router.get("/patient")
def patient_redirect(request: Request) -> RedirectResponse:
    query = request.url.query
    return RedirectResponse("/patient/" + (f"?{query}" if query else ""), status_code=308)


@router.get("/patient/")
def patient_page() -> Response:
    return _page("patient.html")


@router.get("/patient/authorise/{code}")
def authorise_page(code: str) -> Response:  # noqa: ARG001 - the page reads it from its URL
    return _page("patient.html")


@router.get("/patient/authorise/{code}/qr.{kind}")
async def authorise_qr(
    code: str, kind: Literal["png", "svg"], request: Request, services: ServicesDep
) -> Response:
    """The QR code a workstation shows; only while the request waits for the patient."""
    if not await run_in_threadpool(services.grants.is_pending, code):
        raise HTTPProblem(410, "Gone", "this authorisation request is used up or expired")
    return qr_response(str(request.base_url).rstrip("/") + f"/patient/authorise/{code}", kind)


@router.get("/patient/static/{name}")
def patient_static(name: str, request: Request) -> Response:
    found = PAGES.get(name)
    if found is None or name.endswith(".html"):
        raise HTTPProblem(404, "Not found", f"the patient pages have no file {name!r}")
    headers = {"ETag": found.etag, "Cache-Control": "no-cache", "X-Content-Type-Options": "nosniff"}
    if request.headers.get("if-none-match") == found.etag:
        return Response(status_code=304, headers=headers)
    return Response(found.body, media_type=found.media_type, headers=headers)


@router.get("/s/{token}")
def share_page(token: str) -> Response:  # noqa: ARG001 - the page reads it from its URL
    return _page("share.html")


@router.get("/s/{token}/qr.{kind}")
async def share_qr(
    token: str, kind: Literal["png", "svg"], request: Request, services: ServicesDep
) -> Response:
    """The link as a QR code, while the link works (404 unknown, 410 expired or revoked)."""
    await run_in_threadpool(services.links.status, token)
    return qr_response(str(request.base_url).rstrip("/") + f"/s/{token}", kind)


# --- the QR code on a report -----------------------------------------------------------------

_LANDING = """<!doctype html>
<html lang="zh-CN"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta name="referrer" content="no-referrer">
<title>影像报告 Imaging report</title><link rel="icon" href="data:,">
<link rel="stylesheet" href="/patient/static/patient.css"></head>
<body><main class="landing"><h1>影像报告 Imaging report</h1>{body}</main></body></html>
"""


@router.get("/r/{ref}")
async def report_landing(ref: str, services: ServicesDep) -> Response:
    """Who scanned the report's QR code: a doctor (to the viewer) or the patient."""
    try:
        uid = await run_in_threadpool(services.report_refs.resolve, ref)
    except ArchiveError:
        uid = None
    if uid is None:
        body = '<p class="message error">这个二维码无效。<br>This QR code is not valid here.</p>'
        return Response(
            _LANDING.format(body=body),
            404,
            headers=PAGE_HEADERS,
            media_type="text/html; charset=utf-8",
        )
    doctor = "/viewer/?study=" + html.escape(uid, quote=True)
    patient = "/patient/?study=" + html.escape(ref, quote=True)
    body = (
        f'<a class="button primary" id="doctor" href="{doctor}">我是医生 I am a doctor</a>'
        f'<a class="button" id="patient" href="{patient}">我是患者 I am the patient</a>'
        '<p class="hint">医生需登录 · 患者需身份验证<br>'
        "Doctors sign in; patients confirm their identity.</p>"
    )
    return Response(
        _LANDING.format(body=body), headers=PAGE_HEADERS, media_type="text/html; charset=utf-8"
    )
