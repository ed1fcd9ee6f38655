"""Web pages for surgical video (issue 8): the search page ``/videos/`` (filters, results,
studies, plotly charts) and the multi-view wall ``/videos/wall`` (up to 64 muted looping
tiles), with their static files under ``/videos/static/``.

The pages are plain HTML/CSS/ES modules in ``viewer_api/static/videos/`` (no build step, no
CDN); they sign in and keep the token like the viewer (they import ``/viewer/static/api.js``)
and call the JSON APIs of `viewer_api.video_catalogue_api`. plotly.js comes from the
dashboard's route (``/dashboard/vendor/plotly.min.js``, served from the installed ``plotly``
package), so the pages carry the dashboard's CSP, which admits plotly's own styles by hash;
they add ``media-src 'self'`` for the ``<video>`` tiles, whose sources are same-origin
media-token URLs.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from fastapi import APIRouter, Request, Response
from fastapi.responses import RedirectResponse

from viewer_api.dashboard_api import VENDOR
from viewer_api.problems import HTTPProblem
from viewer_api.web import PAGE_HEADERS, STATIC_DIR, load_static

router = APIRouter()
pages = APIRouter(tags=["video pages"], include_in_schema=False)

PAGES = load_static(STATIC_DIR.parent / "videos")


def page_csp() -> str:
    """The dashboard's CSP (plotly's styles admitted by hash) with same-origin media."""
    return VENDOR.page_csp().replace("connect-src 'self';", "connect-src 'self'; media-src 'self';")


def _page(name: str) -> Response:
    page = PAGES.get(name)
    if page is None:
        raise HTTPProblem(404, "Not found", f"the video pages have no {name!r}")
    body = page.body.replace(b"__PLOTLY_VERSION__", VENDOR.version.encode("ascii", "replace"))
    headers = {**PAGE_HEADERS, "Content-Security-Policy": page_csp()}
    return Response(body, media_type=page.media_type, headers=headers)


@pages.get("/videos/")
def search_page() -> Response:
    """Search surgical videos and their studies, with charts."""
    return _page("index.html")


@pages.get("/videos/wall")
def wall_page() -> Response:
    """Several videos at once (``?videos=<sop>,…`` or the search filters with ``limit``)."""
    return _page("wall.html")


def static_pages(router: APIRouter, prefix: str, files: Mapping[str, Any]) -> None:
    """Add to ``router`` what every page folder needs besides its pages: ``{prefix}``
    redirecting to ``{prefix}/`` (query kept) and ``{prefix}/static/{name}`` serving the
    folder's other files (``files``, from `load_static`) with their ETag (304 on a match).
    ``.html`` files are not served there: pages have their own routes and headers."""

    def redirect(request: Request) -> RedirectResponse:
        query = request.url.query
        return RedirectResponse(f"{prefix}/" + (f"?{query}" if query else ""), status_code=308)

    def static(name: str, request: Request) -> Response:
        found = files.get(name)
        if found is None or name.endswith(".html"):
            raise HTTPProblem(404, "Not found", f"there is no file {name!r} in {prefix}/static/")
        headers = {
            "ETag": found.etag,
            "Cache-Control": "no-cache",
            "X-Content-Type-Options": "nosniff",
        }
        if request.headers.get("if-none-match") == found.etag:
            return Response(status_code=304, headers=headers)
        return Response(found.body, media_type=found.media_type, headers=headers)

    router.add_api_route(prefix, redirect, methods=["GET"])
    router.add_api_route(f"{prefix}/static/{{name}}", static, methods=["GET"])


static_pages(pages, "/videos", PAGES)
